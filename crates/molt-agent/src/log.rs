//! A durable, append-only, checksummed, segmented log on disk: the agent's
//! input journal and its outbox are both one.
//!
//! A log is a directory of segment files `{first:020}.seg`, named by the
//! first key they hold. A record is
//!
//! ```text
//! len: u32 LE | crc32: u32 LE | first: u64 LE | last: u64 LE | payload
//! ```
//!
//! where `len` counts `first`, `last` and the payload, and the CRC-32 covers
//! the same bytes. `first..=last` is the range of sequence numbers the
//! record holds; keys increase strictly from record to record.
//!
//! On open every segment is read back. A record that is cut short or fails
//! its checksum ends its segment: at the end of the newest segment that is
//! the torn tail of an interrupted append, which is cut off; anywhere else
//! it is corruption, and the segment's records before it are kept and the
//! rest reported in [`Recovery`]. Nothing is trusted that did not verify,
//! and the log opens whatever it holds: a corrupt segment never stops the
//! agent.
//!
//! Only whole segments are removed ([`Log::trim_through`]), and never the
//! one being written, so the newest key always survives a trim and a
//! sequence number is never handed out twice.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of a record's header: `len`, `crc32`, `first`, `last`.
pub const RECORD_HEADER_BYTES: u64 = 24;

/// When appended records are made durable (fsync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// fsync after every append: each record durable before `append` returns.
    EveryAppend,
    /// fsync when the caller calls [`Log::sync`], once per batch: the agent
    /// acknowledges a batch's readings only after that.
    EveryBatch,
    /// fsync at most once per this many milliseconds, on the append or
    /// [`Log::sync`] that finds the interval passed. A power cut may lose up
    /// to this much; a killed process loses nothing (the kernel has it).
    IntervalMs(u64),
}

/// Every bound on a log, by name.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// The whole log may hold this many bytes; see [`LogError::Full`].
    pub bytes_max: u64,
    /// The largest payload of one record.
    pub record_bytes_max: u32,
}

/// What a log can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk refused.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Appending would pass `bytes_max`.
    #[error("{name} is full: {held} bytes held, {needed} more needed, bytes_max={limit}")]
    Full {
        /// Which log (`outbox` or `journal`).
        name: &'static str,
        /// Bytes held now.
        held: u64,
        /// Bytes the record needs.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// A payload above `record_bytes_max`.
    #[error("{name}: a record of {bytes} bytes is over record_bytes_max={limit}")]
    RecordTooLarge {
        /// Which log.
        name: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: u32,
    },
    /// Keys must increase strictly.
    #[error("{name}: record {first}..={last} does not follow {newest}")]
    OutOfOrder {
        /// Which log.
        name: &'static str,
        /// The record's first key.
        first: u64,
        /// Its last key.
        last: u64,
        /// The newest key held.
        newest: u64,
    },
    /// An earlier write or sync failed: what the file holds is unknown, so
    /// the log must be reopened (a failed fsync is never retried).
    #[error("{name} must be reopened after a failed write or sync")]
    Poisoned {
        /// Which log.
        name: &'static str,
    },
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The first sequence number it holds.
    pub first: u64,
    /// The last.
    pub last: u64,
    /// What it holds.
    pub payload: Vec<u8>,
}

/// What opening a log found that it could not keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the newest segment's end: an interrupted append.
    pub torn_tail_bytes: u64,
    /// Corrupt records in older segments: (segment, offset, bytes dropped).
    pub corrupt: Vec<(PathBuf, u64, u64)>,
    /// Segment files that could not be read at all or were misnamed.
    pub unreadable: Vec<PathBuf>,
    /// Records kept.
    pub records: u64,
}

impl Recovery {
    /// Whether anything was lost other than a torn tail.
    pub fn lost_data(&self) -> bool {
        !self.corrupt.is_empty() || !self.unreadable.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    /// The file's name key: the first record's `first` when it was created.
    first: u64,
    /// The newest key in it, if any record.
    last: Option<u64>,
    bytes: u64,
}

/// A segmented log; see the module docs.
#[derive(Debug)]
pub struct Log {
    name: &'static str,
    dir: PathBuf,
    limits: LogLimits,
    sync: SyncPolicy,
    segments: VecDeque<Segment>,
    file: Option<File>,
    dirty: bool,
    last_sync: Instant,
    poisoned: bool,
    /// The newest key known to be on disk after an fsync.
    durable: Option<u64>,
}

fn io_error<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// Encodes one record.
pub fn encode_record(first: u64, last: u64, payload: &[u8]) -> Vec<u8> {
    let len = (16 + payload.len()) as u32;
    let mut bytes = Vec::with_capacity(8 + 16 + payload.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&first.to_le_bytes());
    bytes.extend_from_slice(&last.to_le_bytes());
    bytes.extend_from_slice(payload);
    let crc = crc32fast::hash(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes the records of one segment: the records that verify, and the
/// offset where the first that does not starts (the file's length if all do).
pub fn decode_records(bytes: &[u8], record_bytes_max: u32) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut newest: Option<u64> = None;
    while bytes.len() - at >= RECORD_HEADER_BYTES as usize {
        let word = |offset: usize, width: usize| {
            let mut buf = [0u8; 8];
            buf[..width].copy_from_slice(&bytes[at + offset..at + offset + width]);
            u64::from_le_bytes(buf)
        };
        let len = word(0, 4) as usize;
        if len < 16 || len > 16 + record_bytes_max as usize || bytes.len() - at - 8 < len {
            break;
        }
        let crc = word(4, 4) as u32;
        let body = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let (first, last) = (word(8, 8), word(16, 8));
        if first > last || newest.is_some_and(|newest| first <= newest) {
            break;
        }
        newest = Some(last);
        records.push(Record {
            first,
            last,
            payload: body[16..].to_vec(),
        });
        at += 8 + len;
    }
    (records, at as u64)
}

fn read_file(path: &Path, bytes_max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(bytes_max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("syncing directory", dir))
}

impl Log {
    /// Opens (or creates) the log in `dir`, reading every segment back.
    pub fn open(
        name: &'static str,
        dir: &Path,
        limits: LogLimits,
        sync: SyncPolicy,
    ) -> Result<(Log, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let mut names = Vec::new();
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
            let entry = entry.map_err(io_error("listing", dir))?;
            let path = entry.path();
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|name| name.strip_suffix(".seg")) else {
                continue;
            };
            match stem.parse::<u64>() {
                Ok(first) => names.push((first, path)),
                Err(_) => recovery.unreadable.push(path),
            }
        }
        names.sort();
        let mut segments = VecDeque::new();
        let count = names.len();
        let mut newest: Option<u64> = None;
        // A segment can hold at most segment_bytes_max plus one record.
        let read_max = limits.segment_bytes_max + RECORD_HEADER_BYTES + u64::from(limits.record_bytes_max);
        for (idx, (first, path)) in names.into_iter().enumerate() {
            let bytes = match read_file(&path, read_max) {
                Ok(bytes) => bytes,
                Err(_) => {
                    recovery.unreadable.push(path);
                    continue;
                }
            };
            let (records, good) = decode_records(&bytes, limits.record_bytes_max);
            // Records must continue after the previous segment's.
            let records: Vec<Record> = records
                .into_iter()
                .take_while(|record| newest.is_none_or(|newest| record.first > newest))
                .collect();
            let good = records
                .iter()
                .map(|record| 8 + 16 + record.payload.len() as u64)
                .sum::<u64>()
                .min(good);
            let bad = bytes.len() as u64 - good;
            let is_newest = idx + 1 == count;
            if bad > 0 {
                if is_newest {
                    recovery.torn_tail_bytes = bad;
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_error("opening", &path))?;
                    file.set_len(good)
                        .map_err(io_error("cutting the torn tail of", &path))?;
                    file.sync_all().map_err(io_error("syncing", &path))?;
                } else {
                    recovery.corrupt.push((path.clone(), good, bad));
                }
            }
            recovery.records += records.len() as u64;
            if let Some(record) = records.last() {
                newest = Some(record.last);
            }
            segments.push_back(Segment {
                path,
                first,
                last: records.last().map(|record| record.last),
                bytes: good,
            });
        }
        let mut log = Log {
            name,
            dir: dir.to_owned(),
            limits,
            sync,
            segments,
            file: None,
            dirty: false,
            last_sync: Instant::now(),
            poisoned: false,
            durable: None,
        };
        // A corrupt older segment keeps its good records but is never
        // appended to; appends go to the newest, whose tail was cut clean.
        if let Some(segment) = log.segments.back() {
            let file = OpenOptions::new()
                .append(true)
                .open(&segment.path)
                .map_err(io_error("opening", &segment.path))?;
            // A killed process leaves its unsynced appends in the page
            // cache, where this process reads them: make them durable
            // before anything read back counts as such.
            file.sync_data().map_err(io_error("syncing", &segment.path))?;
            log.file = Some(file);
        }
        log.durable = log.newest();
        Ok((log, recovery))
    }

    /// The newest key held (survives every trim).
    pub fn newest(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|segment| segment.last)
    }

    /// The newest key that an fsync made durable: a record above it may
    /// still be lost to a power cut, and is not sent before it is durable.
    pub fn durable(&self) -> Option<u64> {
        self.durable
    }

    /// The oldest key that may still be held.
    pub fn oldest(&self) -> Option<u64> {
        self.segments.front().map(|segment| segment.first)
    }

    /// Bytes held on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.bytes).sum()
    }

    /// Segments on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The limits.
    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// Whether a record with `payload_bytes` fits under `bytes_max` now.
    pub fn fits(&self, payload_bytes: usize) -> bool {
        self.bytes() + RECORD_HEADER_BYTES + payload_bytes as u64 <= self.limits.bytes_max
    }

    /// Appends a record holding keys `first..=last`; durable when the sync
    /// policy says. Refused whole, never half-written, when it does not fit.
    pub fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned { name: self.name });
        }
        if payload.len() > self.limits.record_bytes_max as usize {
            return Err(LogError::RecordTooLarge {
                name: self.name,
                bytes: payload.len(),
                limit: self.limits.record_bytes_max,
            });
        }
        let newest = self.newest();
        if first > last || newest.is_some_and(|newest| first <= newest) {
            return Err(LogError::OutOfOrder {
                name: self.name,
                first,
                last,
                newest: newest.unwrap_or(0),
            });
        }
        let needed = RECORD_HEADER_BYTES + payload.len() as u64;
        if !self.fits(payload.len()) {
            return Err(LogError::Full {
                name: self.name,
                held: self.bytes(),
                needed,
                limit: self.limits.bytes_max,
            });
        }
        let roll = match self.segments.back() {
            None => true,
            Some(segment) => segment.bytes > 0 && segment.bytes + needed > self.limits.segment_bytes_max,
        };
        if roll {
            self.start_segment(first)?;
        }
        let bytes = encode_record(first, last, payload);
        let result = match (self.file.as_mut(), self.segments.back_mut()) {
            (Some(file), Some(segment)) => {
                let written = file.write_all(&bytes).map_err(io_error("appending to", &segment.path));
                if written.is_ok() {
                    segment.bytes += needed;
                    segment.last = Some(last);
                }
                written
            }
            _ => Err(LogError::Poisoned { name: self.name }),
        };
        if result.is_err() {
            self.poisoned = true;
            return result;
        }
        self.dirty = true;
        match self.sync {
            SyncPolicy::EveryAppend => self.sync_now(),
            SyncPolicy::IntervalMs(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => self.sync_now(),
            _ => Ok(()),
        }
    }

    /// Makes appended records durable as the sync policy says: always for
    /// `every-batch`, when the interval passed for `interval-ms`.
    pub fn sync(&mut self) -> Result<(), LogError> {
        match self.sync {
            SyncPolicy::EveryAppend | SyncPolicy::EveryBatch => self.sync_now(),
            SyncPolicy::IntervalMs(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => self.sync_now(),
            SyncPolicy::IntervalMs(_) => Ok(()),
        }
    }

    /// fsyncs now, whatever the policy.
    pub fn sync_now(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned { name: self.name });
        }
        if !self.dirty {
            return Ok(());
        }
        if let (Some(file), Some(segment)) = (self.file.as_ref(), self.segments.back())
            && let Err(error) = file.sync_data()
        {
            self.poisoned = true;
            return Err(io_error("syncing", &segment.path)(error));
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        self.durable = self.newest();
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> Result<(), LogError> {
        if self.dirty {
            self.sync_now()?;
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error("creating", &path))?;
        // The new name must be durable before anything in it counts.
        sync_dir(&self.dir)?;
        self.file = Some(file);
        self.segments.push_back(Segment {
            path,
            first,
            last: None,
            bytes: 0,
        });
        Ok(())
    }

    /// Removes every segment all of whose records are at or below
    /// `through`, except the one being written.
    pub fn trim_through(&mut self, through: u64) -> Result<u64, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else { break };
            // The next segment's name bounds this one's keys from above.
            let bound = self.segments.get(1).map(|next| next.first.saturating_sub(1));
            let last = front.last.or(bound).unwrap_or(0);
            if last > through {
                break;
            }
            let path = front.path.clone();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("removing", &path)(error)),
            }
            self.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Reads every record with a key above `after`, in order, stopping once
    /// `payload_bytes_max` bytes of payload were read (at least one record).
    pub fn read_after(&self, after: u64, payload_bytes_max: u64) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let read_max = self.limits.segment_bytes_max + RECORD_HEADER_BYTES + u64::from(self.limits.record_bytes_max);
        for segment in &self.segments {
            if segment.last.is_none_or(|last| last <= after) {
                continue;
            }
            let bytes =
                read_file(&segment.path, read_max.min(segment.bytes)).map_err(io_error("reading", &segment.path))?;
            let (records, _) = decode_records(&bytes, self.limits.record_bytes_max);
            for record in records {
                if record.last <= after {
                    continue;
                }
                total += record.payload.len() as u64;
                out.push(record);
                if total >= payload_bytes_max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}
