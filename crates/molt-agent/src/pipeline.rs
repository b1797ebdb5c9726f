//! Readings in, messages out, crash-safe: the journal, the policies, the
//! outbox and the policy checkpoints, in the order that keeps every promise.
//!
//! For each batch [`Pipeline::accept`]:
//!
//! 1. numbers the readings and journals them durably (the caller
//!    acknowledges the source only after `accept` returned);
//! 2. runs every policy;
//! 3. appends the batch's uplink messages to the outbox as one record whose
//!    origin is the batch's last reading sequence, synced by the outbox's
//!    policy; commands go back to the caller for the actuator sinks;
//! 4. every `checkpoint_interval_batches` batches, writes a checkpoint: each
//!    policy's state and the last reading sequence processed, written to a
//!    temporary file, synced, renamed over the older of two checkpoint files
//!    and the directory synced, so one always verifies.
//!
//! [`Pipeline::open`] resumes every policy from the newest checkpoint that
//! verifies and re-processes the journaled batches after it, with the same
//! batch boundaries. Policies are deterministic, so re-processing gives the
//! same actions; a batch whose origin is at or below the outbox's newest
//! origin already has its messages in the outbox and delivers nothing again
//! (nor its commands). A restart, a SIGKILL or a power cut therefore
//! re-processes only what came after the last checkpoint, and no action
//! reaches the outbox twice.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use molt_protocol::{Alert, Alerts, Kind, Limits, Severity, TelemetryBuilder};
use molt_wasm::{Action, Command, Reading, State};

use crate::log::{LogError, LogLimits, Recovery, SyncPolicy};
use crate::outbox::{self, Journal, Outbox, OverflowPolicy, SharedOutbox};

/// The policies a pipeline runs: a [`Device`](crate::Device) in the agent,
/// anything deterministic in tests.
pub trait Policies {
    /// Runs one batch through every policy: per policy, the version that
    /// served it (`name@version`) and its actions, in order.
    fn process(&mut self, batch: &[Reading]) -> Result<Vec<(String, Vec<Action>)>, String>;
    /// Each policy's name and current state.
    fn snapshots(&mut self) -> Result<Vec<(String, State)>, String>;
    /// Restarts policy `name` from `state`.
    fn resume(&mut self, name: &str, state: &State) -> Result<(), String>;
}

/// Every bound and policy of a pipeline, by name.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The outbox's bounds (`bytes_max` is its size on disk).
    pub outbox: LogLimits,
    /// When the outbox syncs.
    pub outbox_sync: SyncPolicy,
    /// What happens when the outbox is full.
    pub overflow: OverflowPolicy,
    /// The journal's bounds.
    pub journal: LogLimits,
    /// Batches between checkpoints.
    pub checkpoint_interval_batches: u32,
    /// The largest checkpoint file read back.
    pub checkpoint_bytes_max: u64,
    /// Readings in one batch.
    pub batch_readings_max: usize,
    /// The protocol's limits, checked before a message is queued.
    pub protocol: Limits,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            outbox: LogLimits {
                segment_bytes_max: 4 << 20,
                bytes_max: 256 << 20,
                record_bytes_max: 8 << 20,
            },
            outbox_sync: SyncPolicy::EveryBatch,
            overflow: OverflowPolicy::RefuseReadings,
            journal: LogLimits {
                segment_bytes_max: 4 << 20,
                bytes_max: 256 << 20,
                record_bytes_max: 1 << 20,
            },
            checkpoint_interval_batches: 64,
            checkpoint_bytes_max: 64 << 20,
            batch_readings_max: 4096,
            protocol: Limits::default(),
        }
    }
}

/// What a pipeline can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The journal or the outbox failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A policy call failed in a way the deployment could not absorb.
    #[error("policy: {0}")]
    Policy(String),
    /// The outbox has no room and its overflow policy is `refuse-readings`.
    #[error(
        "the outbox is full ({held} of bytes_max={limit} bytes, overflow=refuse-readings): readings are refused until the server acknowledges"
    )]
    OutboxFull {
        /// Bytes held.
        held: u64,
        /// The limit.
        limit: u64,
    },
    /// A batch over `batch_readings_max`.
    #[error("a batch of {readings} readings is over batch_readings_max={limit}")]
    BatchTooLarge {
        /// Its size.
        readings: usize,
        /// The limit.
        limit: usize,
    },
    /// A checkpoint could not be written.
    #[error("writing checkpoint {path}: {source}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One accepted batch.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Its readings' sequence numbers, `first..=last`; `None` for no readings.
    pub readings: Option<(u64, u64)>,
    /// Uplink sequence numbers spent, `first..=last`.
    pub uplink: Option<(u64, u64)>,
    /// Commands for the actuator sinks: (policy version, command).
    pub commands: Vec<(String, Command)>,
    /// Log lines the policies returned: (policy version, message).
    pub logs: Vec<(String, String)>,
    /// Messages the protocol's limits refused, left out and counted.
    pub refused_messages: u64,
}

/// What [`Pipeline::open`] found and did.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The checkpoint resumed from: last reading sequence it covers.
    pub checkpoint_through: u64,
    /// Checkpoint files that did not verify, and why.
    pub bad_checkpoints: Vec<(PathBuf, String)>,
    /// Batches re-processed from the journal.
    pub replayed_batches: u64,
    /// Of those, batches whose messages were already in the outbox.
    pub suppressed_batches: u64,
    /// Commands of re-processed batches that were not delivered before,
    /// for the actuator sinks.
    pub commands: Vec<(String, Command)>,
    /// What opening the journal found.
    pub journal: Recovery,
    /// What opening the outbox found.
    pub outbox: Recovery,
}

/// The pipeline; see the module docs.
#[derive(Debug)]
pub struct Pipeline<P> {
    policies: P,
    journal: Journal,
    outbox: SharedOutbox,
    dir: PathBuf,
    config: PipelineConfig,
    processed_through: u64,
    since_checkpoint: u32,
    /// The `through` of each checkpoint slot, to trim the journal only
    /// below the older one.
    slots: [u64; 2],
    next_slot: usize,
}

/// A decoded checkpoint: the last reading sequence it covers and each
/// policy's state.
type Checkpoint = (u64, Vec<(String, State)>);

const CHECKPOINT_MAGIC: &[u8; 8] = b"MOLTCKP1";

fn checkpoint_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("checkpoint.{slot}"))
}

fn encode_checkpoint(through: u64, states: &[(String, State)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&through.to_le_bytes());
    body.extend_from_slice(&(states.len() as u32).to_le_bytes());
    for (name, state) in states {
        body.extend_from_slice(&(name.len() as u32).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(state.bytes().len() as u32).to_le_bytes());
        body.extend_from_slice(state.bytes());
    }
    let mut bytes = CHECKPOINT_MAGIC.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

fn decode_checkpoint(bytes: &[u8], state_bytes_max: usize) -> Result<Checkpoint, String> {
    let rest = bytes
        .strip_prefix(CHECKPOINT_MAGIC.as_slice())
        .ok_or("not a checkpoint (bad magic)")?;
    let (crc, body) = rest.split_at_checked(4).ok_or("cut short")?;
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(crc_bytes) {
        return Err("checksum mismatch (truncated or bit flip)".into());
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = body.get(at..at + n).ok_or("cut short")?;
        at += n;
        Ok(slice)
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(take(8)?);
    let through = u64::from_le_bytes(word);
    let mut half = [0u8; 4];
    half.copy_from_slice(take(4)?);
    let count = u32::from_le_bytes(half);
    let mut states = Vec::new();
    for _ in 0..count {
        half.copy_from_slice(take(4)?);
        let name = String::from_utf8(take(u32::from_le_bytes(half) as usize)?.to_vec())
            .map_err(|_| "policy name is not UTF-8")?;
        half.copy_from_slice(take(4)?);
        let state = State::from_guest(take(u32::from_le_bytes(half) as usize)?.to_vec(), state_bytes_max)
            .map_err(|error| format!("state of {name}: {error}"))?;
        states.push((name, state));
    }
    Ok((through, states))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl<P: Policies> Pipeline<P> {
    /// Opens the pipeline's state under `dir` (`journal/`, `outbox/`,
    /// `checkpoint.0`, `checkpoint.1`), resumes `policies` from the newest
    /// checkpoint that verifies and re-processes what came after it.
    pub fn open(dir: &Path, config: PipelineConfig, mut policies: P) -> Result<(Pipeline<P>, Resumed), PipelineError> {
        fs::create_dir_all(dir).map_err(|source| PipelineError::Checkpoint {
            path: dir.to_owned(),
            source,
        })?;
        let (journal, journal_recovery) = Journal::open(&dir.join("journal"), config.journal, SyncPolicy::EveryBatch)?;
        let (outbox, outbox_recovery) =
            Outbox::open(&dir.join("outbox"), config.outbox, config.outbox_sync, config.overflow)?;
        let mut resumed = Resumed {
            journal: journal_recovery,
            outbox: outbox_recovery,
            ..Resumed::default()
        };
        let mut slots = [0u64; 2];
        let mut best: Option<(usize, Checkpoint)> = None;
        for (slot, through_slot) in slots.iter_mut().enumerate() {
            let path = checkpoint_path(dir, slot);
            let mut bytes = Vec::new();
            match File::open(&path) {
                Ok(file) => {
                    if let Err(error) = file.take(config.checkpoint_bytes_max).read_to_end(&mut bytes) {
                        resumed.bad_checkpoints.push((path, error.to_string()));
                        continue;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    resumed.bad_checkpoints.push((path, error.to_string()));
                    continue;
                }
            }
            match decode_checkpoint(&bytes, config.checkpoint_bytes_max as usize) {
                Ok((through, states)) => {
                    *through_slot = through;
                    if best.as_ref().is_none_or(|(_, (best, _))| through > *best) {
                        best = Some((slot, (through, states)));
                    }
                }
                Err(why) => resumed.bad_checkpoints.push((path, why)),
            }
        }
        let mut next_slot = 0;
        let mut processed_through = 0;
        if let Some((slot, (through, states))) = best {
            for (name, state) in &states {
                policies.resume(name, state).map_err(PipelineError::Policy)?;
            }
            processed_through = through;
            next_slot = 1 - slot;
            resumed.checkpoint_through = through;
        }
        let mut pipeline = Pipeline {
            policies,
            journal,
            outbox: std::sync::Arc::new(std::sync::Mutex::new(outbox)),
            dir: dir.to_owned(),
            config,
            processed_through,
            since_checkpoint: 0,
            slots,
            next_slot,
        };
        for batch in pipeline.journal.batches_after(processed_through)? {
            let last = batch.last().map_or(0, |reading| reading.sequence);
            let suppress = last <= outbox::lock(&pipeline.outbox).origin();
            resumed.replayed_batches += 1;
            resumed.suppressed_batches += u64::from(suppress);
            let accepted = pipeline.run(&batch, suppress)?;
            resumed.commands.extend(accepted.commands);
        }
        if resumed.replayed_batches > 0 {
            outbox::lock(&pipeline.outbox).sync()?;
            pipeline.checkpoint()?;
        }
        Ok((pipeline, resumed))
    }

    /// The policies.
    pub fn policies(&mut self) -> &mut P {
        &mut self.policies
    }

    /// The outbox, locked.
    pub fn outbox(&mut self) -> std::sync::MutexGuard<'_, Outbox> {
        outbox::lock(&self.outbox)
    }

    /// The outbox, to share with the fleet link: it reads and acknowledges
    /// while the pipeline appends, each under the lock.
    pub fn shared_outbox(&self) -> SharedOutbox {
        self.outbox.clone()
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The last reading sequence processed.
    pub fn processed_through(&self) -> u64 {
        self.processed_through
    }

    /// Accepts one batch of `(sensor, timestamp_ms, value)`; see the module
    /// docs. Once this returns `Ok`, the readings are durable and the source
    /// may be acknowledged.
    pub fn accept(&mut self, values: &[(u32, u64, f64)]) -> Result<Accepted, PipelineError> {
        self.accept_from(values, None)
    }

    /// [`accept`](Pipeline::accept), journaling `cursor`, the source's
    /// position after these readings, in the same record.
    pub fn accept_from(&mut self, values: &[(u32, u64, f64)], cursor: Option<u64>) -> Result<Accepted, PipelineError> {
        if values.len() > self.config.batch_readings_max {
            return Err(PipelineError::BatchTooLarge {
                readings: values.len(),
                limit: self.config.batch_readings_max,
            });
        }
        if self.config.overflow == OverflowPolicy::RefuseReadings {
            let outbox = outbox::lock(&self.outbox);
            if !outbox.fits(self.config.outbox.record_bytes_max as usize) {
                return Err(PipelineError::OutboxFull {
                    held: outbox.bytes(),
                    limit: self.config.outbox.bytes_max,
                });
            }
        }
        let readings = self.journal.append(values, cursor)?;
        if readings.is_empty() {
            return Ok(Accepted::default());
        }
        let mut accepted = self.run(&readings, false)?;
        outbox::lock(&self.outbox).sync()?;
        accepted.readings = readings
            .first()
            .zip(readings.last())
            .map(|(a, b)| (a.sequence, b.sequence));
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.config.checkpoint_interval_batches.max(1) {
            self.checkpoint()?;
        }
        Ok(accepted)
    }

    fn run(&mut self, batch: &[Reading], suppress: bool) -> Result<Accepted, PipelineError> {
        let outputs = self.policies.process(batch).map_err(PipelineError::Policy)?;
        self.processed_through = batch.last().map_or(self.processed_through, |reading| reading.sequence);
        let mut accepted = Accepted::default();
        if suppress {
            return Ok(accepted);
        }
        let origin = self.processed_through;
        let limits = &self.config.protocol;
        // A message the protocol refuses (a metric name too long, say) is
        // counted and left out, and spends no sequence number: refusing the
        // batch would refuse it again after every restart.
        let mut out = Encoded {
            messages: Vec::new(),
            next: outbox::lock(&self.outbox).next_seq(),
            refused: 0,
        };
        for (served_by, actions) in outputs {
            let mut telemetry = TelemetryBuilder::new(served_by.clone());
            let mut alerts = Vec::new();
            for action in actions {
                match action {
                    Action::Telemetry(point) => {
                        if telemetry.len() >= limits.points_per_message_max
                            || telemetry.metric_count() >= limits.metrics_per_message_max
                        {
                            let done = std::mem::replace(&mut telemetry, TelemetryBuilder::new(served_by.clone()));
                            let encoded = molt_protocol::encode(&done.finish(out.next), limits);
                            out.push(Kind::Telemetry, encoded);
                        }
                        telemetry.push(point.sensor, point.timestamp_ms, &point.metric, point.value);
                    }
                    Action::Alert(alert) => alerts.push(Alert {
                        sensor: alert.sensor,
                        t: alert.timestamp_ms,
                        severity: match alert.severity {
                            molt_wasm::Severity::Info => Severity::Info,
                            molt_wasm::Severity::Warning => Severity::Warning,
                            molt_wasm::Severity::Critical => Severity::Critical,
                        },
                        message: alert.message,
                    }),
                    Action::Command(command) => accepted.commands.push((served_by.clone(), command)),
                    Action::Log(line) => accepted.logs.push((served_by.clone(), line.message)),
                }
            }
            if !telemetry.is_empty() {
                let encoded = molt_protocol::encode(&telemetry.finish(out.next), limits);
                out.push(Kind::Telemetry, encoded);
            }
            for chunk in alerts.chunks(limits.alerts_per_message_max.max(1)) {
                let message = Alerts {
                    v: molt_protocol::PROTOCOL_VERSION,
                    seq: out.next,
                    policy: served_by.clone(),
                    alerts: chunk.to_vec(),
                };
                out.push(Kind::Alerts, molt_protocol::encode(&message, limits));
            }
        }
        accepted.refused_messages = out.refused;
        accepted.uplink = outbox::lock(&self.outbox).append_batch(origin, &out.messages)?;
        Ok(accepted)
    }

    /// Writes a checkpoint now and trims the journal below the older one.
    pub fn checkpoint(&mut self) -> Result<(), PipelineError> {
        // Every message of a batch the checkpoint covers must be durable
        // first, whatever the outbox's sync policy: re-processing after the
        // checkpoint would never give them again.
        outbox::lock(&self.outbox).sync_now()?;
        let states = self.policies.snapshots().map_err(PipelineError::Policy)?;
        let bytes = encode_checkpoint(self.processed_through, &states);
        let path = checkpoint_path(&self.dir, self.next_slot);
        let tmp = self.dir.join("checkpoint.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        };
        write().map_err(|source| PipelineError::Checkpoint {
            path: path.clone(),
            source,
        })?;
        self.slots[self.next_slot] = self.processed_through;
        self.next_slot = 1 - self.next_slot;
        self.since_checkpoint = 0;
        let older = self.slots[0].min(self.slots[1]);
        self.journal.trim_through(older)?;
        Ok(())
    }
}

/// A batch's messages as they are encoded, with consecutive sequence numbers.
struct Encoded {
    messages: Vec<(Kind, Vec<u8>)>,
    next: u64,
    refused: u64,
}

impl Encoded {
    fn push(&mut self, kind: Kind, encoded: Result<Vec<u8>, molt_protocol::EncodeError>) {
        match encoded {
            Ok(payload) => {
                self.messages.push((kind, payload));
                self.next += 1;
            }
            Err(_) => self.refused += 1,
        }
    }
}
