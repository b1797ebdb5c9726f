//! The client's metadata store: one directory holding each trusted role's
//! metadata under its non-versioned name (`root.json`, `timestamp.json`,
//! `snapshot.json`, `targets.json`, `<role>.json`), exactly the bytes that
//! verified.
//!
//! A delegated role's file name (and the name it is fetched under) is its
//! name percent-encoded as python-tuf does (`urllib.parse.quote(name,
//! safe="")`): every byte outside `A-Za-z0-9_.~-` becomes `%XX`, so no
//! role name can leave the directory or the URL path segment.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::tuf::TufError;

/// A role's metadata file name in a store and on a repository.
pub(crate) fn file_name(role: &str) -> String {
    format!("{}.json", encode_role(role))
}

/// `role` with every byte outside `A-Za-z0-9_.~-` percent-encoded.
pub(crate) fn encode_role(role: &str) -> String {
    let mut encoded = String::with_capacity(role.len());
    for byte in role.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'~' | b'-') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A directory of trusted metadata.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    /// fsync every write and the directory after it; off where the caller
    /// makes the whole directory durable itself (the device's scratch copy,
    /// promoted with one rename).
    durable: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TufError + '_ {
    move |source| TufError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    pub(crate) fn new(dir: &Path, durable: bool) -> Store {
        Store {
            dir: dir.to_owned(),
            durable,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, role: &str) -> PathBuf {
        self.dir.join(file_name(role))
    }

    /// The stored bytes of `role`, if any and not longer than `max` bytes
    /// (a longer file is not metadata this client wrote and is ignored).
    pub(crate) fn read(&self, role: &str, max: u64) -> Result<Option<Vec<u8>>, TufError> {
        let path = self.path(role);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        Ok((bytes.len() as u64 <= max).then_some(bytes))
    }

    /// Replaces `role`'s file with `bytes` through a temporary file and a
    /// rename, so a reader never sees half a file.
    pub(crate) fn write(&self, role: &str, bytes: &[u8]) -> Result<(), TufError> {
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let path = self.path(role);
        let tmp = self.dir.join(format!(".{}.tmp", file_name(role)));
        let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(bytes).map_err(io_error(&tmp))?;
        if self.durable {
            file.sync_all().map_err(io_error(&tmp))?;
        }
        drop(file);
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        self.sync_dir()
    }

    /// Removes `role`'s file, if any.
    pub(crate) fn remove(&self, role: &str) -> Result<(), TufError> {
        let path = self.path(role);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    fn sync_dir(&self) -> Result<(), TufError> {
        if !self.durable {
            return Ok(());
        }
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn role_names_stay_one_path_segment() {
        for (role, expect) in [
            ("targets", "targets.json"),
            ("team-a.v2_x~", "team-a.v2_x~.json"),
            ("?", "%3F.json"),
            ("#", "%23.json"),
            ("/delegatedrole", "%2Fdelegatedrole.json"),
            ("../delegatedrole", "..%2Fdelegatedrole.json"),
            ("a b", "a%20b.json"),
            ("ä", "%C3%A4.json"),
        ] {
            assert_eq!(file_name(role), expect, "role {role:?}");
        }
    }
}
