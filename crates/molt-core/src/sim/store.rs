//! [`SimStore`]: an in-memory [`FileStore`] that models what a Linux file
//! system keeps across power loss, in the spirit of SQLite's crash VFS and
//! ALICE.
//!
//! File data lives in inodes, names in a directory that maps to inodes, and
//! both exist twice: the current view that reads see and the durable view
//! that survives a power cut. Everything between the two is an ordered list
//! of pending operations, which a reboot replays (or not) according to the
//! [`Damage`] of the cut.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::sim::{Damage, Fault};
use crate::storage::{FileStore, StorageError, StorageErrorKind, StorageOp};

/// Files larger than this are refused with [`StorageErrorKind::NoSpace`]:
/// an engine bug that writes at a wild offset should fail the run, not
/// abort the simulator on an enormous allocation.
const MAX_FILE_LEN: usize = 1 << 30;

/// An inode number. Never reused, so a stale reference can't alias a newer
/// file.
type Ino = u64;

/// File contents are shared between the two views and between snapshots
/// until one side writes, so cloning a store copies no file data.
type Content = Arc<Vec<u8>>;

/// A change that reads already see but that is not durable yet.
#[derive(Clone)]
enum Pending {
    /// Data written to an inode; made durable by `sync` of a name linked to
    /// it. Data follows the inode, not the name, as on a real file system.
    Data { ino: Ino, offset: usize, bytes: Arc<[u8]> },
    /// A name created for a new inode.
    Create { name: String, ino: Ino },
    /// A name moved over another.
    Rename { from: String, to: String },
    /// A name unlinked.
    Remove { name: String },
}

/// A simulated directory of flat names with POSIX durability rules and
/// injectable faults.
///
/// Reads see every change at once. `sync` makes a file's data durable but
/// not its name; `sync_dir` makes names durable but not data. A failed
/// `sync` silently drops the file's unsynced data from what will survive
/// (Linux "fsyncgate"), so a retried `sync` reports success for data that is
/// gone. [`reboot`](SimStore::reboot) power-cycles the store: whatever the
/// fault's [`Damage`] lets survive becomes the new state.
///
/// Cloning is cheap in file data (contents are shared copy-on-write), which
/// is what lets the simulator snapshot a store before every run.
#[derive(Clone)]
pub struct SimStore {
    /// Current view: what reads see.
    dir: BTreeMap<String, Ino>,
    inodes: BTreeMap<Ino, Content>,
    /// Durable view: what survives power loss even with
    /// [`Damage::LoseUnsynced`]. An inode missing here has no durable data.
    durable_dir: BTreeMap<String, Ino>,
    durable_inodes: BTreeMap<Ino, Content>,
    /// Oldest first. Replaying all of it onto the durable view gives the
    /// current view, except for data dropped by a failed sync.
    pending: Vec<Pending>,
    next_ino: Ino,
    fault: Fault,
    ops: u64,
    /// `Some` once power has failed; the damage to apply at reboot.
    cut: Option<Damage>,
}

impl SimStore {
    /// An empty, powered-on store with no fault.
    pub fn new() -> SimStore {
        SimStore {
            dir: BTreeMap::new(),
            inodes: BTreeMap::new(),
            durable_dir: BTreeMap::new(),
            durable_inodes: BTreeMap::new(),
            pending: Vec::new(),
            next_ino: 1,
            fault: Fault::None,
            ops: 0,
            cut: None,
        }
    }

    /// Arms `fault` and restarts operation numbering, so that `at` counts
    /// from the next call. A store whose power already failed stays off
    /// until [`reboot`](SimStore::reboot).
    pub fn set_fault(&mut self, fault: Fault) {
        self.fault = fault;
        self.ops = 0;
    }

    /// How many operations have been started since construction, the last
    /// reboot or the last [`set_fault`](SimStore::set_fault), failed ones
    /// included.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Whether power has failed (a [`Fault::Cut`] was reached) and the store
    /// awaits a [`reboot`](SimStore::reboot).
    pub fn is_powered_off(&self) -> bool {
        self.cut.is_some()
    }

    /// Power-cycles the store.
    ///
    /// What survives is the durable view plus the pending operations that
    /// the cut's [`Damage`] keeps; without a cut (say, after
    /// [`Fault::FailFrom`]) that is [`Damage::LoseUnsynced`]. The survivors
    /// become both views, nothing is pending, the fault is cleared to
    /// [`Fault::None`], operation numbering restarts and power is back on.
    pub fn reboot(&mut self) {
        let damage = self.cut.take().unwrap_or(Damage::LoseUnsynced);
        let pending = core::mem::take(&mut self.pending);
        let plan = Plan::new(damage, &pending);

        let mut data_index = 0;
        let mut dir_index = 0;
        for op in &pending {
            match op {
                Pending::Data { ino, offset, bytes } => {
                    let keep = plan.data.get(data_index).copied().unwrap_or(0);
                    data_index += 1;
                    if let Some(prefix) = bytes.get(..keep).filter(|p| !p.is_empty()) {
                        let content = self.durable_inodes.entry(*ino).or_default();
                        apply_write(content, *offset, prefix);
                    }
                }
                Pending::Create { name, ino } => {
                    if dir_index < plan.dir_ops {
                        self.durable_dir.insert(name.clone(), *ino);
                    }
                    dir_index += 1;
                }
                Pending::Rename { from, to } => {
                    if dir_index < plan.dir_ops {
                        // A source that is not durable has nothing to move;
                        // a kept prefix never hits this, but say so rather
                        // than invent a file.
                        if let Some(ino) = self.durable_dir.remove(from) {
                            self.durable_dir.insert(to.clone(), ino);
                        }
                    }
                    dir_index += 1;
                }
                Pending::Remove { name } => {
                    if dir_index < plan.dir_ops {
                        self.durable_dir.remove(name);
                    }
                    dir_index += 1;
                }
            }
        }

        // With nothing pending, an inode no durable name links is
        // unreachable forever.
        let dir = &self.durable_dir;
        let linked: alloc::collections::BTreeSet<Ino> = dir.values().copied().collect();
        self.durable_inodes.retain(|ino, _| linked.contains(ino));

        self.dir = self.durable_dir.clone();
        self.inodes = self.durable_inodes.clone();
        self.fault = Fault::None;
        self.ops = 0;
    }

    /// What `name` would contain after a power cut that loses everything
    /// unsynced, or `None` if the name itself would not survive. A durable
    /// name whose data was never synced is empty.
    pub fn durable_contents(&self, name: &str) -> Option<Vec<u8>> {
        let ino = self.durable_dir.get(name)?;
        Some(
            self.durable_inodes
                .get(ino)
                .map(|content| content.as_ref().clone())
                .unwrap_or_default(),
        )
    }

    /// What reads of `name` return now, or `None` if it does not exist.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let ino = self.dir.get(name)?;
        Some(
            self.inodes
                .get(ino)
                .map(|content| content.as_ref().clone())
                .unwrap_or_default(),
        )
    }

    /// Numbers the operation and decides whether the fault stops it.
    fn begin(&mut self, op: StorageOp) -> Result<(), StorageError> {
        self.ops = self.ops.saturating_add(1);
        let n = self.ops;
        if self.cut.is_some() {
            return Err(StorageError::new(op, StorageErrorKind::PowerLoss));
        }
        match self.fault {
            Fault::None => Ok(()),
            Fault::Cut { at, damage } => {
                if n >= at {
                    self.cut = Some(damage);
                    Err(StorageError::new(op, StorageErrorKind::PowerLoss))
                } else {
                    Ok(())
                }
            }
            Fault::FailOnce { at, kind } => {
                if n == at {
                    Err(StorageError::new(op, kind))
                } else {
                    Ok(())
                }
            }
            Fault::FailFrom {
                at,
                kind,
                mutations_only,
            } => {
                let spared = mutations_only && matches!(op, StorageOp::Read | StorageOp::Stat);
                if n >= at && !spared {
                    Err(StorageError::new(op, kind))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn content(&self, name: &str) -> Option<&[u8]> {
        let ino = self.dir.get(name)?;
        Some(self.inodes.get(ino).map_or(&[][..], |c| c.as_slice()))
    }
}

impl Default for SimStore {
    fn default() -> SimStore {
        SimStore::new()
    }
}

impl fmt::Debug for SimStore {
    /// Names and sizes rather than contents: a store holds whole firmware
    /// images and a failing assertion should stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes = |dir: &BTreeMap<String, Ino>, inodes: &BTreeMap<Ino, Content>| {
            dir.iter()
                .map(|(name, ino)| (name.clone(), inodes.get(ino).map_or(0, |c| c.len())))
                .collect::<BTreeMap<String, usize>>()
        };
        f.debug_struct("SimStore")
            .field("files", &sizes(&self.dir, &self.inodes))
            .field("durable", &sizes(&self.durable_dir, &self.durable_inodes))
            .field("pending", &self.pending.len())
            .field("fault", &self.fault)
            .field("ops", &self.ops)
            .field("cut", &self.cut)
            .finish()
    }
}

impl FileStore for SimStore {
    fn read(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        self.begin(StorageOp::Read)?;
        let content = self
            .content(name)
            .ok_or(StorageError::new(StorageOp::Read, StorageErrorKind::NotFound))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let available = content.get(start..).unwrap_or(&[]);
        let n = available.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), available.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn size(&mut self, name: &str) -> Result<Option<u64>, StorageError> {
        self.begin(StorageOp::Stat)?;
        Ok(self.content(name).map(|c| c.len() as u64))
    }

    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.begin(StorageOp::Write)?;
        let too_big = StorageError::new(StorageOp::Write, StorageErrorKind::NoSpace);
        let offset = usize::try_from(offset).map_err(|_| too_big)?;
        let end = offset.checked_add(data.len()).ok_or(too_big)?;
        if end > MAX_FILE_LEN {
            return Err(too_big);
        }

        let ino = match self.dir.get(name) {
            Some(ino) => *ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.dir.insert(name.into(), ino);
                self.pending.push(Pending::Create { name: name.into(), ino });
                ino
            }
        };
        let content = self.inodes.entry(ino).or_default();
        apply_write(content, offset, data);
        // An empty write changes no data (POSIX pwrite of 0 bytes does not
        // extend the file), and leaving it out keeps every pending write
        // tearable at some byte.
        if !data.is_empty() {
            self.pending.push(Pending::Data {
                ino,
                offset,
                bytes: data.into(),
            });
        }
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        if let Err(err) = self.begin(StorageOp::Sync) {
            if !self.is_powered_off() {
                // fsyncgate: the kernel marks the failed pages clean, so
                // they never reach the disk and nothing reports it again.
                if let Some(ino) = self.dir.get(name).copied() {
                    self.pending
                        .retain(|op| !matches!(op, Pending::Data { ino: i, .. } if *i == ino));
                }
            }
            return Err(err);
        }
        let ino = *self
            .dir
            .get(name)
            .ok_or(StorageError::new(StorageOp::Sync, StorageErrorKind::NotFound))?;
        let durable = &mut self.durable_inodes;
        self.pending.retain(|op| match op {
            Pending::Data { ino: i, offset, bytes } if *i == ino => {
                apply_write(durable.entry(ino).or_default(), *offset, bytes);
                false
            }
            _ => true,
        });
        // The inode exists on disk (empty) once synced, even with no data.
        durable.entry(ino).or_default();
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.begin(StorageOp::Rename)?;
        if !self.dir.contains_key(from) {
            return Err(StorageError::new(StorageOp::Rename, StorageErrorKind::NotFound));
        }
        // POSIX: renaming a name onto itself does nothing.
        if from == to {
            return Ok(());
        }
        if let Some(ino) = self.dir.remove(from) {
            self.dir.insert(to.into(), ino);
        }
        self.pending.push(Pending::Rename {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), StorageError> {
        self.begin(StorageOp::SyncDir)?;
        let dir = &mut self.durable_dir;
        self.pending.retain(|op| match op {
            Pending::Data { .. } => true,
            Pending::Create { name, ino } => {
                dir.insert(name.clone(), *ino);
                false
            }
            Pending::Rename { from, to } => {
                if let Some(ino) = dir.remove(from) {
                    dir.insert(to.clone(), ino);
                }
                false
            }
            Pending::Remove { name } => {
                dir.remove(name);
                false
            }
        });
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.begin(StorageOp::Remove)?;
        if self.dir.remove(name).is_some() {
            self.pending.push(Pending::Remove { name: name.into() });
        }
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        self.begin(StorageOp::Stat)?;
        Ok(self.dir.keys().cloned().collect())
    }
}

/// Which pending operations a reboot replays.
struct Plan {
    /// Per pending data write, in order: how many of its leading bytes
    /// survive (0 for none, its length for all).
    data: Vec<usize>,
    /// How many of the pending directory operations survive, oldest first.
    dir_ops: usize,
}

impl Plan {
    fn new(damage: Damage, pending: &[Pending]) -> Plan {
        let lens: Vec<usize> = pending
            .iter()
            .filter_map(|op| match op {
                Pending::Data { bytes, .. } => Some(bytes.len()),
                _ => None,
            })
            .collect();
        let n_dir = pending.len() - lens.len();
        match damage {
            Damage::LoseUnsynced => Plan {
                data: Vec::new(),
                dir_ops: 0,
            },
            Damage::KeepUnsynced => Plan {
                data: lens,
                dir_ops: n_dir,
            },
            Damage::LoseNames => Plan { data: lens, dir_ops: 0 },
            Damage::RandomSubset { seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let dir_ops = below(&mut rng, n_dir as u64 + 1) as usize;
                let data = lens
                    .into_iter()
                    .map(|len| if rng.next_u32() & 1 == 1 { len } else { 0 })
                    .collect();
                Plan { data, dir_ops }
            }
            Damage::TornByte { seed } | Damage::TornWord { seed } => {
                let mut data = lens;
                if let Some(last) = data.last_mut() {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    *last = below(&mut rng, *last as u64) as usize;
                }
                Plan { data, dir_ops: n_dir }
            }
        }
    }
}

/// A seeded draw from `0..n` (0 when `n` is 0). The modulo bias is far
/// below anything a crash test could notice.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64().checked_rem(n).unwrap_or(0)
}

/// Writes `data` at `offset`, zero-filling any gap past the end. Callers
/// bound `offset + data.len()` by [`MAX_FILE_LEN`].
fn apply_write(content: &mut Content, offset: usize, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let content = Arc::make_mut(content);
    let end = offset.saturating_add(data.len());
    if content.len() < end {
        content.resize(end, 0);
    }
    if let Some(dst) = content.get_mut(offset..end) {
        dst.copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests;
