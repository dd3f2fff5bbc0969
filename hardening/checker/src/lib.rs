//! raphard: checks rapbox's hardening controls (shared/hardening-controls.md).
//!
//! `raphard check` evaluates a root file system tree without booting it (accounts,
//! modes, packages, sshd, sysctl, PAM, audit, logging and FIPS configuration);
//! `raphard check-live` evaluates the run-time side inside the running box. Both write
//! a JSON and an HTML report with one entry per control. The reviewed data the checks
//! compare against lives in hardening/ beside this crate.

pub mod catalogue;
pub mod checks;
pub mod dpkg;
pub mod error;
pub mod live;
pub mod netfilter;
pub mod policy;
pub mod report;
pub mod root;
pub mod sysctl;
pub mod sysfiles;

use std::path::Path;

pub use checks::Inputs;
pub use error::Error;
pub use live::LiveOptions;
pub use policy::{Policy, Waivers};
pub use report::{Report, Status, Verdict};

use catalogue::{Kind, CONTROLS};

/// Offline check of the tree at `root`.
pub fn check_offline(root: &Path, policy: &Policy, inputs: &Inputs, waivers: &Waivers) -> Result<Report, Error> {
    if !root.join("etc").is_dir() {
        return Err(Error::NotARoot { path: root.into() });
    }
    let ctx = checks::Ctx::new(root::Root::new(root), policy, inputs);
    Ok(Report::new("offline", root, checks::run(&ctx), waivers))
}

/// Live check of the running system. With `with_offline`, the offline checks also run
/// on `/` and a control checked both ways passes only if both sides pass.
pub fn check_live(policy: &Policy, opts: &LiveOptions, waivers: &Waivers, with_offline: bool) -> Report {
    let live = live::run(policy, opts);
    let offline = with_offline.then(|| {
        let inputs = Inputs::default();
        let ctx = checks::Ctx::new(root::Root::new("/"), policy, &inputs);
        checks::run(&ctx)
    });
    let mut verdicts = Vec::new();
    for c in CONTROLS {
        let l = live.iter().find(|(id, _)| *id == c.id).map(|(_, v)| v.clone());
        let o = offline.as_ref().and_then(|o| o.iter().find(|(id, _)| *id == c.id)).map(|(_, v)| v.clone());
        let v = match (c.kind, l, o) {
            (Kind::Offline, _, Some(o)) => o,
            (Kind::Offline, _, None) => {
                Verdict::not_evaluated("offline control: `raphard check` on the image decides it")
            }
            (_, Some(l), Some(o)) if o.status != Status::Runtime => Verdict::all(vec![o, l]),
            (_, Some(l), _) => l,
            (_, None, _) => Verdict::not_evaluated("no live check"),
        };
        verdicts.push((c.id, v));
    }
    Report::new("live", Path::new("/"), verdicts, waivers)
}
