//! The built image as the tests use it: found under RAPBOX_IMAGE_DIR, copied once per
//! test run into a test base whose root account gets a test password (offline, with
//! debugfs on the copy: the shipped image keeps root locked), and a copy-on-write
//! overlay per test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{run, workspace, HarnessError};

/// The root password of the test copy only.
pub const TEST_PASSWORD: &str = "rapbox-test";

/// Outputs of `rapimage build`.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    pub cmdline_a: String,
}

/// The built image, or the reason it is not there (the test then skips).
pub fn built() -> Result<Built, String> {
    let dir =
        std::env::var_os("RAPBOX_IMAGE_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("build/image"));
    let disk = dir.join("rapbox.img");
    let vmlinux = dir.join("boot/vmlinux");
    let initrd = dir.join("boot/initrd.img");
    for p in [&disk, &vmlinux, &initrd, &dir.join("boot/cmdline-a"), &dir.join("manifest.json")] {
        if !p.is_file() {
            return Err(format!("{} not found: build the image first (scripts/build-image.sh)", p.display()));
        }
    }
    let cmdline_a = std::fs::read_to_string(dir.join("boot/cmdline-a")).map_err(|e| e.to_string())?.trim().to_string();
    Ok(Built { dir, disk, vmlinux, initrd, cmdline_a })
}

/// Prints the reason and returns None when the image has not been built.
pub fn built_or_skip(test: &str) -> Option<Built> {
    match built() {
        Ok(b) => Some(b),
        Err(why) => {
            println!("SKIP {test}: {why}");
            None
        }
    }
}

fn partition(manifest: &Path, name: &str) -> Result<(u64, u64), HarnessError> {
    let text =
        std::fs::read_to_string(manifest).map_err(|source| HarnessError::Io { path: manifest.into(), source })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| HarnessError::Setup(format!("{}: {e}", manifest.display())))?;
    v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| Some((p["start_mib"].as_u64()?, p["size_mib"].as_u64()?)))
        .ok_or_else(|| HarnessError::Setup(format!("{}: no partition `{name}`", manifest.display())))
}

fn make_test_base(b: &Built, base: &Path) -> Result<(), HarnessError> {
    let work = base.with_extension("d");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| HarnessError::Io { path: work.clone(), source })?;
    let tmp = base.with_extension("tmp");
    run("cp", &["--sparse=always", &b.disk.to_string_lossy(), &tmp.to_string_lossy()])?;
    let (start, size) = partition(&b.dir.join("manifest.json"), "root-a")?;
    let part = work.join("root.part");
    let (img, p) = (tmp.to_string_lossy().into_owned(), part.to_string_lossy().into_owned());
    run(
        "dd",
        &[
            &format!("if={img}"),
            &format!("of={p}"),
            "bs=1M",
            &format!("skip={start}"),
            &format!("count={size}"),
            "conv=sparse",
            "status=none",
        ],
    )?;
    let shadow = run("debugfs", &["-R", "cat /etc/shadow", &p])?;
    let hash = run("openssl", &["passwd", "-6", "-salt", "rapboxtest", TEST_PASSWORD])?;
    let mut patched = String::new();
    for line in shadow.lines() {
        match line.split_once(':') {
            Some(("root", rest)) => {
                let rest = rest.split_once(':').map(|x| x.1).unwrap_or("");
                patched.push_str(&format!("root:{}:{rest}\n", hash.trim()));
            }
            _ => {
                patched.push_str(line);
                patched.push('\n');
            }
        }
    }
    let sf = work.join("shadow");
    std::fs::write(&sf, patched).map_err(|source| HarnessError::Io { path: sf.clone(), source })?;
    let cmds = work.join("cmds");
    let script = format!("rm /etc/shadow\nwrite {} /etc/shadow\nsif /etc/shadow mode 0100640\nsif /etc/shadow uid 0\nsif /etc/shadow gid 42\n", sf.display());
    std::fs::write(&cmds, script).map_err(|source| HarnessError::Io { path: cmds.clone(), source })?;
    run("debugfs", &["-w", "-f", &cmds.to_string_lossy(), &p])?;
    run(
        "dd",
        &[&format!("if={p}"), &format!("of={img}"), "bs=1M", &format!("seek={start}"), "conv=notrunc", "status=none"],
    )?;
    std::fs::rename(&tmp, base).map_err(|source| HarnessError::Io { path: base.into(), source })?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The test base (made once per process) next to the test logs.
pub fn test_base(b: &Built) -> Result<PathBuf, HarnessError> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = workspace().join("target/qemu-tests");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let base = dir.join("test-base.img");
        let _ = std::fs::remove_file(&base);
        make_test_base(b, &base).map_err(|e| e.to_string())?;
        Ok(base)
    })
    .clone()
    .map_err(HarnessError::Setup)
}

/// A fresh copy-on-write overlay of the test base for one test.
pub fn overlay(b: &Built, test: &str) -> Result<PathBuf, HarnessError> {
    let base = test_base(b)?;
    overlay_of(&base, test)
}

/// A raw copy of the test base that a test may change (e.g. provision) before booting
/// an overlay of it.
pub fn private_copy(b: &Built, test: &str) -> Result<PathBuf, HarnessError> {
    let base = test_base(b)?;
    let path = workspace().join(format!("target/qemu-tests/{test}.img"));
    run("cp", &["--sparse=always", &base.to_string_lossy(), &path.to_string_lossy()])?;
    Ok(path)
}

/// A fresh copy-on-write overlay of `base` (raw) for one test.
pub fn overlay_of(base: &Path, test: &str) -> Result<PathBuf, HarnessError> {
    let path = workspace().join(format!("target/qemu-tests/{test}.qcow2"));
    let _ = std::fs::remove_file(&path);
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &base.to_string_lossy(), &path.to_string_lossy()],
    )?;
    Ok(path)
}

/// One instrument port of the box as provisioned: the guest interface it is cabled to,
/// the box's address on it, the instrument's address and the agent port.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub serial: String,
    pub interface: String,
    pub box_address: String,
    pub address: String,
    pub agent_port: u16,
}

/// The agent port every simulated instrument uses.
pub const AGENT_PORT: u16 = 7300;

/// The two instrument ports of the harness: the guest NICs behind its tap devices inst0 and
/// inst1 (virtio-net on q35 slots 4 and 5, after the uplink on slot 3), serials
/// `<prefix>-0001` and `<prefix>-0002`.
pub fn harness_ports(prefix: &str) -> Vec<PortSpec> {
    (1..=2)
        .map(|i| PortSpec {
            serial: format!("{prefix}-{i:04}"),
            interface: format!("enp0s{}", i + 3),
            box_address: format!("10.10.{i}.1/24"),
            address: format!("10.10.{i}.2"),
            agent_port: AGENT_PORT,
        })
        .collect()
}

impl PortSpec {
    /// Where the instrument's agent connects: the box address on this port and the agent port.
    pub fn agent_addr(&self) -> std::net::SocketAddr {
        let ip = self.box_address.split('/').next().unwrap_or("").parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        std::net::SocketAddr::new(std::net::IpAddr::V4(ip), self.agent_port)
    }
}

/// The image's rapd.toml template (`/usr/share/rapbox/rapd.toml.in`) with `[[instrument]]`
/// sections for `ports` appended, written to `out`: `rapimage provision` renders it into
/// the box's `/data/config/rapd.toml`.
pub fn template_with_ports(out: &Path, ports: &[PortSpec]) -> Result<PathBuf, HarnessError> {
    let src = workspace().join("buildroot-overlay/rootfs/usr/share/rapbox/rapd.toml.in");
    let mut t = std::fs::read_to_string(&src).map_err(|source| HarnessError::Io { path: src.clone(), source })?;
    for p in ports {
        t.push_str(&format!(
            "\n[[instrument]]\nserial = {:?}\nmodel = \"rapsim\"\ninterface = {:?}\nbox_address = {:?}\naddress = {:?}\nagent_port = {}\n",
            p.serial, p.interface, p.box_address, p.address, p.agent_port
        ));
    }
    std::fs::write(out, t).map_err(|source| HarnessError::Io { path: out.into(), source })?;
    Ok(out.to_path_buf())
}
