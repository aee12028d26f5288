//! The probe datagram: small, fixed, versioned, checked before anything reads it.
//!
//! ```text
//!  0      2    3    4          8                  16                 24   25
//!  +------+----+----+----------+------------------+------------------+----+-----------+
//!  | "AX" | v1 |kind| session  | sequence (u64)   | send time ns(u64)|len | site id   |
//!  +------+----+----+----------+------------------+------------------+----+-----------+
//! ```
//! All integers big-endian. `session` is the sender's random number for this connection: a
//! reply carrying another session is a leftover of an older connection and is dropped, so a
//! restarted peer cannot confuse the sequence space. The send time is the sender's own
//! monotonic clock; the reflector copies it back untouched, so RTT needs no clock sync. At most
//! 25 + 64 = 89 bytes.

use topology::SiteId;

use crate::error::ProberError;

const MAGIC: [u8; 2] = *b"AX";
/// The format version this prober speaks.
pub const VERSION: u8 = 1;
const HEADER: usize = 25;
/// The largest probe on the wire.
pub const MAX_PROBE: usize = HEADER + 64;

/// Probe or reflected reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by the measuring side.
    Probe = 1,
    /// Reflected back by the peer.
    Reply = 2,
}

/// A decoded probe datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Probe or reply.
    pub kind: Kind,
    /// The sender's session number for this connection.
    pub session: u32,
    /// Per-session sequence number, from 0.
    pub seq: u64,
    /// The original sender's monotonic send time, ns.
    pub sent_ns: u64,
    /// The site that sent the original probe.
    pub site: SiteId,
}

impl Probe {
    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let site = self.site.as_str().as_bytes();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_ns.to_be_bytes());
        // Site ids are at most 64 bytes by construction.
        out.push(site.len() as u8);
        out.extend_from_slice(site);
    }

    /// The reply a reflector sends back for this probe.
    pub fn reflect(&self) -> Probe {
        Probe {
            kind: Kind::Reply,
            ..self.clone()
        }
    }

    /// Parses and checks a datagram; never panics, whatever the bytes.
    pub fn decode(b: &[u8]) -> Result<Probe, ProberError> {
        if b.len() > MAX_PROBE {
            return Err(ProberError::Oversized(b.len()));
        }
        if b.len() >= 2 && b[..2] != MAGIC {
            return Err(ProberError::Foreign);
        }
        if b.len() < HEADER {
            return Err(ProberError::Truncated(b.len()));
        }
        if b[2] != VERSION {
            return Err(ProberError::Version(b[2]));
        }
        let kind = match b[3] {
            1 => Kind::Probe,
            2 => Kind::Reply,
            k => return Err(ProberError::Kind(k)),
        };
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes, length checked"));
        let session = u32::from_be_bytes(b[4..8].try_into().expect("4 bytes, length checked"));
        let len = usize::from(b[24]);
        let site = b
            .get(HEADER..HEADER + len)
            .ok_or(ProberError::Truncated(b.len()))?;
        if b.len() > HEADER + len {
            return Err(ProberError::Trailing);
        }
        let site = std::str::from_utf8(site)
            .ok()
            .and_then(|s| SiteId::new(s).ok())
            .ok_or(ProberError::Site)?;
        Ok(Probe {
            kind,
            session,
            seq: u64_at(8),
            sent_ns: u64_at(16),
            site,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            kind: Kind::Probe,
            session: 7,
            seq: 42,
            sent_ns: 123_456_789,
            site: SiteId::new("aws-use1").unwrap(),
        }
    }

    #[test]
    fn round_trips_and_stays_small() {
        let mut b = Vec::new();
        probe().encode(&mut b);
        assert!(b.len() < 100, "{} bytes", b.len());
        assert_eq!(Probe::decode(&b).unwrap(), probe());
        let mut r = Vec::new();
        probe().reflect().encode(&mut r);
        assert_eq!(Probe::decode(&r).unwrap().kind, Kind::Reply);
    }

    #[test]
    fn malformed_datagrams_are_refused_with_a_reason() {
        let mut b = Vec::new();
        probe().encode(&mut b);
        assert_eq!(Probe::decode(&b[..10]), Err(ProberError::Truncated(10)));
        assert_eq!(
            Probe::decode(&b[..b.len() - 1]),
            Err(ProberError::Truncated(b.len() - 1))
        );
        assert_eq!(Probe::decode(&[0u8; 200]), Err(ProberError::Oversized(200)));
        assert_eq!(
            Probe::decode(b"GET / HTTP/1.1\r\n\r\n0123456789"),
            Err(ProberError::Foreign)
        );
        let mut v = b.clone();
        v[2] = 9;
        assert_eq!(Probe::decode(&v), Err(ProberError::Version(9)));
        let mut k = b.clone();
        k[3] = 0;
        assert_eq!(Probe::decode(&k), Err(ProberError::Kind(0)));
        let mut s = b.clone();
        s[HEADER] = b' ';
        assert_eq!(Probe::decode(&s), Err(ProberError::Site));
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Probe::decode(&t), Err(ProberError::Trailing));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap exhaustive-ish sweep: every length, bytes from a fixed generator.
        let mut x = 1u64;
        for len in 0..=120 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (x >> 56) as u8
                    })
                    .collect();
                let _ = Probe::decode(&bytes);
                let mut framed = b"AX\x01\x01".to_vec();
                framed.extend_from_slice(&bytes);
                let _ = Probe::decode(&framed);
            }
        }
    }
}
