//! The TCP rendezvous that carries rank 0's bytes (the NCCL unique id) to every other rank
//! before any collective exists: rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every other rank
//! connects (retrying until rank 0 is up), says its rank, and receives the bytes.
//!
//! Wire format: the rank as 4 bytes little-endian, then the bytes as an 8-byte little-endian
//! length and the payload.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Rank 0: serves `payload` to ranks `1..world` on `port` (all interfaces); fails naming the ranks
/// that did not connect within `timeout`.
pub fn serve(port: u16, world: usize, payload: &[u8], timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("rank 0: cannot listen on port {port} for the rendezvous"))?;
    serve_on(listener, world, payload, timeout)
}

/// [`serve`] on a listener already bound.
pub fn serve_on(
    listener: TcpListener,
    world: usize,
    payload: &[u8],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    let mut waiting: BTreeSet<usize> = (1..world).collect();
    while !waiting.is_empty() {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut rank = [0u8; 4];
                stream
                    .read_exact(&mut rank)
                    .with_context(|| format!("rendezvous: reading the rank of {peer}"))?;
                let rank = u32::from_le_bytes(rank) as usize;
                ensure!(
                    waiting.remove(&rank),
                    "rendezvous: {peer} says it is rank {rank}, which is not an expected rank \
                     (world size {world}, or it connected twice)"
                );
                stream.write_all(&(payload.len() as u64).to_le_bytes())?;
                stream.write_all(payload)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!(
                        "rank 0: rank(s) {:?} of {world} did not join the rendezvous within {timeout:?}",
                        waiting
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rendezvous: accepting a connection"),
        }
    }
    Ok(())
}

/// A connection to rank 0 at `addr:port`, retrying until `deadline` (rank 0 may start later).
pub(super) fn connect(addr: &str, port: u16, rank: usize, deadline: Instant) -> Result<TcpStream> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut last_error = None;
    loop {
        let addrs: Vec<_> = match (addr, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_error = Some(e.to_string());
                Vec::new()
            }
        };
        let connected = addrs.iter().find_map(|a| {
            match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                Ok(s) => Some(s),
                Err(e) => {
                    last_error = Some(e.to_string());
                    None
                }
            }
        });
        if let Some(s) = connected {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "rank {rank}: rank 0's rendezvous at {addr}:{port} did not answer within \
                 {timeout:?} ({})",
                last_error.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rank `rank` > 0: rank 0's bytes from `addr:port`, retrying until `timeout`.
pub fn join(addr: &str, port: u16, rank: usize, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, port, rank, deadline)?;
    stream.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))?;
    stream.write_all(&(rank as u32).to_le_bytes())?;
    let mut len = [0u8; 8];
    stream
        .read_exact(&mut len)
        .with_context(|| format!("rank {rank}: reading from rank 0's rendezvous"))?;
    let len = u64::from_le_bytes(len);
    ensure!(
        len <= 1 << 20,
        "rank {rank}: the rendezvous announced {len} bytes"
    );
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[test]
    fn every_rank_gets_rank_0s_bytes_whenever_it_starts() {
        let (l, port) = listener();
        let id: Vec<u8> = (0..128).collect();
        std::thread::scope(|s| {
            let server = s.spawn(|| serve_on(l, 4, &id, Duration::from_secs(20)));
            let clients: Vec<_> = (1..4)
                .map(|r| {
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(50 * r as u64));
                        join("localhost", port, r, Duration::from_secs(20))
                    })
                })
                .collect();
            for c in clients {
                assert_eq!(c.join().unwrap().unwrap(), id);
            }
            server.join().unwrap().unwrap();
        });
    }

    #[test]
    fn a_missing_rank_is_named_and_an_absent_server_times_out() {
        let (l, port) = listener();
        std::thread::scope(|s| {
            let server = s.spawn(|| serve_on(l, 3, b"id", Duration::from_millis(500)));
            assert_eq!(
                join("127.0.0.1", port, 2, Duration::from_secs(20)).unwrap(),
                b"id"
            );
            let e = server.join().unwrap().unwrap_err().to_string();
            assert!(
                e.contains("rank(s) {1} of 3 did not join the rendezvous"),
                "{e}"
            );
        });
        let (l, port) = listener();
        drop(l);
        let e = join("127.0.0.1", port, 1, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "rank 1: rank 0's rendezvous at 127.0.0.1:{port} did not answer"
            )),
            "{e}"
        );
    }
}
