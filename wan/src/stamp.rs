//! Kernel receive timestamps: when a datagram reached the socket, not when a task woke up to
//! read it.
//!
//! A receive task on a busy runtime wakes tens to hundreds of microseconds after its packet
//! arrived, and under a burst the last packet waits for all the others. Timing a packet from
//! that wake-up would add the task's lateness to the emulated delay. With `SO_TIMESTAMPNS` the
//! kernel stamps each datagram on arrival; the pipe schedules from that stamp, so the wake-up
//! is absorbed by the delay instead of added to it. The same stamp lets a measurement see when
//! a packet arrived at its destination socket, independent of its own reader's wake-up.
//!
//! The kernel stamps with the wall clock; [`recv_stamped`] converts to the monotonic
//! [`Instant`] by the age of the stamp at read time, and falls back to the read time when the
//! stamp is missing or implausible (a wall-clock step).

use std::io;
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A stamp older than this at read time is not believed: the wall clock has stepped.
const MAX_AGE: Duration = Duration::from_secs(1);

/// Asks the kernel to stamp every datagram this socket receives.
pub fn enable(socket: &UdpSocket) -> io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Receives one datagram: its length, its sender and the instant it reached the socket
/// (the kernel's stamp when [`enable`]d, else the read time).
pub async fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    socket
        .async_io(Interest::READABLE, || {
            let fd = socket.as_raw_fd();
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .map_err(io::Error::from)?;
            let read_at = Instant::now();
            let mut at = read_at;
            // Control messages only fail to parse on a truncated buffer; the read time stands.
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        at = monotonic(ts, read_at, SystemTime::now());
                    }
                }
            }
            let from = msg
                .address
                .as_ref()
                .and_then(to_std)
                .ok_or_else(|| io::Error::other("datagram without an IP sender"))?;
            Ok((msg.bytes, from, at))
        })
        .await
}

/// The instant a wall-clock stamp `ts` stands for, given that `wall` and `now` were read
/// together; `now` itself when the stamp is implausible.
fn monotonic(ts: TimeSpec, now: Instant, wall: SystemTime) -> Instant {
    let (Ok(sec), Ok(nsec)) = (u64::try_from(ts.tv_sec()), u32::try_from(ts.tv_nsec())) else {
        return now;
    };
    let stamp = UNIX_EPOCH + Duration::new(sec, nsec);
    match wall.duration_since(stamp) {
        Ok(age) if age <= MAX_AGE => now.checked_sub(age).unwrap_or(now),
        // In the future by a hair (clocks read in another order) is "now"; by more, a step.
        _ => now,
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(d: Duration) -> TimeSpec {
        TimeSpec::from_duration(d)
    }

    #[test]
    fn a_stamp_is_moved_back_by_its_age() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = monotonic(
            ts(Duration::from_secs(1_000_000) - Duration::from_micros(250)),
            now,
            wall,
        );
        assert_eq!(now - at, Duration::from_micros(250));
    }

    #[test]
    fn implausible_stamps_fall_back_to_the_read_time() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // From the future (a step forward of the stamp), and far in the past (a step back).
        assert_eq!(monotonic(ts(Duration::from_secs(1_000_001)), now, wall), now);
        assert_eq!(monotonic(ts(Duration::from_secs(999_990)), now, wall), now);
    }

    #[tokio::test]
    async fn a_datagram_is_stamped_at_arrival_not_at_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        enable(&rx).expect("SO_TIMESTAMPNS");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        // The kernel turns arrival stamping on from a work queue shortly after the first
        // socket asks; until then it stamps at read time. Give it a few datagrams.
        let mut held = Vec::new();
        for _ in 0..10 {
            let sent = Instant::now();
            tx.send_to(b"hello", rx.local_addr().expect("addr"))
                .await
                .expect("send");
            // Let the datagram sit in the socket: the stamp must keep its arrival.
            std::thread::sleep(Duration::from_millis(20));
            let mut buf = [0u8; 16];
            let (n, from, at) = recv_stamped(&rx, &mut buf).await.expect("recv");
            let read = Instant::now();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert!(
                at + Duration::from_millis(1) >= sent,
                "stamped before it was sent"
            );
            held.push(read - at);
            if read - at >= Duration::from_millis(19) {
                return;
            }
        }
        panic!("never stamped at arrival: held {held:?}");
    }
}
