//! Checks made before calling the library, so that the commonest mistakes
//! (a typo in a path, steps run out of order) get an error that names the
//! command to run next instead of a bare I/O error, and bounded reads of
//! files from outside.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use molt_release::keys::KeyDir;
use molt_release::repo::Repo;

/// Opens the key directory at `path`.
pub(crate) fn open_key_dir(path: &Path) -> anyhow::Result<KeyDir> {
    let shown = path.display();
    if !path.exists() {
        bail!("key directory {shown} does not exist; create it with `molt keys init {shown}`");
    }
    if !path.is_dir() {
        bail!("{shown} is not a directory; pass the key directory that `molt keys init` created");
    }
    if !path.join("keys.json").is_file() {
        bail!("{shown} is not a molt key directory (it has no keys.json); create one with `molt keys init <NEW-DIR>`");
    }
    KeyDir::open(path).with_context(|| {
        format!(
            "could not open key directory {shown}; it must be private to its owner \
             (`chmod -R go-rwx {shown}`) and hold the files `molt keys init` wrote"
        )
    })
}

/// Opens the repository workspace at `dir`, which must already exist:
/// only `molt release create` may create one, so that a typo in `--repo`
/// never starts a second, empty repository.
pub(crate) async fn open_existing_repo(dir: &Path, keys: &KeyDir) -> anyhow::Result<Repo> {
    let shown = dir.display();
    if !dir.is_dir() {
        bail!(
            "repository workspace {shown} does not exist; start it with a first release: \
             `molt release create --repo {shown} --keys <KEYS> --version 1 ...`"
        );
    }
    open_repo(dir, keys).await
}

/// Opens the workspace at `dir`, creating it if it does not exist.
pub(crate) async fn open_repo(dir: &Path, keys: &KeyDir) -> anyhow::Result<Repo> {
    let shown = dir.display();
    Repo::open_or_create(dir, keys).await.with_context(|| {
        format!(
            "could not open repository workspace {shown}; check that it was created with the key directory {} \
             (its root keys sign the repository)",
            keys.path().display()
        )
    })
}

/// Reads a file from outside, refusing one larger than `bytes_max` (named
/// `limit_name` in the error).
pub(crate) fn read_bounded(path: &Path, bytes_max: u64, limit_name: &str) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("could not open {shown}"))?;
    let mut bytes = Vec::new();
    file.take(bytes_max.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("could not read {shown}"))?;
    if bytes.len() as u64 > bytes_max {
        bail!("{shown} is larger than {limit_name} ({bytes_max} bytes)");
    }
    Ok(bytes)
}
