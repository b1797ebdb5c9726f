//! What the agent tells the fleet about itself: its reported state
//! (`Reported`), health reports (`Health`) and events (`Event`).
//!
//! These messages go into the outbox like telemetry and alerts, and take
//! their sequence numbers from it. The server acknowledges a device with one
//! cumulative `stored_through` over a gap-free prefix of its sequence
//! numbers (docs/protocol.md), so every uplink message must come from one
//! sequence space; the outbox is that space, and it already makes a message
//! durable before it is sent, resends it until the store acknowledges it,
//! and never hands a sequence number out twice. A second, in-memory path
//! for "small" messages would need a second sequence space the server does
//! not have, or would leave holes in the outbox's that stall every
//! acknowledgement after them.
//!
//! Everything here runs on the daemon's main loop, the only writer of the
//! outbox besides the pipeline, so a status message can never slip between
//! the pipeline's room check and its append (`refuse-readings` would then
//! fail a batch it had accepted).
//!
//! - **Reported** after the agent starts, after every (re)connect of the
//!   link (the server compares it with the desired state), whenever a
//!   policy version is swapped, committed or reverted, and when a new
//!   desired state arrives.
//! - **Health** when the agent starts, every `health.interval_ms`, after
//!   every swap, commit or revert, and once more when the agent stops by
//!   itself.
//! - **Events** for what the daemon sees: `started`, `storage_fault` (a
//!   checkpoint that did not verify, corrupt log segments), `trap`,
//!   `policy_error`, `revert`, `swap`, `commit` and `outbox_overflow`, at
//!   most `health.events_per_minute_max` a minute; the rest are counted
//!   (`events_suppressed`) and the next event says how many.
//!
//! A message that does not fit in the outbox waits until it does: the outbox
//! is never made to refuse readings or drop telemetry for a status message.
//! Without a `[server]` section nothing is appended (there is nobody to tell),
//! but the counters still run for `/metrics`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molt_protocol::{
    Event, EventKind, Health, Kind, Limits, PROTOCOL_VERSION, PolicyState, Reported, UpdatePhase, UpdateStatus,
};
use molt_wasm::{BatchOutcome, CallError, Failure, SwapEvent};
use serde::{Deserialize, Serialize};

use crate::link::LinkProbe;
use crate::outbox::{self, Outbox, OverflowPolicy, SharedOutbox};
use crate::pipeline::Resumed;

/// The file in the state directory that counts agent starts and the
/// outbox's dropped messages across restarts.
pub const COUNTERS_FILE: &str = "counters.json";

/// The largest `counters.json` (or `acked.json`) read back; a larger one is
/// not ours and is ignored.
pub const STATE_FILE_BYTES_MAX: u64 = 4096;

/// The `[health]` section: health reports and events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Milliseconds between two health reports.
    pub interval_ms: u64,
    /// Events sent per minute, at most (a burst of as many); more are
    /// counted and the next event sent says how many.
    pub events_per_minute_max: u32,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            interval_ms: 60_000,
            events_per_minute_max: 60,
        }
    }
}

impl HealthConfig {
    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        // Faster than a second would make health reports most of the uplink.
        if self.interval_ms < 1000 {
            return Err(format!(
                "health.interval_ms ({}) must be at least 1000",
                self.interval_ms
            ));
        }
        if self.events_per_minute_max == 0 {
            return Err("health.events_per_minute_max must be at least 1".into());
        }
        Ok(())
    }
}

/// What `counters.json` keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersRecord {
    /// Agent process starts since the state directory was made.
    pub starts: u64,
    /// Messages the outbox's overflow policy dropped, up to the last write.
    pub outbox_dropped: u64,
}

/// Reads `counters.json`; `None` if there is none or it is not ours.
pub fn read_counters(state_dir: &Path) -> Result<Option<CountersRecord>, String> {
    let path = state_dir.join(COUNTERS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = crate::identity::read_bounded(&path, STATE_FILE_BYTES_MAX, "STATE_FILE_BYTES_MAX")
        .map_err(|error| error.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// A log-linear histogram of batch latencies in microseconds: exact below
/// 16 µs, then eight buckets per power of two (at most 12.5 % too high),
/// in a fixed 4 KiB however many batches a period has.
#[derive(Debug, Clone)]
struct Latency {
    counts: Vec<u64>,
    total: u64,
}

const LATENCY_BUCKETS: usize = 16 + 60 * 8;

fn latency_bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros() as usize;
    16 + (exponent - 4) * 8 + ((us >> (exponent - 3)) & 7) as usize
}

fn latency_upper(bucket: usize) -> u64 {
    if bucket < 16 {
        return bucket as u64;
    }
    let exponent = (bucket - 16) / 8 + 4;
    let mantissa = ((bucket - 16) % 8) as u64;
    let width = 1u64 << (exponent - 3);
    ((8 + mantissa) * width).saturating_add(width - 1)
}

impl Latency {
    fn new() -> Latency {
        Latency {
            counts: vec![0; LATENCY_BUCKETS],
            total: 0,
        }
    }

    fn record(&mut self, us: u64) {
        if let Some(count) = self.counts.get_mut(latency_bucket(us)) {
            *count += 1;
            self.total += 1;
        }
    }

    /// The 99th percentile (the upper bound of its bucket); 0 with no
    /// samples.
    fn p99(&self) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = (self.total * 99).div_ceil(100);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return latency_upper(bucket);
            }
        }
        0
    }
}

/// The agent's counters since its process started, shared by the main loop
/// (which counts), the `/metrics` endpoint (which reads) and the health
/// reports.
#[derive(Debug)]
pub struct Counters {
    boot_ms: u64,
    starts: u64,
    dropped_before: u64,
    readings: AtomicU64,
    batches: AtomicU64,
    traps: AtomicU64,
    reverts: AtomicU64,
    policy_errors: AtomicU64,
    batch_p99_us: AtomicU64,
    events: AtomicU64,
    events_suppressed: AtomicU64,
    status_messages: AtomicU64,
    /// When the oldest message the store has not acknowledged was appended,
    /// ms since the epoch; 0 with none.
    oldest_unacked_ms: AtomicU64,
    latency: Mutex<Latency>,
}

/// The counters' values at one moment, as a health report and `/metrics`
/// both show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// When the agent process started, ms since the epoch.
    pub boot_ms: u64,
    /// Agent process starts since the state directory was made.
    pub starts: u64,
    /// Readings accepted since boot.
    pub readings: u64,
    /// Batches since boot.
    pub batches: u64,
    /// Policy traps since boot.
    pub traps: u64,
    /// Policy reverts since boot.
    pub reverts: u64,
    /// Policy errors since boot.
    pub policy_errors: u64,
    /// 99th percentile batch latency over the last health period, µs.
    pub batch_p99_us: u64,
    /// Messages the store has not acknowledged.
    pub outbox_messages: u64,
    /// Bytes the outbox holds on disk.
    pub outbox_bytes: u64,
    /// Age of the oldest unacknowledged message, ms.
    pub outbox_oldest_ms: u64,
    /// Messages the overflow policy dropped, across restarts.
    pub outbox_dropped: u64,
    /// Resident memory, bytes (0 where `/proc` is not there).
    pub rss_bytes: u64,
    /// Events sent since boot.
    pub events: u64,
    /// Events over `health.events_per_minute_max`, not sent, since boot.
    pub events_suppressed: u64,
    /// Events, reported states and health reports appended since boot.
    pub status_messages: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Resident memory of this process from `/proc/self/status` (`VmRSS`, in
/// kB), which needs no page size; 0 where there is no `/proc`.
pub fn rss_bytes() -> u64 {
    use std::io::Read;
    let Ok(file) = std::fs::File::open("/proc/self/status") else {
        return 0;
    };
    let mut text = String::new();
    // The file is about 1.5 KiB; 16 KiB bounds a strange kernel's.
    if file.take(16 << 10).read_to_string(&mut text).is_err() {
        return 0;
    }
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Counters {
    /// Counters for a process started at `boot_ms`, the `starts`-th start,
    /// with `dropped_before` messages dropped by earlier processes.
    pub fn new(boot_ms: u64, starts: u64, dropped_before: u64) -> Counters {
        Counters {
            boot_ms,
            starts,
            dropped_before,
            readings: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            reverts: AtomicU64::new(0),
            policy_errors: AtomicU64::new(0),
            batch_p99_us: AtomicU64::new(0),
            events: AtomicU64::new(0),
            events_suppressed: AtomicU64::new(0),
            status_messages: AtomicU64::new(0),
            oldest_unacked_ms: AtomicU64::new(0),
            latency: Mutex::new(Latency::new()),
        }
    }

    /// Counts this start in `counters.json` (written atomically and
    /// synced: a start is counted once, whatever comes after it). A file
    /// that cannot be read is reported and counting starts again from it.
    pub fn start(state_dir: &Path) -> Counters {
        let before = match read_counters(state_dir) {
            Ok(record) => record.unwrap_or_default(),
            Err(error) => {
                eprintln!("molt-agent: {error}; agent starts are counted from 0 again");
                CountersRecord::default()
            }
        };
        let record = CountersRecord {
            starts: before.starts + 1,
            outbox_dropped: before.outbox_dropped,
        };
        write_counters(state_dir, &record);
        Counters::new(now_ms(), record.starts, record.outbox_dropped)
    }

    /// Agent process starts, this one included.
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// Counts one accepted batch of `readings` that took `elapsed`.
    pub fn batch(&self, readings: usize, elapsed: Duration) {
        self.readings.fetch_add(readings as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut latency) = self.latency.lock() {
            latency.record(us);
        }
    }

    fn observe(&self, observed: &Observed) {
        self.traps.fetch_add(observed.traps, Ordering::Relaxed);
        self.reverts.fetch_add(observed.reverts, Ordering::Relaxed);
        self.policy_errors.fetch_add(observed.policy_errors, Ordering::Relaxed);
    }

    /// Ends a latency period: its 99th percentile becomes `batch_p99_us`.
    fn end_period(&self) {
        if let Ok(mut latency) = self.latency.lock() {
            self.batch_p99_us.store(latency.p99(), Ordering::Relaxed);
            *latency = Latency::new();
        }
    }

    /// The values now, with the outbox's from `outbox` (locked by the
    /// caller, so a health report's values and its sequence number agree).
    pub fn snapshot(&self, outbox: &Outbox) -> Snapshot {
        let depth = outbox.depth();
        let oldest = self.oldest_unacked_ms.load(Ordering::Relaxed);
        Snapshot {
            boot_ms: self.boot_ms,
            starts: self.starts,
            readings: self.readings.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            reverts: self.reverts.load(Ordering::Relaxed),
            policy_errors: self.policy_errors.load(Ordering::Relaxed),
            batch_p99_us: self.batch_p99_us.load(Ordering::Relaxed),
            outbox_messages: depth,
            outbox_bytes: outbox.bytes(),
            outbox_oldest_ms: if depth > 0 && oldest > 0 {
                now_ms().saturating_sub(oldest)
            } else {
                0
            },
            outbox_dropped: self.dropped_before + outbox.dropped_messages(),
            rss_bytes: rss_bytes(),
            events: self.events.load(Ordering::Relaxed),
            events_suppressed: self.events_suppressed.load(Ordering::Relaxed),
            status_messages: self.status_messages.load(Ordering::Relaxed),
        }
    }
}

fn write_counters(state_dir: &Path, record: &CountersRecord) {
    let path = state_dir.join(COUNTERS_FILE);
    let written = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::identity::write_atomic(&path, &bytes));
    if let Err(error) = written {
        eprintln!("molt-agent: writing {}: {error}", path.display());
    }
}

/// An event before it has a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    /// When, ms since the epoch.
    pub t: u64,
    /// What.
    pub kind: EventKind,
    /// The policy version it concerns.
    pub policy: Option<String>,
    /// What happened, in words.
    pub detail: String,
}

/// Events a policy set kept before the main loop took them; more are
/// counted in [`Observed::events_lost`].
const OBSERVED_EVENTS_MAX: usize = 256;

/// What the policies did in the batches since the main loop last asked:
/// counters and events, taken from each [`BatchOutcome`].
#[derive(Debug, Default)]
pub struct Observed {
    /// Traps (and stack overflows).
    pub traps: u64,
    /// Reverts to another version.
    pub reverts: u64,
    /// Errors the policy returned, fuel or memory exhausted, deadlines,
    /// instances that could not be recreated.
    pub policy_errors: u64,
    /// A version was swapped in, committed or reverted: the reported state
    /// changed.
    pub state_changed: bool,
    /// The events, oldest first.
    pub events: Vec<EventDraft>,
    /// Events beyond `OBSERVED_EVENTS_MAX`, counted only.
    pub events_lost: u64,
}

/// Traps and stack overflows are the guest's own crash; fuel, memory,
/// deadlines and the rest are limits it ran into, counted as policy errors.
fn failure_kind(failure: &Failure) -> Option<EventKind> {
    match failure {
        Failure::Call(CallError::Trap { .. } | CallError::StackOverflow { .. }) => Some(EventKind::Trap),
        Failure::TooManyFailures { .. } => None,
        _ => Some(EventKind::PolicyError),
    }
}

impl Observed {
    fn event(&mut self, kind: EventKind, policy: &str, detail: String) {
        if self.events.len() >= OBSERVED_EVENTS_MAX {
            self.events_lost += 1;
            return;
        }
        self.events.push(EventDraft {
            t: now_ms(),
            kind,
            policy: Some(policy.to_owned()),
            detail,
        });
    }

    /// Counts a failure as a trap or a policy error; its event kind.
    fn count(&mut self, failure: &Failure) -> Option<EventKind> {
        let kind = failure_kind(failure)?;
        if kind == EventKind::Trap {
            self.traps += 1;
        } else {
            self.policy_errors += 1;
        }
        Some(kind)
    }

    fn failure(&mut self, policy: &str, failure: &Failure, what: String) {
        if let Some(kind) = self.count(failure) {
            self.event(kind, policy, format!("{what}: {failure}"));
        }
    }

    /// Takes counters and events from one policy's batch outcome.
    pub fn record(&mut self, outcome: &BatchOutcome) {
        for event in &outcome.events {
            match event {
                SwapEvent::Swapped { from, to, latency } => {
                    self.state_changed = true;
                    self.event(
                        EventKind::Swap,
                        to,
                        format!("{to} took over from {from} on trial in {} µs", latency.as_micros()),
                    );
                }
                SwapEvent::SwapRefused { version, error } => {
                    self.failure(version, error, format!("{version} could not take over"));
                }
                SwapEvent::Committed { version } => {
                    self.state_changed = true;
                    self.event(
                        EventKind::Commit,
                        version,
                        format!("{version} committed after its trial"),
                    );
                }
                SwapEvent::Reverted { from, to, error } => {
                    self.state_changed = true;
                    self.reverts += 1;
                    // One event says both what failed and what was done.
                    self.count(error);
                    self.event(EventKind::Revert, from, format!("{from} reverted to {to}: {error}"));
                }
                SwapEvent::Recovered { version, error } => {
                    self.failure(
                        version,
                        error,
                        format!("{version} failed and was recreated from its checkpoint"),
                    );
                }
                _ => {}
            }
        }
        if let Some(error) = &outcome.policy_error {
            self.policy_errors += 1;
            self.event(
                EventKind::PolicyError,
                &outcome.served_by,
                format!("{} returned an error: {error:?}", outcome.served_by),
            );
        }
        if let Some((batch, failure)) = &outcome.unprocessed {
            let range = batch
                .first()
                .zip(batch.last())
                .map(|(a, b)| format!(" (readings {}..={})", a.sequence, b.sequence))
                .unwrap_or_default();
            self.failure(
                &outcome.served_by,
                failure,
                format!("no version could process a batch of {} readings{range}", batch.len()),
            );
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, so the
/// protocol's `text_len_max` never refuses an event.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max.saturating_sub(3);
        while at > 0 && !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        if max >= 3 {
            text.push_str("...");
        }
    }
    text
}

/// Entries kept to date unacknowledged messages; past it, new messages are
/// dated with the newest entry (their age is over-, never under-stated).
const UNACKED_ENTRIES_MAX: usize = 1024;

/// Appends the agent's status messages to the outbox; see the module docs.
#[derive(Debug)]
pub struct Reporter {
    config: HealthConfig,
    limits: Limits,
    counters: Arc<Counters>,
    outbox: SharedOutbox,
    link: Option<LinkProbe>,
    hardware_class: String,
    state_dir: PathBuf,
    next_health: Instant,
    health_due: bool,
    reported_due: bool,
    seen_connects: u64,
    seen_desired: u64,
    pending: VecDeque<EventDraft>,
    tokens: f64,
    tokens_at: Instant,
    suppressed: u64,
    /// In an outbox-full episode: from the first batch refused or dropped
    /// to the next one that got in whole. One event per episode.
    overflow: bool,
    seen_dropped: u64,
    persisted_dropped: u64,
    /// (newest sequence, appended at ms) of messages not yet acknowledged.
    unacked: VecDeque<(u64, u64)>,
}

impl Reporter {
    /// A reporter appending to `outbox` when there is a `link`.
    pub fn new(
        config: &HealthConfig,
        hardware_class: &str,
        limits: Limits,
        counters: Arc<Counters>,
        outbox: SharedOutbox,
        link: Option<LinkProbe>,
        state_dir: &Path,
    ) -> Reporter {
        let now = Instant::now();
        let mut unacked = VecDeque::new();
        let (dropped, newest, depth) = {
            let outbox = outbox::lock(&outbox);
            (
                outbox.dropped_messages(),
                outbox.next_seq().saturating_sub(1),
                outbox.depth(),
            )
        };
        // Messages from before this start are dated from it: the outbox
        // does not keep when a message was appended.
        if depth > 0 {
            unacked.push_back((newest, counters.boot_ms));
        }
        let seen_connects = link.as_ref().map_or(0, LinkProbe::connects);
        let seen_desired = link.as_ref().map_or(0, LinkProbe::desired_generation);
        Reporter {
            config: config.clone(),
            limits,
            persisted_dropped: counters.dropped_before,
            counters,
            outbox,
            link,
            hardware_class: hardware_class.to_owned(),
            state_dir: state_dir.to_owned(),
            next_health: now + Duration::from_millis(config.interval_ms),
            health_due: false,
            reported_due: false,
            seen_connects,
            seen_desired,
            pending: VecDeque::new(),
            tokens: f64::from(config.events_per_minute_max),
            tokens_at: now,
            suppressed: 0,
            overflow: false,
            seen_dropped: dropped,
            unacked,
        }
    }

    /// The agent started: a `started` event, a `storage_fault` for each
    /// checkpoint that did not verify and each corrupt log segment, and a
    /// reported state and a health report.
    pub fn started(&mut self, resumed: &Resumed) {
        let t = now_ms();
        let mut detail = format!(
            "molt-agent {} started (start {}); resumed from the checkpoint through reading {}, re-processed {} batches ({} already in the outbox)",
            env!("CARGO_PKG_VERSION"),
            self.counters.starts,
            resumed.checkpoint_through,
            resumed.replayed_batches,
            resumed.suppressed_batches
        );
        for (name, recovery) in [("journal", &resumed.journal), ("outbox", &resumed.outbox)] {
            if recovery.torn_tail_bytes > 0 {
                detail.push_str(&format!(
                    "; {name}: an interrupted append of {} bytes was cut",
                    recovery.torn_tail_bytes
                ));
            }
        }
        self.queue(EventDraft {
            t,
            kind: EventKind::Started,
            policy: None,
            detail,
        });
        for (path, why) in &resumed.bad_checkpoints {
            self.queue(EventDraft {
                t,
                kind: EventKind::StorageFault,
                policy: None,
                detail: format!("checkpoint {} not used: {why}", path.display()),
            });
        }
        for (name, recovery) in [("journal", &resumed.journal), ("outbox", &resumed.outbox)] {
            for (path, offset, bytes) in &recovery.corrupt {
                self.queue(EventDraft {
                    t,
                    kind: EventKind::StorageFault,
                    policy: None,
                    detail: format!(
                        "{name} {} corrupt at byte {offset}: {bytes} bytes not trusted; the records before were kept",
                        path.display()
                    ),
                });
            }
        }
        self.reported_due = true;
        self.health_due = true;
    }

    /// One batch got in: `uplink` is the sequence numbers it spent, and
    /// `observed` what the policies did.
    pub fn batch(&mut self, readings: usize, elapsed: Duration, uplink: Option<(u64, u64)>, observed: Observed) {
        self.counters.batch(readings, elapsed);
        self.policies(observed);
        if let Some((_, last)) = uplink {
            self.note_appended(last);
        }
        let dropped = outbox::lock(&self.outbox).dropped_messages();
        if dropped > self.seen_dropped {
            self.seen_dropped = dropped;
            self.overflow_began(OverflowPolicy::DropNewMessages);
        } else {
            // A batch got in whole: the episode is over.
            self.overflow = false;
        }
    }

    /// What the policies did outside a batch (re-processing at start).
    pub fn policies(&mut self, observed: Observed) {
        self.counters.observe(&observed);
        if observed.state_changed {
            self.reported_due = true;
            self.health_due = true;
        }
        for event in observed.events {
            self.queue(event);
        }
        if observed.events_lost > 0 {
            self.suppress(observed.events_lost);
        }
    }

    /// The pipeline refused a batch: the outbox is full under
    /// `refuse-readings`.
    pub fn outbox_full(&mut self) {
        self.overflow_began(OverflowPolicy::RefuseReadings);
    }

    fn overflow_began(&mut self, policy: OverflowPolicy) {
        if self.overflow {
            return;
        }
        self.overflow = true;
        let (held, what) = {
            let outbox = outbox::lock(&self.outbox);
            (
                outbox.bytes(),
                match policy {
                    OverflowPolicy::RefuseReadings => {
                        "overflow=refuse-readings: readings are refused until the server acknowledges".to_owned()
                    }
                    OverflowPolicy::DropNewMessages => format!(
                        "overflow=drop-new-messages: new messages are dropped ({} so far since the start)",
                        outbox.dropped_messages()
                    ),
                },
            )
        };
        self.queue(EventDraft {
            t: now_ms(),
            kind: EventKind::OutboxOverflow,
            policy: None,
            detail: format!("the outbox is full ({held} bytes held, outbox.bytes_max); {what}"),
        });
    }

    fn note_appended(&mut self, last: u64) {
        let now = now_ms();
        if self.unacked.len() >= UNACKED_ENTRIES_MAX {
            if let Some(newest) = self.unacked.back_mut() {
                newest.0 = last;
            }
        } else {
            self.unacked.push_back((last, now));
        }
    }

    fn queue(&mut self, event: EventDraft) {
        if self.link.is_none() {
            // Offline: nobody to tell.
            return;
        }
        // Events wait only while the outbox has no room or the rate is
        // spent; a minute's worth is plenty to wait with.
        if self.pending.len() >= self.config.events_per_minute_max as usize {
            self.suppress(1);
            return;
        }
        self.pending.push_back(event);
    }

    fn suppress(&mut self, events: u64) {
        self.suppressed += events;
        self.counters.events_suppressed.fetch_add(events, Ordering::Relaxed);
    }

    /// Status messages appended since the start.
    pub fn appended(&self) -> u64 {
        self.counters.status_messages.load(Ordering::Relaxed)
    }

    /// Called from the main loop between batches: appends whatever is due.
    /// `policies` gives the policy versions for a reported state. True if
    /// anything was appended (the link should be woken).
    pub fn tick(&mut self, policies: impl FnOnce() -> Vec<PolicyState>) -> bool {
        self.age_unacked();
        if Instant::now() >= self.next_health {
            self.next_health = Instant::now() + Duration::from_millis(self.config.interval_ms);
            self.health_due = true;
            self.persist_dropped();
        }
        let Some(link) = self.link.clone() else {
            if self.health_due {
                self.counters.end_period();
                self.health_due = false;
            }
            self.reported_due = false;
            return false;
        };
        let connects = link.connects();
        if connects != self.seen_connects {
            // After every (re)connect: the server compares it with the
            // desired state.
            self.seen_connects = connects;
            self.reported_due = true;
        }
        let desired = link.desired_generation();
        if desired != self.seen_desired {
            self.seen_desired = desired;
            self.reported_due = true;
        }
        let limits = self.limits.clone();
        let mut appended = false;
        while let Some(event) = self.pending.front().cloned() {
            self.refill_tokens();
            if self.tokens < 1.0 {
                break;
            }
            let mut detail = event.detail;
            if self.suppressed > 0 {
                detail.push_str(&format!(
                    " ({} events not sent before this one: health.events_per_minute_max={})",
                    self.suppressed, self.config.events_per_minute_max
                ));
            }
            let mut message = Event {
                v: PROTOCOL_VERSION,
                seq: 0,
                t: event.t,
                kind: event.kind,
                release: None,
                policy: event.policy,
                detail: cut(detail, limits.text_len_max),
            };
            let result = append(&self.outbox, Kind::Events, |seq, _| {
                message.seq = seq;
                molt_protocol::encode(&message, &limits)
            });
            match self.appended_one(result) {
                Appended::Yes(_) => {
                    self.tokens -= 1.0;
                    self.pending.pop_front();
                    self.suppressed = 0;
                    self.counters.events.fetch_add(1, Ordering::Relaxed);
                    appended = true;
                }
                Appended::NoRoom => return appended,
                Appended::Refused => {
                    self.pending.pop_front();
                }
            }
        }
        if self.reported_due {
            let mut states = policies();
            states.truncate(limits.policies_max);
            let mut message = Reported {
                v: PROTOCOL_VERSION,
                seq: 0,
                t: now_ms(),
                hardware_class: self.hardware_class.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                // The daemon runs local policies; joining `Device` and its
                // release sets to it is not done yet.
                release: None,
                security_counter: 0,
                policies: states,
                // Acting on a desired state is not done yet: it stays
                // pending, which is what the device can truthfully say.
                update: link.desired().map(|desired| UpdateStatus {
                    generation: desired.generation,
                    release: desired.release,
                    phase: UpdatePhase::Pending,
                    error: None,
                }),
            };
            let result = append(&self.outbox, Kind::State, |seq, _| {
                message.seq = seq;
                molt_protocol::encode(&message, &limits)
            });
            match self.appended_one(result) {
                Appended::Yes(_) => {
                    self.reported_due = false;
                    appended = true;
                }
                Appended::NoRoom => return appended,
                Appended::Refused => self.reported_due = false,
            }
        }
        if self.health_due {
            self.counters.end_period();
            let counters = self.counters.clone();
            let offline_ms = link.offline_ms();
            let result = append(&self.outbox, Kind::Health, |seq, outbox| {
                let now = counters.snapshot(outbox);
                let health = Health {
                    v: PROTOCOL_VERSION,
                    seq,
                    t: now_ms(),
                    boot: now.boot_ms,
                    restarts: now.starts,
                    readings: now.readings,
                    batches: now.batches,
                    traps: now.traps,
                    reverts: now.reverts,
                    policy_errors: now.policy_errors,
                    batch_p99_us: now.batch_p99_us,
                    outbox_messages: now.outbox_messages,
                    outbox_bytes: now.outbox_bytes,
                    outbox_oldest_ms: now.outbox_oldest_ms,
                    outbox_dropped: now.outbox_dropped,
                    rss_bytes: now.rss_bytes,
                    offline_ms,
                };
                molt_protocol::encode(&health, &limits)
            });
            match self.appended_one(result) {
                Appended::Yes(_) => {
                    self.health_due = false;
                    appended = true;
                }
                Appended::NoRoom => return appended,
                Appended::Refused => self.health_due = false,
            }
        }
        appended
    }

    fn refill_tokens(&mut self) {
        let now = Instant::now();
        let rate = f64::from(self.config.events_per_minute_max) / 60.0;
        let burst = f64::from(self.config.events_per_minute_max);
        self.tokens = (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * rate).min(burst);
        self.tokens_at = now;
    }

    fn appended_one(&mut self, result: Appended) -> Appended {
        if let Appended::Yes(seq) = result {
            self.counters.status_messages.fetch_add(1, Ordering::Relaxed);
            self.note_appended(seq);
        }
        result
    }

    /// The agent stops by itself: one last health report, so the fleet
    /// sees the final counters. True if anything was appended.
    pub fn stopping(&mut self, policies: impl FnOnce() -> Vec<PolicyState>) -> bool {
        self.health_due = true;
        self.persist_dropped();
        self.tick(policies)
    }

    /// Forgets acknowledged messages and publishes the oldest one's age.
    fn age_unacked(&mut self) {
        let stored_through = outbox::lock(&self.outbox).stored_through();
        while self.unacked.front().is_some_and(|(last, _)| *last <= stored_through) {
            self.unacked.pop_front();
        }
        let oldest = self.unacked.front().map_or(0, |(_, at)| *at);
        self.counters.oldest_unacked_ms.store(oldest, Ordering::Relaxed);
    }

    fn persist_dropped(&mut self) {
        let dropped = self.counters.dropped_before + self.seen_dropped;
        if dropped != self.persisted_dropped {
            write_counters(
                &self.state_dir,
                &CountersRecord {
                    starts: self.counters.starts,
                    outbox_dropped: dropped,
                },
            );
            self.persisted_dropped = dropped;
        }
    }
}

/// Encodes a message with the next sequence number and appends it, both
/// under the outbox's lock, so the number in the payload is the one the
/// outbox gives it.
fn append(
    outbox: &SharedOutbox,
    kind: Kind,
    encode: impl FnOnce(u64, &Outbox) -> Result<Vec<u8>, molt_protocol::EncodeError>,
) -> Appended {
    let mut outbox = outbox::lock(outbox);
    let seq = outbox.next_seq();
    let payload = match encode(seq, &outbox) {
        Ok(payload) => payload,
        Err(error) => {
            // Our own message over a protocol limit: a bug, not a reason
            // to stop; it would be refused every time.
            eprintln!("molt-agent: a {kind:?} message was not sent: {error}");
            return Appended::Refused;
        }
    };
    match outbox.append_status(kind, payload) {
        Ok(Some(seq)) => Appended::Yes(seq),
        Ok(None) => Appended::NoRoom,
        Err(error) => {
            // The log refuses further writes after a failed one; the
            // pipeline's next batch stops the agent with the error.
            eprintln!("molt-agent: appending a {kind:?} message to the outbox: {error}");
            Appended::NoRoom
        }
    }
}

/// Whether [`append`] appended.
enum Appended {
    /// With this sequence number.
    Yes(u64),
    /// No room (or the outbox failed): try again later.
    NoRoom,
    /// The protocol refused the message: never try it again.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentile_is_within_its_bucket() {
        let mut latency = Latency::new();
        for us in 1..=1000u64 {
            latency.record(us);
        }
        let p99 = latency.p99();
        assert!((990..=990 + 990 / 8 + 1).contains(&p99), "{p99}");
        for us in [0, 1, 15, 16, 17, 31, 32, 1000, 1 << 40, u64::MAX] {
            let bucket = latency_bucket(us);
            assert!(bucket < LATENCY_BUCKETS, "{us}");
            assert!(latency_upper(bucket) >= us, "{us}");
        }
        assert_eq!(Latency::new().p99(), 0);
    }

    #[test]
    fn event_details_are_cut_on_a_character_boundary() {
        let text = "é".repeat(100);
        let short = cut(text, 51);
        assert!(short.len() <= 51);
        assert!(short.ends_with("..."));
        assert_eq!(cut("short".into(), 51), "short");
    }

    #[test]
    fn a_status_message_keeps_the_newest_origin_across_a_reopen() {
        use crate::log::{LogLimits, SyncPolicy};
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Outbox::open(
                &dir.path().join("outbox"),
                LogLimits {
                    segment_bytes_max: 4096,
                    bytes_max: 1 << 20,
                    record_bytes_max: 4096,
                },
                SyncPolicy::EveryBatch,
                OverflowPolicy::RefuseReadings,
            )
            .unwrap()
            .0
        };
        let mut outbox = open();
        outbox.append_batch(42, &[(Kind::Telemetry, vec![1])]).unwrap();
        assert_eq!(outbox.append_status(Kind::Health, vec![2]).unwrap(), Some(2));
        outbox.sync_now().unwrap();
        drop(outbox);
        // Re-processing after a restart suppresses batches through the
        // newest origin: a status record must not reset it.
        let outbox = open();
        assert_eq!(outbox.origin(), 42);
        assert_eq!(outbox.next_seq(), 3);
    }

    #[test]
    fn starts_are_counted_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Counters::start(dir.path()).starts(), 1);
        assert_eq!(Counters::start(dir.path()).starts(), 2);
        // A file that is not ours counts from 0 again, never stops the agent.
        std::fs::write(dir.path().join(COUNTERS_FILE), "garbage").unwrap();
        assert_eq!(Counters::start(dir.path()).starts(), 1);
    }
}
