//! The uplink bridge: QEMU's guest-forward command runs inside the test's network
//! namespace, so it connects to a Unix socket that this bridge (in the host's
//! namespace) forwards to a loopback TCP port, e.g. the local data center.

use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::HarnessError;

/// Accepts on a Unix socket until dropped; each connection is piped to 127.0.0.1:port.
#[derive(Debug)]
pub struct UnixToTcp {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl UnixToTcp {
    pub fn start(path: &Path, port: u16) -> Result<UnixToTcp, HarnessError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| HarnessError::Io { path: path.into(), source })?;
        listener.set_nonblocking(true).map_err(|source| HarnessError::Io { path: path.into(), source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((unix, _)) => {
                        let _ = unix.set_nonblocking(false);
                        let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                        let (Ok(mut u2), Ok(mut t2)) = (unix.try_clone(), tcp.try_clone()) else { continue };
                        let (mut u1, mut t1) = (unix, tcp);
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut u1, &mut t1);
                            let _ = t1.shutdown(std::net::Shutdown::Write);
                        });
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut t2, &mut u2);
                            let _ = u2.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        Ok(UnixToTcp { path: path.to_path_buf(), stop })
    }
}

impl Drop for UnixToTcp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}
