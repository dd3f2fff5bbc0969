//! A loopback TCP echo server (a thread, not a process): the far end for proxy tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// Echoes every byte back on every connection; stops accepting on drop.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    done: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let done = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (d, a) = (Arc::clone(&done), Arc::clone(&accepted));
        thread::Builder::new().name(format!("echo-{addr}")).spawn(move || {
            for conn in listener.incoming() {
                if d.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        })?;
        Ok(EchoServer { addr, done, accepted })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
