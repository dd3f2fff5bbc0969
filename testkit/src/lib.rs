//! rapbox-testkit: shared infrastructure for rapbox's integration tests, demo and
//! benchmark.
//!
//! * [`pki`]: a throw-away ECDSA P-256 test PKI, including the negative set (wrong
//!   CA, expired, not yet valid, wrong host, unknown client CA).
//! * [`peers`]: real tinyproxy, dante and `openssl s_server` processes, configured in
//!   the test's directory, ready when returned, killed on drop.
//! * [`ports`]: unique loopback addresses (each test its own `127.x.y.z:443`) and
//!   free ports.
//! * [`TestDir`] / [`test_dir!`]: `target/test-runs/<test>/`, kept when a test fails.
//! * [`echo`]: a loopback echo server, the far end of proxy tests.
//! * [`netns`]: network namespaces, TCP/UDP services in them, and probes that tell an
//!   answer, a refusal and silence apart (the firewall tests, host and QEMU).

mod dir;
pub mod echo;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod ports;

pub use dir::{test_runs_root, TestDir, TestDirError};
