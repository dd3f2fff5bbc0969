//! Loopback addresses and ports that no other test is using.
//!
//! The box talks to port 443 by default, so each test that runs a data center binds
//! its own address `127.a.b.c:443`. [`unique_ip`] hands out addresses that are unique
//! within the process (a counter) and, with high probability, across processes (the
//! second octet comes from the process id); an address whose port 443 is already
//! taken is skipped. 127.0.x.x is never used (127.0.0.1, 127.0.0.53, 127.0.1.1 belong
//! to the system).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why no address or port could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("binding {addr} to find a free port: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback address left in this process's block")]
    Exhausted,
}

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Addresses per process block: third octet 0..=255, fourth 1..=254.
const PER_BLOCK: u32 = 256 * 254;

fn block() -> u8 {
    // 1..=254: never 0 (127.0.x.x) nor 255.
    1 + (std::process::id() % 254) as u8
}

/// Whether `port` can still be bound on `ip` (a permission error counts as free: a
/// non-root process cannot probe port 443, and will fail later with a clearer error).
fn port_free(ip: Ipv4Addr, port: u16) -> bool {
    match TcpListener::bind((ip, port)) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::AddrInUse,
    }
}

/// A loopback address `127.<block>.x.y` not handed out before in this process, whose
/// port 443 is free.
pub fn unique_ip() -> Result<Ipv4Addr, PortError> {
    next_ip(&NEXT)
}

fn next_ip(counter: &AtomicU32) -> Result<Ipv4Addr, PortError> {
    loop {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        if n >= PER_BLOCK {
            return Err(PortError::Exhausted);
        }
        let ip = Ipv4Addr::new(127, block(), (n / 254) as u8, (n % 254 + 1) as u8);
        if port_free(ip, 443) {
            return Ok(ip);
        }
    }
}

/// `unique_ip():443`, the address a test's data center listens on.
pub fn unique_443() -> Result<SocketAddr, PortError> {
    Ok(SocketAddr::new(IpAddr::V4(unique_ip()?), 443))
}

/// A TCP port that is free on `ip` right now (the kernel's choice).
pub fn free_port(ip: IpAddr) -> Result<u16, PortError> {
    let addr = SocketAddr::new(ip, 0);
    let l = TcpListener::bind(addr).map_err(|source| PortError::Bind { addr, source })?;
    l.local_addr().map(|a| a.port()).map_err(|source| PortError::Bind { addr, source })
}

/// `ip:<free port>`.
pub fn free_addr(ip: IpAddr) -> Result<SocketAddr, PortError> {
    Ok(SocketAddr::new(ip, free_port(ip)?))
}

/// A free port on a fresh unique loopback address.
pub fn unique_addr() -> Result<SocketAddr, PortError> {
    free_addr(IpAddr::V4(unique_ip()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn addresses_are_unique_bindable_loopback() {
        let ips: Vec<Ipv4Addr> = (0..300).map(|_| unique_ip().unwrap()).collect();
        assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 300);
        for ip in &ips {
            let o = ip.octets();
            assert!(ip.is_loopback() && o[1] != 0 && o[3] != 0 && o[3] != 255, "{ip}");
        }
        // Each can hold its own listener on the same port.
        let port = free_port(IpAddr::V4(ips[0])).unwrap();
        let _a = TcpListener::bind((ips[0], port)).unwrap();
        let _b = TcpListener::bind((ips[1], port)).unwrap();
        let addr = unique_addr().unwrap();
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn a_taken_443_is_skipped() {
        // A private counter far from the one the other tests use.
        let counter = AtomicU32::new(PER_BLOCK - 1000);
        let first = next_ip(&counter).unwrap();
        let Ok(_held) = TcpListener::bind((first, 443)) else {
            return;
        }; // not root: nothing to check
        counter.store(PER_BLOCK - 1000, Ordering::Relaxed);
        let next = next_ip(&counter).unwrap();
        assert_ne!(next, first);
        assert_eq!(counter.load(Ordering::Relaxed), PER_BLOCK - 1000 + 2);
    }
}
