//! The probe datagram: small, fixed, versioned, checked before anything reads it.
//!
//! Two sites share one QUIC connection, and every datagram either sends is a probe *and* the
//! echo of the peer's probes that arrived since the sender last sent:
//!
//! ```text
//!  0      1       2            6                   12          16
//!  +------+-------+------------+-------------------+-----------+-----------------------+
//!  | 0xA2 | flags | seq (u32)  | send time µs (u48)| site tag  | echoes: 7 bytes each  |
//!  +------+-------+------------+-------------------+-----------+-----------------------+
//!  echo:  | peer seq (u32) | hold µs (u24) |
//! ```
//! All integers big-endian. The first byte is the format: `0xA` (Axon) in the high nibble,
//! the version in the low one. `seq` counts the sender's datagrams on this connection from 0;
//! the send time is the sender's own monotonic clock (µs); the site tag is a 32-bit hash of
//! the sender's site id, checked against the site its certificate proved. An echo names one of
//! the peer's datagrams and how long it was held before this one left, so the peer measures
//! `RTT = arrival − its send time − hold` on its own clock alone: no clock sync, and no packet
//! spent on a reply of its own. A datagram with [`ASK`] asks for an answer at once (it is what
//! fast liveness times); the answer is a datagram like any other, echoing the ask. A backlog
//! of three or more echoes is echoed again by the sender's next datagram, so that one lost
//! datagram does not cost the peer a run of probes. A datagram with [`STALLED`] says its
//! sender's host stalled while the datagrams it echoes waited to be read or held: the peer
//! counts those replies but leaves their round trips out of what it measures.
//!
//! 16 bytes with no echo, 23 with one; at most [`MAX_ECHOES`] echoes.

use crate::error::ProberError;

/// The first byte: format `0xA_`, version 2.
const FORMAT: u8 = 0xA2;
/// The format version this prober speaks.
pub const VERSION: u8 = FORMAT & 0x0F;
const HEADER: usize = 16;
const ECHO: usize = 7;
/// The most echoes one datagram carries; older pending echoes are dropped first.
pub const MAX_ECHOES: usize = 16;
/// The largest probe on the wire.
pub const MAX_PROBE: usize = HEADER + MAX_ECHOES * ECHO;
/// Flag: answer this datagram at once.
pub const ASK: u8 = 0x01;
/// Flag: this datagram answers an ask.
pub const ANSWER: u8 = 0x02;
/// Flag: the sender's host stalled while it held the datagrams it echoes here (or just
/// before it read them), so their round trips measured the sender's host, not the path. A
/// prober that does not know the flag ignores it.
pub const STALLED: u8 = 0x04;
const KNOWN_FLAGS: u8 = ASK | ANSWER | STALLED;
/// The largest hold an echo can carry (about 16.8 s); longer holds saturate.
pub const MAX_HOLD_US: u32 = (1 << 24) - 1;
const MAX_SEND_US: u64 = (1 << 48) - 1;

/// The 32-bit tag of a site id on the wire (FNV-1a): enough to pick the sender among the
/// names its certificate proves, 60 bytes shorter than the id itself.
pub fn site_tag(site: &str) -> u32 {
    site.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One of the peer's datagrams, echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// The echoed datagram's sequence number (the peer's).
    pub seq: u32,
    /// How long the echoing side held it before sending this datagram, µs.
    pub hold_us: u32,
}

/// A decoded probe datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// [`ASK`] and [`ANSWER`] bits.
    pub flags: u8,
    /// The sender's sequence number on this connection, from 0.
    pub seq: u32,
    /// The sender's monotonic send time, µs (48 bits on the wire).
    pub sent_us: u64,
    /// The sender's [`site_tag`].
    pub site: u32,
    /// Echoes of the receiver's datagrams, oldest first.
    pub echoes: Vec<Echo>,
}

impl Datagram {
    /// Whether the sender asks for an answer at once.
    pub fn asks(&self) -> bool {
        self.flags & ASK != 0
    }

    /// Appends the wire form to `out`. Echoes beyond [`MAX_ECHOES`] are not written (the
    /// newest are kept); holds saturate at [`MAX_HOLD_US`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.push(self.flags & KNOWN_FLAGS);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(self.sent_us & MAX_SEND_US).to_be_bytes()[2..]);
        out.extend_from_slice(&self.site.to_be_bytes());
        let skip = self.echoes.len().saturating_sub(MAX_ECHOES);
        for e in &self.echoes[skip..] {
            out.extend_from_slice(&e.seq.to_be_bytes());
            out.extend_from_slice(&e.hold_us.min(MAX_HOLD_US).to_be_bytes()[1..]);
        }
    }

    /// Parses and checks a datagram; never panics, whatever the bytes.
    pub fn decode(b: &[u8]) -> Result<Datagram, ProberError> {
        if b.len() > MAX_PROBE {
            return Err(ProberError::Oversized(b.len()));
        }
        match b.first() {
            None => return Err(ProberError::Truncated(0)),
            Some(&f) if f & 0xF0 != FORMAT & 0xF0 => return Err(ProberError::Foreign),
            Some(&f) if f != FORMAT => return Err(ProberError::Version(f & 0x0F)),
            Some(_) => {}
        }
        if b.len() < HEADER {
            return Err(ProberError::Truncated(b.len()));
        }
        if !(b.len() - HEADER).is_multiple_of(ECHO) {
            return Err(ProberError::Trailing);
        }
        if b[1] & !KNOWN_FLAGS != 0 {
            return Err(ProberError::Flags(b[1]));
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let sent_us = b[6..12].iter().fold(0u64, |v, &x| (v << 8) | u64::from(x));
        let echoes = b[HEADER..]
            .chunks_exact(ECHO)
            .map(|c| Echo {
                seq: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                hold_us: u32::from_be_bytes([0, c[4], c[5], c[6]]),
            })
            .collect();
        Ok(Datagram {
            flags: b[1],
            seq: u32_at(2),
            sent_us,
            site: u32_at(12),
            echoes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(echoes: usize) -> Datagram {
        Datagram {
            flags: ASK,
            seq: 42,
            sent_us: 123_456_789,
            site: site_tag("aws-use1"),
            echoes: (0..echoes as u32)
                .map(|i| Echo {
                    seq: 7 + i,
                    hold_us: 1_000 * i,
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_stays_small() {
        for n in [0, 1, 3, MAX_ECHOES] {
            let mut b = Vec::new();
            datagram(n).encode(&mut b);
            assert_eq!(b.len(), 16 + 7 * n);
            assert_eq!(Datagram::decode(&b).unwrap(), datagram(n));
        }
        let mut b = Vec::new();
        datagram(1).encode(&mut b);
        assert_eq!(b.len(), 23, "a probe carrying one echo is 23 bytes");
    }

    #[test]
    fn too_many_echoes_keep_the_newest_and_holds_saturate() {
        let mut d = datagram(MAX_ECHOES + 3);
        d.echoes.last_mut().unwrap().hold_us = u32::MAX;
        let mut b = Vec::new();
        d.encode(&mut b);
        let back = Datagram::decode(&b).unwrap();
        assert_eq!(back.echoes.len(), MAX_ECHOES);
        assert_eq!(back.echoes[0].seq, d.echoes[3].seq);
        assert_eq!(back.echoes.last().unwrap().hold_us, MAX_HOLD_US);
    }

    #[test]
    fn site_tags_tell_ids_apart() {
        let ids = ["aws-use1", "aws-use2", "gcp-euw3", "a", "b", "metal-sin1"];
        let mut tags: Vec<u32> = ids.iter().map(|s| site_tag(s)).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ids.len());
    }

    #[test]
    fn malformed_datagrams_are_refused_with_a_reason() {
        let mut b = Vec::new();
        datagram(1).encode(&mut b);
        assert_eq!(Datagram::decode(&b[..10]), Err(ProberError::Truncated(10)));
        assert_eq!(Datagram::decode(&[]), Err(ProberError::Truncated(0)));
        assert_eq!(Datagram::decode(&b[..b.len() - 1]), Err(ProberError::Trailing));
        assert_eq!(Datagram::decode(&[0xA2; 400]), Err(ProberError::Oversized(400)));
        assert_eq!(
            Datagram::decode(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProberError::Foreign)
        );
        let mut v = b.clone();
        v[0] = 0xA1;
        assert_eq!(Datagram::decode(&v), Err(ProberError::Version(1)));
        let mut f = b.clone();
        f[1] = 0x80;
        assert_eq!(Datagram::decode(&f), Err(ProberError::Flags(0x80)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap exhaustive-ish sweep: every length, bytes from a fixed generator.
        let mut x = 1u64;
        for len in 0..=MAX_PROBE + 8 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (x >> 56) as u8
                    })
                    .collect();
                let _ = Datagram::decode(&bytes);
                let mut framed = vec![FORMAT, ASK];
                framed.extend_from_slice(&bytes);
                let _ = Datagram::decode(&framed);
            }
        }
    }
}
