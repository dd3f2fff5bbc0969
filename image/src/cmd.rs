//! Running external tools (mmdebstrap, mkfs, sfdisk, ...) with errors that name the
//! command and carry its standard error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A tool that could not be run or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, status: std::process::ExitStatus, stderr: String },
}

/// The command line as text, for messages.
pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if s.len() > 300 {
        s.truncate(300);
        s.push_str(" ...");
    }
    s
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}

/// Runs `c`, capturing its output; fails unless it exits 0.
pub fn output(c: &mut Command) -> Result<Output, CmdError> {
    let cmd = describe(c);
    let out = c.stdin(Stdio::null()).output().map_err(|source| CmdError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        let mut stderr = tail(&out.stderr);
        if stderr.trim().is_empty() {
            stderr = tail(&out.stdout);
        }
        return Err(CmdError::Failed { cmd, status: out.status, stderr });
    }
    Ok(out)
}

/// Runs `c` and returns its standard output as text.
pub fn stdout(c: &mut Command) -> Result<String, CmdError> {
    output(c).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `c` with its output sent to `log` (appended), failing with the log's tail.
pub fn logged(c: &mut Command, log: &Path) -> Result<(), CmdError> {
    let cmd = describe(c);
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(log);
    let (out, err) = match (open(), open()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(source), _) | (_, Err(source)) => return Err(CmdError::Spawn { cmd, source }),
    };
    let status = c
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|source| CmdError::Spawn { cmd: cmd.clone(), source })?;
    if !status.success() {
        let text = std::fs::read(log).unwrap_or_default();
        return Err(CmdError::Failed { cmd, status, stderr: format!("(log {})\n{}", log.display(), tail(&text)) });
    }
    Ok(())
}

/// `Command::new(program)` with the arguments given.
pub fn new<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// An absolute version of `p` (relative to the current directory).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
