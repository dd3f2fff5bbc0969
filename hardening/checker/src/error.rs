//! Errors of the checker itself (bad input, unreadable tree), as opposed to failed
//! controls, which are results in the report.

use std::path::PathBuf;

/// Why a check run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a root file system (no etc/ directory)")]
    NotARoot { path: PathBuf },
    #[error("{path}: waiver for control `{id}`: {problem}")]
    Waiver { path: PathBuf, id: String, problem: String },
    #[error("{path}: {problem}")]
    Policy { path: PathBuf, problem: String },
    #[error("{path}: line {line}: {problem}")]
    PolicyLine { path: PathBuf, line: usize, problem: String },
    #[error("report: {0}")]
    Json(#[from] serde_json::Error),
}

/// Maps an io::Error to [`Error::Io`] with the path it concerns.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
