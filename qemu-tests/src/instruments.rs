//! Simulated instruments (rapsim's library) inside the VM's network namespace: each
//! runs on its own thread that first joins the namespace (setns affects only the
//! calling thread, and threads it starts inherit it), so it reaches the guest's
//! instrument ports over the tap devices.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rapsim::{Instrument, Stats, Summary};

use crate::HarnessError;

/// One simulated instrument running in a namespace.
pub struct SimRun {
    pub serial: String,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Summary, String>>,
}

impl std::fmt::Debug for SimRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRun").field("serial", &self.serial).finish()
    }
}

/// Joins the network namespace `ns` (created with `ip netns add`) on this thread.
pub fn enter_netns(ns: &str) -> Result<(), HarnessError> {
    let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
    let f = std::fs::File::open(&path).map_err(|source| HarnessError::Io { path: path.clone(), source })?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| HarnessError::Setup(format!("setns {}: {e}", path.display())))
}

impl SimRun {
    /// Starts `inst` in the namespace `ns`.
    pub fn spawn(ns: &str, inst: Instrument) -> SimRun {
        let serial = inst.serial.clone();
        let stats = inst.stats();
        let stop = inst.stop_flag();
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            enter_netns(&ns).map_err(|e| e.to_string())?;
            inst.run().map_err(|e| e.to_string())
        });
        SimRun { serial, stats, stop, handle }
    }

    /// Asks it to stop generating (outstanding messages still get their drain time).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the run's end.
    pub fn join(self) -> Result<Summary, String> {
        self.handle.join().unwrap_or_else(|_| Err("instrument thread panicked".into()))
    }
}

/// Starts a simulated instrument's file agent in the network namespace `ns` (its threads
/// are started from a thread that joined the namespace, so they inherit it).
pub fn spawn_file_agent(ns: &str, agent: rapsim::FileAgent) -> Result<rapsim::RunningFileAgent, String> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).map_err(|e| e.to_string())?;
        agent.spawn().map_err(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("file agent thread panicked".into()))
}
