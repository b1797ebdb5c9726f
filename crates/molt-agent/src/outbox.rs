//! The input journal and the durable, bounded outbox, both [`Log`]s.
//!
//! - The **journal** holds every accepted batch of readings, one record per
//!   batch, keyed by the readings' device-wide sequence numbers. A source is
//!   acknowledged only once its batch's record is durable. The next reading
//!   sequence is the newest journal key plus one, and a trim never removes
//!   the newest segment, so a reading sequence is never handed out twice.
//! - The **outbox** holds the uplink messages the policies produced, one
//!   record per batch, keyed by the device's uplink sequence numbers
//!   (gap-free, as the server's cumulative `StoreAck` needs). Each record
//!   also names its *origin*, the last reading sequence of the batch that
//!   produced it: after a restart, a batch at or below the newest origin has
//!   its messages in the outbox already, and re-processing it delivers
//!   nothing. The outbox is trimmed only through a `StoreAck`'s
//!   `stored_through`.

use std::path::Path;

use molt_protocol::Kind;
use molt_wasm::Reading;

use crate::log::{Log, LogError, LogLimits, Record, Recovery, SyncPolicy};

/// What happens when the outbox has no room for a batch's messages.
///
/// Dropping the oldest unacknowledged messages is not offered: the server
/// advances `stored_through` only over a gap-free prefix of sequence
/// numbers, so a dropped message would stall every acknowledgement after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Stop accepting readings until the server acknowledges enough: the
    /// batch is refused before its readings are journaled or acknowledged,
    /// so sources that can wait (MQTT, a FIFO) keep them.
    RefuseReadings,
    /// Keep accepting readings and run the policies, but drop the batch's
    /// uplink messages (no sequence number is spent on them) and count them
    /// in health; an `OutboxOverflow` event follows once there is room.
    DropNewMessages,
}

/// One uplink message, encoded, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its topic kind.
    pub kind: Kind,
    /// Its uplink sequence number.
    pub seq: u64,
    /// The DAG-CBOR payload, which carries `seq` too.
    pub payload: Vec<u8>,
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Telemetry => 1,
        Kind::Alerts => 2,
        Kind::Events => 3,
        Kind::State => 4,
        Kind::Health => 5,
        _ => 0,
    }
}

fn kind_of(code: u8) -> Option<Kind> {
    Some(match code {
        1 => Kind::Telemetry,
        2 => Kind::Alerts,
        3 => Kind::Events,
        4 => Kind::State,
        5 => Kind::Health,
        _ => return None,
    })
}

/// One outbox record: a batch's messages and the batch's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxBatch {
    /// The last reading sequence of the batch that produced these; for
    /// messages no batch produced (events, state, health), the newest
    /// origin when they were appended, so that the newest record always
    /// names the newest origin, which is all [`Outbox::open`] reads.
    pub origin: u64,
    /// The messages, with consecutive sequence numbers.
    pub messages: Vec<Uplink>,
}

/// A record whose payload does not decode, though its checksum matched.
#[derive(Debug, thiserror::Error)]
#[error("outbox record {first}..={last} does not decode: {why}")]
pub struct BadRecord {
    first: u64,
    last: u64,
    why: &'static str,
}

fn encode_batch(origin: u64, messages: &[(Kind, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(10 + messages.iter().map(|(_, p)| 5 + p.len()).sum::<usize>());
    bytes.extend_from_slice(&origin.to_le_bytes());
    bytes.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for (kind, payload) in messages {
        bytes.push(kind_code(*kind));
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    bytes
}

fn decode_batch(record: &Record) -> Result<OutboxBatch, BadRecord> {
    let bad = |why| BadRecord {
        first: record.first,
        last: record.last,
        why,
    };
    let bytes = &record.payload;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], BadRecord> {
        let slice = bytes.get(*at..*at + n).ok_or(bad("cut short"))?;
        *at += n;
        Ok(slice)
    };
    let mut at = 0;
    let mut word = [0u8; 8];
    word.copy_from_slice(take(&mut at, 8)?);
    let origin = u64::from_le_bytes(word);
    let mut half = [0u8; 4];
    half.copy_from_slice(take(&mut at, 4)?);
    let count = u32::from_le_bytes(half) as u64;
    if count != record.last - record.first + 1 {
        return Err(bad("message count does not match its sequence range"));
    }
    let mut messages = Vec::with_capacity(count as usize);
    for idx in 0..count {
        let kind = kind_of(take(&mut at, 1)?[0]).ok_or(bad("unknown kind"))?;
        half.copy_from_slice(take(&mut at, 4)?);
        let len = u32::from_le_bytes(half) as usize;
        messages.push(Uplink {
            kind,
            seq: record.first + idx,
            payload: take(&mut at, len)?.to_vec(),
        });
    }
    Ok(OutboxBatch { origin, messages })
}

/// The outbox as the pipeline (which appends) and the fleet link (which
/// reads, sends and acknowledges) share it.
pub type SharedOutbox = std::sync::Arc<std::sync::Mutex<Outbox>>;

/// Locks a shared outbox. A panic while it was held leaves the outbox as
/// its last completed operation left it (the log refuses further writes
/// by itself after a failed one), so the lock is taken over, not refused.
pub fn lock(outbox: &SharedOutbox) -> std::sync::MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outbox; see the module docs.
#[derive(Debug)]
pub struct Outbox {
    log: Log,
    overflow: OverflowPolicy,
    origin: u64,
    stored_through: u64,
    dropped_messages: u64,
}

impl Outbox {
    /// Opens the outbox in `dir`.
    pub fn open(
        dir: &Path,
        limits: LogLimits,
        sync: SyncPolicy,
        overflow: OverflowPolicy,
    ) -> Result<(Outbox, Recovery), LogError> {
        let (log, recovery) = Log::open("outbox", dir, limits, sync)?;
        // The newest record names the newest origin; records are written in
        // batch order, so every older batch's messages are older records.
        let origin = match log.newest() {
            None => 0,
            Some(newest) => log
                .read_after(newest.saturating_sub(1), u64::MAX)?
                .last()
                .and_then(|record| decode_batch(record).ok())
                .map_or(0, |batch| batch.origin),
        };
        Ok((
            Outbox {
                log,
                overflow,
                origin,
                stored_through: 0,
                dropped_messages: 0,
            },
            recovery,
        ))
    }

    /// The sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.log.newest().map_or(1, |newest| newest + 1)
    }

    /// The newest batch origin whose messages are in the outbox.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The overflow policy.
    pub fn overflow(&self) -> OverflowPolicy {
        self.overflow
    }

    /// Messages dropped under [`OverflowPolicy::DropNewMessages`].
    pub fn dropped_messages(&self) -> u64 {
        self.dropped_messages
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.log.bytes()
    }

    /// Whether `payload_bytes` more would fit.
    pub fn fits(&self, payload_bytes: usize) -> bool {
        self.log.fits(payload_bytes)
    }

    /// Messages not yet acknowledged by the server's store.
    pub fn depth(&self) -> u64 {
        self.next_seq().saturating_sub(1).saturating_sub(self.stored_through)
    }

    /// The newest sequence number that is durable on disk. Only messages at
    /// or below it are sent: a message the server stored and a power cut
    /// then took from the outbox would have its sequence number handed out
    /// again, for a different message.
    pub fn durable_through(&self) -> u64 {
        self.log.durable().unwrap_or(0)
    }

    /// The highest `stored_through` acknowledged.
    pub fn stored_through(&self) -> u64 {
        self.stored_through
    }

    /// Appends one batch's messages, encoded with consecutive sequence
    /// numbers from [`next_seq`](Outbox::next_seq). `Ok(None)` if the batch
    /// has nothing to send; `Ok(Some(range))` with the sequence numbers
    /// spent. A batch that does not fit is [`LogError::Full`] under
    /// `refuse-readings`, and dropped (counted, no sequence spent) under
    /// `drop-new-messages`.
    pub fn append_batch(&mut self, origin: u64, messages: &[(Kind, Vec<u8>)]) -> Result<Option<(u64, u64)>, LogError> {
        if messages.is_empty() {
            return Ok(None);
        }
        let first = self.next_seq();
        let count = messages.len() as u64;
        let payload = encode_batch(origin, messages);
        if !self.log.fits(payload.len()) && self.overflow == OverflowPolicy::DropNewMessages {
            self.dropped_messages += count;
            return Ok(None);
        }
        self.log.append(first, first + count - 1, &payload)?;
        if origin > 0 {
            self.origin = origin;
        }
        Ok(Some((first, first + count - 1)))
    }

    /// Appends one message no batch produced (an event, the reported
    /// state, a health report), encoded by the caller with sequence number
    /// [`next_seq`](Outbox::next_seq) under the same lock. Its record keeps
    /// the newest origin (see [`OutboxBatch::origin`]). `Ok(None)` if it does
    /// not fit: the caller keeps it until there is room, whatever the
    /// overflow policy, and it is never counted as dropped. Synced as the
    /// sync policy says.
    pub fn append_status(&mut self, kind: Kind, payload: Vec<u8>) -> Result<Option<u64>, LogError> {
        let messages = [(kind, payload)];
        let record = encode_batch(self.origin, &messages);
        if !self.log.fits(record.len()) {
            return Ok(None);
        }
        let seq = self.next_seq();
        self.log.append(seq, seq, &record)?;
        self.log.sync()?;
        Ok(Some(seq))
    }

    /// Makes appended batches durable, as the sync policy says.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.log.sync()
    }

    /// Makes appended batches durable now, whatever the sync policy.
    pub fn sync_now(&mut self) -> Result<(), LogError> {
        self.log.sync_now()
    }

    /// The server's store acknowledged every message through
    /// `stored_through`: whole segments at or below it are removed.
    pub fn acknowledge(&mut self, stored_through: u64) -> Result<(), LogError> {
        let stored_through = stored_through.min(self.next_seq().saturating_sub(1));
        if stored_through > self.stored_through {
            self.stored_through = stored_through;
            self.log.trim_through(stored_through)?;
        }
        Ok(())
    }

    /// The messages after `after`, in order, up to about `bytes_max` bytes,
    /// for sending. A record that does not decode is skipped and reported.
    pub fn pending(&self, after: u64, bytes_max: u64) -> Result<(Vec<Uplink>, Vec<BadRecord>), LogError> {
        let mut messages = Vec::new();
        let mut bad = Vec::new();
        for record in self.log.read_after(after, bytes_max)? {
            match decode_batch(&record) {
                Ok(batch) => messages.extend(batch.messages.into_iter().filter(|message| message.seq > after)),
                Err(error) => bad.push(error),
            }
        }
        Ok((messages, bad))
    }

    /// Every batch held, in order, for tests and `molt-agent status`.
    pub fn batches(&self) -> Result<Vec<OutboxBatch>, LogError> {
        Ok(self
            .log
            .read_after(0, u64::MAX)?
            .iter()
            .filter_map(|record| decode_batch(record).ok())
            .collect())
    }
}

/// Bytes of one journaled reading: sensor, timestamp, value.
const READING_BYTES: usize = 4 + 8 + 8;

/// The input journal; see the module docs.
#[derive(Debug)]
pub struct Journal {
    log: Log,
    cursor: Option<u64>,
}

/// Journal payloads start with the source cursor; this means none.
const NO_CURSOR: u64 = u64::MAX;

fn cursor_of(record: &Record) -> Option<u64> {
    let mut word = [0u8; 8];
    word.copy_from_slice(record.payload.get(..8)?);
    Some(u64::from_le_bytes(word)).filter(|&cursor| cursor != NO_CURSOR)
}

impl Journal {
    /// Opens the journal in `dir`.
    pub fn open(dir: &Path, limits: LogLimits, sync: SyncPolicy) -> Result<(Journal, Recovery), LogError> {
        let (log, recovery) = Log::open("journal", dir, limits, sync)?;
        let cursor = match log.newest() {
            None => None,
            Some(newest) => log
                .read_after(newest.saturating_sub(1), u64::MAX)?
                .last()
                .and_then(cursor_of),
        };
        Ok((Journal { log, cursor }, recovery))
    }

    /// The source cursor journaled with the newest batch that had one: where
    /// a resumable source (a JSON-lines file) continues after a restart.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// The sequence number the next reading gets.
    pub fn next_seq(&self) -> u64 {
        self.log.newest().map_or(1, |newest| newest + 1)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.log.bytes()
    }

    /// Numbers `values` (sensor, timestamp, value) and journals them as one
    /// batch, with the source's cursor after them if it has one, durable
    /// before this returns: the caller may acknowledge the source afterwards.
    /// The readings and the cursor are one record, so a crash never keeps
    /// one without the other.
    pub fn append(&mut self, values: &[(u32, u64, f64)], cursor: Option<u64>) -> Result<Vec<Reading>, LogError> {
        let first = self.next_seq();
        let readings: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(idx, &(sensor, timestamp_ms, value))| Reading {
                sequence: first + idx as u64,
                sensor,
                timestamp_ms,
                value,
            })
            .collect();
        if readings.is_empty() {
            return Ok(readings);
        }
        let mut payload = Vec::with_capacity(8 + readings.len() * READING_BYTES);
        payload.extend_from_slice(&cursor.unwrap_or(NO_CURSOR).to_le_bytes());
        for reading in &readings {
            payload.extend_from_slice(&reading.sensor.to_le_bytes());
            payload.extend_from_slice(&reading.timestamp_ms.to_le_bytes());
            payload.extend_from_slice(&reading.value.to_bits().to_le_bytes());
        }
        self.log.append(first, first + readings.len() as u64 - 1, &payload)?;
        self.log.sync_now()?;
        if cursor.is_some() {
            self.cursor = cursor;
        }
        Ok(readings)
    }

    /// Every journaled batch with readings after `after`, in order, with
    /// the batch boundaries they were processed in.
    pub fn batches_after(&self, after: u64) -> Result<Vec<Vec<Reading>>, LogError> {
        let mut batches = Vec::new();
        for record in self.log.read_after(after, u64::MAX)? {
            let count = (record.last - record.first + 1) as usize;
            if record.payload.len() != 8 + count * READING_BYTES {
                continue;
            }
            let batch = record.payload[8..]
                .chunks_exact(READING_BYTES)
                .enumerate()
                .map(|(idx, chunk)| {
                    let mut sensor = [0u8; 4];
                    let mut time = [0u8; 8];
                    let mut bits = [0u8; 8];
                    sensor.copy_from_slice(&chunk[..4]);
                    time.copy_from_slice(&chunk[4..12]);
                    bits.copy_from_slice(&chunk[12..]);
                    Reading {
                        sequence: record.first + idx as u64,
                        sensor: u32::from_le_bytes(sensor),
                        timestamp_ms: u64::from_le_bytes(time),
                        value: f64::from_bits(u64::from_le_bytes(bits)),
                    }
                })
                .collect();
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Removes whole segments whose readings every policy has checkpointed.
    pub fn trim_through(&mut self, through: u64) -> Result<u64, LogError> {
        self.log.trim_through(through)
    }
}
