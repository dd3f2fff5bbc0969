//! Starting QEMU: TCG by default (KVM only after a probe boot works), direct kernel
//! boot of the uncompressed vmlinux or OVMF + systemd-boot from the disk, inside the
//! test's network namespace, serial console on stdio. One VM at a time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::console::Console;
use crate::image::Built;
use crate::netns::Netns;
use crate::{log_dir, HarnessError};

/// How the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// -kernel vmlinux -initrd -append (slot A command line).
    Direct,
    /// OVMF firmware + systemd-boot from the ESP.
    Uefi,
}

/// Options of one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub boot: Boot,
    pub disk: PathBuf,
    /// Host loopback port that guest connections to 10.0.2.100:443 reach (None: no forward).
    pub uplink_port: Option<u16>,
    pub memory_mib: u32,
}

/// What a test may add to a VM beyond [`VmConfig`] (see [`Vm::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct VmExtras {
    /// The uplink as the tap device [`UPLINK_TAP`] in the namespace instead of QEMU's
    /// user network (the test gives the other end its addresses, and the data center if
    /// it needs one). The guest NIC gets the MAC [`UPLINK_TAP_MAC`], which the image's
    /// networkd DHCP configuration does not match: rapd addresses it from its configuration.
    pub uplink_tap: bool,
    /// A QMP socket for [`Vm::qmp`] (e.g. `set_link` to pull a NIC's cable).
    pub qmp: bool,
    /// More guest-forwards of the user-network uplink: each `(guest_port, host_port)` makes
    /// 10.0.2.100:guest_port in the guest reach 127.0.0.1:host_port on the host (e.g. the
    /// remote syslog collector on 6514).
    pub forwards: Vec<(u16, u16)>,
}

/// The uplink tap device of [`VmExtras::uplink_tap`].
pub const UPLINK_TAP: &str = "uplink0";
/// The guest MAC of the tap uplink.
pub const UPLINK_TAP_MAC: &str = "52:54:00:00:00:11";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running VM; killed on drop.
pub struct Vm {
    child: Child,
    pub console: Console,
    pub started: Instant,
    _bridge: Option<crate::bridge::UnixToTcp>,
    _forwards: Vec<crate::bridge::UnixToTcp>,
    qmp: Option<PathBuf>,
    _netns: Netns,
    _guard: MutexGuard<'static, ()>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("pid", &self.child.id()).finish()
    }
}

/// "kvm" only when /dev/kvm exists and a probe boot of the image's kernel prints its
/// banner within 10 s under KVM (on these hosts /dev/kvm exists but guests do not
/// run on it); "tcg" otherwise. RAPBOX_QEMU_KVM=0 skips the probe. Probed once per boot
/// of the host: the answer is kept in target/qemu-tests/accel with the host's boot id,
/// so the suite's test binaries do not each wait for it.
fn accel(built: &Built) -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        if std::env::var("RAPBOX_QEMU_KVM").as_deref() == Ok("0") || !std::path::Path::new("/dev/kvm").exists() {
            return "tcg";
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let cache = crate::workspace().join("target/qemu-tests/accel");
        let cached = std::fs::read_to_string(&cache).unwrap_or_default();
        match cached.split_once(' ') {
            Some(("kvm", id)) if !boot_id.is_empty() && id == boot_id => return "kvm",
            Some(("tcg", id)) if !boot_id.is_empty() && id == boot_id => return "tcg",
            _ => {}
        }
        let ok = kvm_probe(built);
        let _ = std::fs::write(&cache, format!("{} {boot_id}", if ok { "kvm" } else { "tcg" }));
        eprintln!("qemu-tests: KVM probe boot {}", if ok { "worked: using KVM" } else { "failed: using TCG" });
        if ok {
            "kvm"
        } else {
            "tcg"
        }
    })
}

fn kvm_probe(built: &Built) -> bool {
    // No root device: the kernel prints its banner, then panics (panic=-1 reboots,
    // -no-reboot exits). Under a working KVM this takes well under a second.
    let out = Command::new("timeout")
        .args(["-k", "2", "10", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none"])
        .args(["-serial", "stdio", "-monitor", "none", "-no-reboot", "-kernel"])
        .arg(&built.vmlinux)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("Linux version"))
}

impl Vm {
    /// Boots `built` as configured; the serial log is target/qemu-logs/<test>.log.
    pub fn start(test: &str, built: &Built, cfg: &VmConfig) -> Result<Vm, HarnessError> {
        Vm::start_with(test, built, cfg, &VmExtras::default())
    }

    /// [`Vm::start`] with `extras`.
    pub fn start_with(test: &str, built: &Built, cfg: &VmConfig, extras: &VmExtras) -> Result<Vm, HarnessError> {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let netns = Netns::create(&test.chars().take(6).collect::<String>(), 2)?;
        let log = log_dir().join(format!("{test}.log"));
        let _ = std::fs::remove_file(&log);
        let accel = accel(built);
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            netns.name.clone(),
            "qemu-system-x86_64".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            if accel == "kvm" { "host".into() } else { "max".into() },
            "-smp".into(),
            "2".into(),
            "-m".into(),
            cfg.memory_mib.to_string(),
            "-M".into(),
            "q35".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2,cache=unsafe", cfg.disk.display()),
        ];
        let mut qmp = None;
        if extras.qmp {
            let sock = crate::workspace().join(format!("target/qemu-tests/{test}-qmp.sock"));
            let _ = std::fs::remove_file(&sock);
            args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
            qmp = Some(sock);
        }
        // NICs without option ROMs (romfile=): no iPXE for the firmware to start.
        let mut netdev = "user,id=uplink,restrict=on,net=10.0.2.0/24".to_string();
        let mut uplink_mac = "52:54:00:00:00:01";
        let mut bridge = None;
        if extras.uplink_tap {
            if cfg.uplink_port.is_some() {
                return Err(HarnessError::Setup("uplink_port needs the user-network uplink, not uplink_tap".into()));
            }
            netns.exec(&["ip", "tuntap", "add", "dev", UPLINK_TAP, "mode", "tap"])?;
            netns.exec(&["ip", "link", "set", UPLINK_TAP, "up"])?;
            netdev = format!("tap,id=uplink,ifname={UPLINK_TAP},script=no,downscript=no");
            uplink_mac = UPLINK_TAP_MAC;
        } else if let Some(port) = cfg.uplink_port {
            // The guest-forward command runs inside the namespace, where the host's
            // loopback is not reachable: it connects to a Unix socket (file system,
            // not network namespace) that the harness bridges to 127.0.0.1:port.
            let sock = crate::workspace().join(format!("target/qemu-tests/{test}-uplink.sock"));
            bridge = Some(crate::bridge::UnixToTcp::start(&sock, port)?);
            netdev.push_str(&format!(",guestfwd=tcp:10.0.2.100:443-cmd:socat - UNIX-CONNECT:{}", sock.display()));
        }
        if extras.uplink_tap && !extras.forwards.is_empty() {
            return Err(HarnessError::Setup("guest-forwards need the user-network uplink, not uplink_tap".into()));
        }
        let mut extra = Vec::new();
        for (guest, host) in &extras.forwards {
            let sock = crate::workspace().join(format!("target/qemu-tests/{test}-fwd{guest}.sock"));
            extra.push(crate::bridge::UnixToTcp::start(&sock, *host)?);
            netdev.push_str(&format!(",guestfwd=tcp:10.0.2.100:{guest}-cmd:socat - UNIX-CONNECT:{}", sock.display()));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=uplink,mac={uplink_mac},romfile="),
        ]);
        for (i, tap) in netns.taps.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!("tap,id=i{i},ifname={tap},script=no,downscript=no"),
                "-device".into(),
                format!("virtio-net-pci,netdev=i{i},mac=52:54:00:00:01:{:02x},romfile=", i + 1),
            ]);
        }
        match cfg.boot {
            Boot::Direct => args.extend([
                "-kernel".into(),
                built.vmlinux.display().to_string(),
                "-initrd".into(),
                built.initrd.display().to_string(),
                "-append".into(),
                built.cmdline_a.clone(),
            ]),
            Boot::Uefi => {
                let vars = crate::workspace().join(format!("target/qemu-tests/{test}-OVMF_VARS.fd"));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .map_err(|source| HarnessError::Io { path: vars.clone(), source })?;
                args.extend([
                    "-drive".into(),
                    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
            }
        }
        let cmdline = format!("ip {}\n", args.join(" "));
        let _ = std::fs::write(log.with_extension("cmd"), &cmdline);
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| HarnessError::Cmd { cmd: cmdline.clone(), stderr: e.to_string() })?;
        let out = child.stdout.take().ok_or_else(|| HarnessError::Setup("no qemu stdout".into()))?;
        let inp = child.stdin.take().ok_or_else(|| HarnessError::Setup("no qemu stdin".into()))?;
        let console = Console::new(out, inp, &log);
        Ok(Vm {
            child,
            console,
            started: Instant::now(),
            _bridge: bridge,
            _forwards: extra,
            qmp,
            _netns: netns,
            _guard: guard,
        })
    }

    /// The network namespace QEMU runs in (its tap devices are the instrument ports).
    pub fn netns(&self) -> &Netns {
        &self._netns
    }

    /// QEMU's process id (`ip netns exec` execs QEMU in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a QMP command (needs [`VmExtras::qmp`]); returns its `return` value.
    pub fn qmp(&self, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value, HarnessError> {
        let sock = self.qmp.as_ref().ok_or_else(|| HarnessError::Setup("the VM was started without QMP".into()))?;
        crate::qmp::execute(sock, command, arguments)
    }

    /// Hard power-off (kill -9 of QEMU).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
