//! The server's errors: a stable code for clients, a message for people.

/// What can go wrong in the server. [`Error::code`] is the stable code the
/// REST API returns; the message never carries internals such as SQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is missing, unreadable or inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// The database failed; details are logged, not returned to clients.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A migration failed.
    #[error("storage migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Files in the data directory.
    #[error("{what}: {source}")]
    Io {
        /// What the server was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation or signing.
    #[error("certificate: {0}")]
    Cert(String),
    /// The broker could not start.
    #[error("broker: {0}")]
    Broker(String),
    /// A request the caller must change.
    #[error("{message}")]
    Refused {
        /// Stable code, e.g. `enrollment_token_expired`.
        code: &'static str,
        /// Human message naming the limit or the next step.
        message: String,
    },
    /// Nothing with that id.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// An I/O error with what the server was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// A refusal with a stable code.
    pub fn refused(code: &'static str, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Storage(_) | Error::Migrate(_) | Error::Io { .. } | Error::Cert(_) | Error::Broker(_) => "internal",
            Error::Refused { code, .. } => code,
            Error::NotFound(_) => "not_found",
        }
    }

    /// The message clients see: internals are replaced by a generic text.
    pub fn public_message(&self) -> String {
        match self {
            Error::Refused { message, .. } | Error::NotFound(message) => message.clone(),
            _ => "internal error; the server log has the details".to_owned(),
        }
    }
}
