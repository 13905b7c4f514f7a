//! One error type for the nouns and formats; every variant names where the problem is.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path the user named does not exist (said as such, before any format is guessed from its name).
    #[error("not found: {}", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record in a file has a bad or missing field (`line` is 1-based; 0 when the format has no lines).
    #[error("{file}:{line}: field `{field}`: {msg}")]
    Field {
        file: String,
        line: usize,
        field: String,
        msg: String,
    },
    /// A whole file is unusable (wrong format, unknown schema version, truncated ...).
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    /// A recipe key is unknown, has the wrong type, or fails validation.
    #[error("recipe {file}: `{key}`: {msg}")]
    Recipe {
        file: String,
        key: String,
        msg: String,
    },
    /// A call to an external model (judge, simulator, verifier, endpoint) failed.
    #[error("{service}: {msg}")]
    External {
        service: String,
        msg: String,
        retryable: bool,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An IO error on `path`; a missing file is [`Error::NotFound`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound { path: path.into() };
        }
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// `Err(NotFound)` unless `path` exists: readers call it before choosing a format by extension, so a typo
    /// in a path is reported as such, not as an unknown extension.
    pub fn must_exist(path: &std::path::Path) -> Result<()> {
        if path.exists() {
            Ok(())
        } else {
            Err(Error::NotFound {
                path: path.to_path_buf(),
            })
        }
    }
    pub fn invalid(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Invalid {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
    pub fn external(service: impl Into<String>, msg: impl Into<String>, retryable: bool) -> Self {
        Error::External {
            service: service.into(),
            msg: msg.into(),
            retryable,
        }
    }
}
