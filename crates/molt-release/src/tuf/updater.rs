//! The client workflow over a metadata store and a repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::digest::{Digests, Mismatch};
use crate::download::{self, Expected, FetchError, Source};
use crate::tuf::schema::{Keyring, MetaFile, Metadata, Role, RoleKeys, Root, Snapshot, Targets, Timestamp};
use crate::tuf::store::{self, Store};
use crate::tuf::{TufError, TufLimits};

/// How the store makes writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync each file and the directory as it is written: the store is
    /// the trusted state itself (`molt tuf-client`).
    EachWrite,
    /// Leave durability to the caller, which syncs the whole directory
    /// before trusting it (the device's scratch copy, promoted by one
    /// rename).
    Caller,
}

/// What happened to the timestamp in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimestampUpdate {
    /// A newer timestamp verified and is trusted now.
    New {
        /// Its version.
        version: u64,
    },
    /// The repository serves the trusted timestamp.
    Unchanged {
        /// Its version.
        version: u64,
    },
    /// The repository serves a timestamp of the trusted version with other
    /// content. It was discarded, not stored, and the trusted one kept
    /// (5.4.3.1). A repository does not do this; a holder of the timestamp
    /// key can.
    SameVersionDiscarded {
        /// The version.
        version: u64,
    },
}

/// What an update left trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refresh {
    /// The trusted root's version.
    pub root_version: u64,
    /// Root versions this update walked through.
    pub roots_updated: u64,
    /// The timestamp.
    pub timestamp: TimestampUpdate,
    /// The trusted snapshot's version.
    pub snapshot_version: u64,
    /// The trusted top-level targets' version.
    pub targets_version: u64,
}

/// A target as the delegation search found it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TargetInfo {
    /// The target path.
    pub path: String,
    /// Its length.
    pub length: u64,
    /// Its hashes as listed: algorithm name to hex digest.
    pub hashes: BTreeMap<String, String>,
    /// Its `custom` object, if any.
    pub custom: Option<Value>,
    /// The targets role that listed it.
    pub role: String,
}

impl TargetInfo {
    /// What the target's bytes must be: its length and every listed digest
    /// molt supports (at least one).
    pub fn expected(&self) -> Result<Expected, TufError> {
        let digests = Digests::from_listed(&self.hashes).map_err(|source| TufError::Digest {
            what: format!("target {}", self.path),
            source,
        })?;
        Ok(Expected {
            length: self.length,
            digests,
        })
    }
}

/// The path under `targets/` to fetch a target from: with consistent
/// snapshots the digest (sha256 if listed) prefixes the file name,
/// `DIR/HASH.FILE` (7.1).
pub fn target_file_path(path: &str, expected: &Expected, consistent_snapshot: bool) -> String {
    if consistent_snapshot {
        crate::repo::consistent_target_path(path, &hex::encode(&expected.digests.preferred().bytes))
    } else {
        path.to_owned()
    }
}

/// Checks root metadata that is to become a trust anchor: it parses and is
/// signed by a threshold of its own root keys (5.2). Returns its version.
pub fn verify_trusted_root(bytes: &[u8]) -> Result<u64, TufError> {
    let root = trusted_root(bytes)?;
    Ok(root.version())
}

fn trusted_root(bytes: &[u8]) -> Result<Metadata<Root>, TufError> {
    let bad = |error: TufError| TufError::BadTrustedRoot {
        reason: error.to_string(),
    };
    let root = Metadata::<Root>::parse("root", bytes).map_err(bad)?;
    root.verify("root", &root.signed.keys, root.signed.role("root"))
        .map_err(bad)?;
    Ok(root)
}

/// The TUF client workflow on one metadata store.
#[derive(Debug)]
pub struct Updater {
    store: Store,
    source: Source,
    limits: TufLimits,
    /// The fixed update start time (5.1).
    now: jiff::Timestamp,
    root: Metadata<Root>,
    timestamp: Option<(Metadata<Timestamp>, Vec<u8>)>,
    snapshot: Option<Metadata<Snapshot>>,
    /// Targets roles whose bytes matched the snapshot's listing, not
    /// expired, each verified against at least one delegation.
    roles: BTreeMap<String, Metadata<Targets>>,
    /// (role, delegator) pairs whose delegation the role's signatures meet.
    verified: BTreeSet<(String, String)>,
    refreshed: bool,
}

const ROOT: &str = "root";
const TIMESTAMP: &str = "timestamp";
const SNAPSHOT: &str = "snapshot";
const TARGETS: &str = "targets";

impl Updater {
    /// Opens the store in `dir`, whose `root.json` is the trust anchor, to
    /// update from `source` (its `metadata/` and `targets/`). The fixed
    /// update start time is now.
    pub fn open(dir: &Path, source: Source, limits: TufLimits, durability: Durability) -> Result<Updater, TufError> {
        Updater::open_at(dir, source, limits, durability, jiff::Timestamp::now())
    }

    /// [`Updater::open`] with the fixed update start time `now`.
    pub fn open_at(
        dir: &Path,
        source: Source,
        limits: TufLimits,
        durability: Durability,
        now: jiff::Timestamp,
    ) -> Result<Updater, TufError> {
        let store = Store::new(dir, durability == Durability::EachWrite);
        let bytes = store
            .read(ROOT, limits.root_bytes_max)?
            .ok_or_else(|| TufError::NoTrustedRoot { path: dir.to_owned() })?;
        let root = trusted_root(&bytes)?;
        Ok(Updater {
            store,
            source,
            limits,
            now,
            root,
            timestamp: None,
            snapshot: None,
            roles: BTreeMap::new(),
            verified: BTreeSet::new(),
            refreshed: false,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Whether the trusted root asks for consistent snapshots.
    pub fn consistent_snapshot(&self) -> bool {
        self.root.signed.consistent_snapshot
    }

    /// The trusted root's version.
    pub fn root_version(&self) -> u64 {
        self.root.version()
    }

    /// Updates root, timestamp, snapshot and top-level targets (5.3–5.6.6),
    /// storing each as it verifies.
    pub async fn refresh(&mut self) -> Result<Refresh, TufError> {
        self.refreshed = false;
        self.timestamp = None;
        self.snapshot = None;
        self.roles.clear();
        self.verified.clear();
        let (roots_updated, capped) = self.update_root().await?;
        let result = self.update_rest(roots_updated).await;
        match result {
            Err(source) if capped => Err(TufError::TooManyRootUpdates {
                limit: self.limits.root_updates_max,
                source: Box::new(source),
            }),
            other => other,
        }
    }

    async fn update_rest(&mut self, roots_updated: u64) -> Result<Refresh, TufError> {
        // 5.3.10: the final root must not have expired.
        if self.root.expired(self.now) {
            return Err(self.root.expired_error(ROOT));
        }
        let timestamp = self.update_timestamp().await?;
        self.update_snapshot().await?;
        self.load_role(TARGETS, ROOT).await?;
        self.refreshed = true;
        Ok(Refresh {
            root_version: self.root.version(),
            roots_updated,
            timestamp,
            snapshot_version: self.snapshot.as_ref().map_or(0, Metadata::version),
            targets_version: self.roles.get(TARGETS).map_or(0, Metadata::version),
        })
    }

    async fn fetch(&self, role: &str, file: &str, max: u64, limit: &'static str) -> Result<Vec<u8>, TufError> {
        download::fetch_metadata(&self.source, file, max, &self.limits.download)
            .await
            .map_err(|error| match error {
                FetchError::NotFound { location } => TufError::MissingMetadata { url: location },
                FetchError::TooLarge { location, max } => TufError::LimitExceeded {
                    what: location,
                    limit,
                    max,
                },
                source => TufError::Fetch {
                    what: format!("{role} metadata"),
                    source: Box::new(source),
                },
            })
    }

    /// 5.3: walks root versions; returns how many and whether it stopped at
    /// `root_updates_max`.
    async fn update_root(&mut self) -> Result<(u64, bool), TufError> {
        let mut updated = 0;
        loop {
            if updated == self.limits.root_updates_max {
                return Ok((updated, true));
            }
            let trusted = self.root.version();
            let next = trusted.saturating_add(1);
            let file = format!("{next}.root.json");
            let bytes = match self
                .fetch(ROOT, &file, self.limits.root_bytes_max, "root_bytes_max")
                .await
            {
                Ok(bytes) => bytes,
                Err(TufError::MissingMetadata { .. }) => return Ok((updated, false)),
                Err(error) => return Err(error),
            };
            let new = Metadata::<Root>::parse(ROOT, &bytes)?;
            // 5.3.4: a threshold of the trusted root's root keys and of its
            // own.
            new.verify(ROOT, &self.root.signed.keys, self.root.signed.role(ROOT))?;
            new.verify(ROOT, &new.signed.keys, new.signed.role(ROOT))?;
            // 5.3.5: exactly N+1.
            let offered = new.version();
            if offered <= trusted {
                return Err(TufError::Rollback {
                    role: ROOT.to_owned(),
                    trusted,
                    offered,
                });
            }
            if offered != next {
                return Err(TufError::NonConsecutiveRoot { trusted, offered });
            }
            // 5.3.11: rotated timestamp or snapshot keys drop the trusted
            // timestamp and snapshot, removed before the root that rotated
            // them is stored, so a crash between the two cannot leave them.
            let rotated = |role: &str| {
                let keyids = |root: &Root| root.role(role).keyids.iter().cloned().collect::<BTreeSet<_>>();
                keyids(&self.root.signed) != keyids(&new.signed)
            };
            if rotated(TIMESTAMP) || rotated(SNAPSHOT) {
                self.store.remove(TIMESTAMP)?;
                self.store.remove(SNAPSHOT)?;
            }
            // 5.3.7, 5.3.8.
            self.store.write(ROOT, &bytes)?;
            self.root = new;
            updated += 1;
        }
    }

    /// A stored role file that parses and that a threshold of `keys`
    /// signed; anything else is not trusted and is ignored.
    fn stored<T: Role>(
        &self,
        role: &str,
        max: u64,
        keys: &Keyring,
        role_keys: &RoleKeys,
    ) -> Option<(Metadata<T>, Vec<u8>)> {
        let bytes = self.store.read(role, max).ok()??;
        let metadata = Metadata::<T>::parse(role, &bytes).ok()?;
        metadata.verify(role, keys, role_keys).ok()?;
        Some((metadata, bytes))
    }

    /// 5.4.
    async fn update_timestamp(&mut self) -> Result<TimestampUpdate, TufError> {
        let root = &self.root.signed;
        let trusted: Option<(Metadata<Timestamp>, Vec<u8>)> = self.stored(
            TIMESTAMP,
            self.limits.timestamp_bytes_max,
            &root.keys,
            root.role(TIMESTAMP),
        );
        let bytes = self
            .fetch(
                TIMESTAMP,
                "timestamp.json",
                self.limits.timestamp_bytes_max,
                "timestamp_bytes_max",
            )
            .await?;
        let new = Metadata::<Timestamp>::parse(TIMESTAMP, &bytes)?;
        new.verify(TIMESTAMP, &root.keys, root.role(TIMESTAMP))?;
        if let Some((trusted, trusted_bytes)) = trusted {
            let trusted_version = trusted.version();
            let offered = new.version();
            if offered < trusted_version {
                return Err(TufError::Rollback {
                    role: TIMESTAMP.to_owned(),
                    trusted: trusted_version,
                    offered,
                });
            }
            if offered == trusted_version {
                // 5.4.3.1: discard the new one, keep the trusted one.
                let update = if bytes == trusted_bytes {
                    TimestampUpdate::Unchanged { version: offered }
                } else {
                    TimestampUpdate::SameVersionDiscarded { version: offered }
                };
                self.timestamp = Some((trusted, trusted_bytes));
                return Ok(update);
            }
            // 5.4.3.2.
            let (trusted_snapshot, offered_snapshot) = (trusted.signed.snapshot.version, new.signed.snapshot.version);
            if offered_snapshot < trusted_snapshot {
                return Err(TufError::Rollback {
                    role: SNAPSHOT.to_owned(),
                    trusted: trusted_snapshot,
                    offered: offered_snapshot,
                });
            }
        }
        // 5.4.4.
        if new.expired(self.now) {
            return Err(new.expired_error(TIMESTAMP));
        }
        // 5.4.5.
        self.store.write(TIMESTAMP, &bytes)?;
        let version = new.version();
        self.timestamp = Some((new, bytes));
        Ok(TimestampUpdate::New { version })
    }

    /// 5.5.
    async fn update_snapshot(&mut self) -> Result<(), TufError> {
        let Some((timestamp, _)) = &self.timestamp else {
            return Err(TufError::NotRefreshed);
        };
        // The trusted timestamp may be the stored one kept by 5.4.3.1: it
        // too must not have expired.
        if timestamp.expired(self.now) {
            return Err(timestamp.expired_error(TIMESTAMP));
        }
        let listed = timestamp.signed.snapshot.clone();
        let root = &self.root.signed;
        let trusted: Option<Metadata<Snapshot>> = self
            .stored(
                SNAPSHOT,
                self.limits.snapshot_bytes_max,
                &root.keys,
                root.role(SNAPSHOT),
            )
            .map(|(metadata, _)| metadata);
        if let Some(trusted) = &trusted
            && trusted.version() == listed.version
            && !trusted.expired(self.now)
        {
            self.snapshot = Some(trusted.clone());
            return Ok(());
        }
        let file = if self.consistent_snapshot() {
            format!("{}.snapshot.json", listed.version)
        } else {
            "snapshot.json".to_owned()
        };
        let (max, limit) = match listed.length {
            Some(length) => (length, "length listed in timestamp.json"),
            None => (self.limits.snapshot_bytes_max, "snapshot_bytes_max"),
        };
        let bytes = self.fetch(SNAPSHOT, &file, max, limit).await?;
        // 5.5.2.
        check_listed(SNAPSHOT, "timestamp", &listed, &bytes)?;
        let new = Metadata::<Snapshot>::parse(SNAPSHOT, &bytes)?;
        // 5.5.3.
        new.verify(SNAPSHOT, &root.keys, root.role(SNAPSHOT))?;
        // 5.5.4.
        if new.version() != listed.version {
            return Err(TufError::VersionMismatch {
                role: SNAPSHOT.to_owned(),
                fetched: new.version(),
                expected: listed.version,
                parent: "timestamp".to_owned(),
            });
        }
        // 5.5.5.
        if let Some(trusted) = &trusted {
            for (name, was) in &trusted.signed.meta {
                let role = name.strip_suffix(".json").unwrap_or(name).to_owned();
                let Some(now) = new.signed.meta.get(name) else {
                    return Err(TufError::RoleRemoved { role });
                };
                if now.version < was.version {
                    return Err(TufError::Rollback {
                        role,
                        trusted: was.version,
                        offered: now.version,
                    });
                }
            }
        }
        // 5.5.6.
        if new.expired(self.now) {
            return Err(new.expired_error(SNAPSHOT));
        }
        // 5.5.7.
        self.store.write(SNAPSHOT, &bytes)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// The keys that `parent`'s delegation gives `role`.
    fn delegation(&self, role: &str, parent: &str) -> Result<(Keyring, RoleKeys), TufError> {
        if parent == ROOT {
            return Ok((self.root.signed.keys.clone(), self.root.signed.role(TARGETS).clone()));
        }
        let delegations = self
            .roles
            .get(parent)
            .and_then(|parent| parent.signed.delegations.as_ref())
            .ok_or(TufError::NotRefreshed)?;
        let delegated = delegations
            .roles
            .iter()
            .find(|delegated| delegated.name == role)
            .ok_or(TufError::NotRefreshed)?;
        Ok((delegations.keys.clone(), delegated.keys.clone()))
    }

    /// Makes `role` trusted as `parent` delegates it (5.6.1–5.6.6): from
    /// what this update already loaded, else from the store if it is the
    /// version the snapshot lists, else from the repository.
    async fn load_role(&mut self, role: &str, parent: &str) -> Result<(), TufError> {
        let pair = (role.to_owned(), parent.to_owned());
        if self.verified.contains(&pair) {
            return Ok(());
        }
        let (keys, role_keys) = self.delegation(role, parent)?;
        if let Some(loaded) = self.roles.get(role) {
            loaded.verify(role, &keys, &role_keys)?;
            self.verified.insert(pair);
            return Ok(());
        }
        let snapshot = self.snapshot.as_ref().ok_or(TufError::NotRefreshed)?;
        let listed: MetaFile = snapshot
            .signed
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| TufError::NotInSnapshot { role: role.to_owned() })?;
        let stored: Option<(Metadata<Targets>, Vec<u8>)> =
            self.stored(role, self.limits.targets_bytes_max, &keys, &role_keys);
        if let Some((stored, _)) = stored
            && stored.version() == listed.version
            && !stored.expired(self.now)
        {
            self.roles.insert(role.to_owned(), stored);
            self.verified.insert(pair);
            return Ok(());
        }
        let file = if self.consistent_snapshot() {
            format!("{}.{}", listed.version, store::file_name(role))
        } else {
            store::file_name(role)
        };
        let (max, limit) = match listed.length {
            Some(length) => (length, "length listed in snapshot.json"),
            None => (self.limits.targets_bytes_max, "targets_bytes_max"),
        };
        let bytes = self.fetch(role, &file, max, limit).await?;
        // 5.6.2.
        check_listed(role, "snapshot", &listed, &bytes)?;
        let new = Metadata::<Targets>::parse(role, &bytes)?;
        // 5.6.3.
        new.verify(role, &keys, &role_keys)?;
        // 5.6.4.
        if new.version() != listed.version {
            return Err(TufError::VersionMismatch {
                role: role.to_owned(),
                fetched: new.version(),
                expected: listed.version,
                parent: "snapshot".to_owned(),
            });
        }
        // 5.6.5.
        if new.expired(self.now) {
            return Err(new.expired_error(role));
        }
        // 5.6.6.
        self.store.write(role, &bytes)?;
        self.roles.insert(role.to_owned(), new);
        self.verified.insert(pair);
        Ok(())
    }

    /// The target paths the top-level targets role lists.
    pub fn top_level_targets(&self) -> Result<impl Iterator<Item = &str>, TufError> {
        let targets = self
            .roles
            .get(TARGETS)
            .filter(|_| self.refreshed)
            .ok_or(TufError::NotRefreshed)?;
        Ok(targets.signed.targets.keys().map(String::as_str))
    }

    /// Finds `target` by the pre-order depth-first delegation search
    /// (5.6.7), fetching delegated roles only as the search reaches them.
    /// `Ok(None)`: no role trusted for the path lists it.
    pub async fn find_target(&mut self, target: &str) -> Result<Option<TargetInfo>, TufError> {
        if !self.refreshed {
            return Err(TufError::NotRefreshed);
        }
        let mut pending: Vec<(String, String)> = vec![(TARGETS.to_owned(), ROOT.to_owned())];
        let mut visited: BTreeSet<String> = BTreeSet::new();
        while let Some((role, parent)) = pending.pop() {
            // 5.6.7.1: skip a role visited before (cycles), stop at the
            // limit.
            if visited.contains(&role) {
                continue;
            }
            if visited.len() as u64 >= self.limits.delegated_roles_max {
                return Err(TufError::DelegatedRolesExceeded {
                    target: target.to_owned(),
                    limit: self.limits.delegated_roles_max,
                });
            }
            self.load_role(&role, &parent).await?;
            visited.insert(role.clone());
            let metadata = &self.roles[&role];
            if let Some(file) = metadata.signed.targets.get(target) {
                return Ok(Some(TargetInfo {
                    path: target.to_owned(),
                    length: file.length,
                    hashes: file.hashes.clone(),
                    custom: file.custom.clone(),
                    role,
                }));
            }
            // 5.6.7.2: the delegations that cover the path, in order; a
            // terminating one ends the search after its subtree.
            if let Some(delegations) = &metadata.signed.delegations {
                let mut children = Vec::new();
                for delegated in &delegations.roles {
                    if !delegated.trusts(target) {
                        continue;
                    }
                    children.push((delegated.name.clone(), role.clone()));
                    if delegated.terminating {
                        pending.clear();
                        break;
                    }
                }
                pending.extend(children.into_iter().rev());
            }
        }
        Ok(None)
    }
}

/// Checks `bytes` against the length and hashes `parent` lists for `role`.
fn check_listed(role: &str, parent: &str, listed: &MetaFile, bytes: &[u8]) -> Result<(), TufError> {
    if let Some(length) = listed.length
        && bytes.len() as u64 != length
    {
        return Err(TufError::LengthMismatch {
            role: role.to_owned(),
            listed: length,
            actual: bytes.len() as u64,
            parent: parent.to_owned(),
        });
    }
    if let Some(hashes) = &listed.hashes {
        let digests = Digests::from_listed(hashes).map_err(|source| TufError::Digest {
            what: format!("{parent} entry for {role}"),
            source,
        })?;
        digests
            .check(bytes)
            .map_err(|Mismatch { algorithm, .. }| TufError::HashMismatch {
                role: role.to_owned(),
                algorithm: algorithm.name(),
                parent: parent.to_owned(),
            })?;
    }
    Ok(())
}
