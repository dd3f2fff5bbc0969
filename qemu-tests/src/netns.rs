//! A network namespace per VM so nothing the guest does can reach a real network:
//! instrument ports are tap devices inside it, the uplink is QEMU user networking
//! restricted to one guest-forward.

use crate::{run, HarnessError};

/// A namespace removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub taps: Vec<String>,
}

impl Netns {
    /// Creates `rapq<pid>-<tag>` with loopback up and `taps` tap devices (inst0, inst1, ...).
    pub fn create(tag: &str, taps: usize) -> Result<Netns, HarnessError> {
        let name = format!("rapq{}-{tag}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name, taps: Vec::new() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        let mut ns = ns;
        for i in 0..taps {
            let tap = format!("inst{i}");
            ns.exec(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ns.exec(&["ip", "link", "set", &tap, "up"])?;
            ns.taps.push(tap);
        }
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
