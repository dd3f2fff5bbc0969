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

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running VM; killed on drop.
pub struct Vm {
    child: Child,
    pub console: Console,
    pub started: Instant,
    _bridge: Option<crate::bridge::UnixToTcp>,
    _extra_bridges: Vec<crate::bridge::UnixToTcp>,
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
/// run on it); "tcg" otherwise. RAPBOX_QEMU_KVM=0 skips the probe. Probed once.
fn accel(built: &Built) -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        if std::env::var("RAPBOX_QEMU_KVM").as_deref() == Ok("0") || !std::path::Path::new("/dev/kvm").exists() {
            return "tcg";
        }
        let ok = kvm_probe(built);
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
        .args(["10", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none"])
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
        Vm::start_with_forwards(test, built, cfg, &[])
    }

    /// Like `start`, with further guest-forwards: each `(guest_port, host_port)` makes
    /// 10.0.2.100:guest_port in the guest reach 127.0.0.1:host_port on the host (e.g. a
    /// TLS syslog collector on 6514).
    pub fn start_with_forwards(
        test: &str,
        built: &Built,
        cfg: &VmConfig,
        forwards: &[(u16, u16)],
    ) -> Result<Vm, HarnessError> {
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
        // NICs without option ROMs (romfile=): no iPXE for the firmware to start.
        let mut netdev = "user,id=uplink,restrict=on,net=10.0.2.0/24".to_string();
        let mut bridge = None;
        if let Some(port) = cfg.uplink_port {
            // The guest-forward command runs inside the namespace, where the host's
            // loopback is not reachable: it connects to a Unix socket (file system,
            // not network namespace) that the harness bridges to 127.0.0.1:port.
            let sock = crate::workspace().join(format!("target/qemu-tests/{test}-uplink.sock"));
            bridge = Some(crate::bridge::UnixToTcp::start(&sock, port)?);
            netdev.push_str(&format!(",guestfwd=tcp:10.0.2.100:443-cmd:socat - UNIX-CONNECT:{}", sock.display()));
        }
        let mut extra_bridges = Vec::new();
        for (guest, host) in forwards {
            let sock = crate::workspace().join(format!("target/qemu-tests/{test}-fwd{guest}.sock"));
            extra_bridges.push(crate::bridge::UnixToTcp::start(&sock, *host)?);
            netdev.push_str(&format!(",guestfwd=tcp:10.0.2.100:{guest}-cmd:socat - UNIX-CONNECT:{}", sock.display()));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=uplink,mac=52:54:00:00:00:01,romfile=".into(),
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
            _extra_bridges: extra_bridges,
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
