//! The journal, the outbox and the checkpoints under crashes, corruption
//! and a full disk, with a deterministic policy written in Rust.

use std::fs;
use std::path::Path;

use molt_protocol::{Kind, Limits, Telemetry};
use molt_wasm::{Action, Command, Reading, State};

use crate::log::{Log, LogError, LogLimits, SyncPolicy};
use crate::outbox::{Journal, Outbox, OverflowPolicy};
use crate::pipeline::{Pipeline, PipelineConfig, PipelineError, Policies};

/// Echoes every reading as telemetry (`value = sequence`) and asks for a
/// command on every tenth; its state is (readings, last sequence).
#[derive(Debug, Default)]
struct Echo {
    readings: u64,
    last: u64,
}

fn cbor_uint(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=23 => out.push(value as u8),
        24..=0xff => out.extend_from_slice(&[0x18, value as u8]),
        0x100..=0xffff => {
            out.push(0x19);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x1a);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(0x1b);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

fn cbor_read(bytes: &[u8], at: &mut usize) -> u64 {
    let head = bytes[*at];
    *at += 1;
    let width = match head {
        0..=23 => return u64::from(head),
        0x18 => 1,
        0x19 => 2,
        0x1a => 4,
        _ => 8,
    };
    let mut value = 0u64;
    for byte in &bytes[*at..*at + width] {
        value = value << 8 | u64::from(*byte);
    }
    *at += width;
    value
}

impl Policies for Echo {
    fn process(&mut self, batch: &[Reading]) -> Result<Vec<(String, Vec<Action>)>, String> {
        let mut actions = Vec::new();
        for reading in batch {
            assert!(reading.sequence > self.last, "a reading processed twice into state");
            self.readings += 1;
            self.last = reading.sequence;
            actions.push(Action::Telemetry(molt_wasm::Telemetry {
                sensor: reading.sensor,
                timestamp_ms: reading.timestamp_ms,
                metric: "echo".into(),
                value: reading.sequence as f64,
            }));
            if reading.sequence % 10 == 0 {
                actions.push(Action::Command(Command {
                    actuator: "relay".into(),
                    value: reading.sequence as f64,
                }));
            }
        }
        Ok(vec![("echo@1".into(), actions)])
    }

    fn snapshots(&mut self) -> Result<Vec<(String, State)>, String> {
        let mut bytes = vec![0x82];
        cbor_uint(&mut bytes, self.readings);
        cbor_uint(&mut bytes, self.last);
        Ok(vec![(
            "echo".into(),
            State::from_guest(bytes, 1024).map_err(|error| error.to_string())?,
        )])
    }

    fn resume(&mut self, name: &str, state: &State) -> Result<(), String> {
        assert_eq!(name, "echo");
        let bytes = state.bytes();
        let mut at = 1;
        self.readings = cbor_read(bytes, &mut at);
        self.last = cbor_read(bytes, &mut at);
        Ok(())
    }
}

fn small_config() -> PipelineConfig {
    let mut config = PipelineConfig::default();
    config.outbox.segment_bytes_max = 2048;
    config.journal.segment_bytes_max = 1024;
    config.checkpoint_interval_batches = 4;
    config
}

fn values(batch: usize, n: usize) -> Vec<(u32, u64, f64)> {
    (0..n)
        .map(|idx| {
            (
                1 + idx as u32 % 3,
                1_700_000_000_000 + (batch * 100 + idx) as u64,
                idx as f64,
            )
        })
        .collect()
}

/// Every telemetry point in the outbox, as (uplink seq, reading sequence).
fn delivered(outbox: &Outbox) -> Vec<(u64, u64)> {
    let mut points = Vec::new();
    for batch in outbox.batches().unwrap() {
        for message in batch.messages {
            assert_eq!(message.kind, Kind::Telemetry);
            let telemetry: Telemetry = molt_protocol::decode(&message.payload, &Limits::default()).unwrap();
            assert_eq!(telemetry.seq, message.seq, "the payload carries its own sequence");
            for point in telemetry.points() {
                points.push((message.seq, point.value.unwrap() as u64));
            }
        }
    }
    points
}

fn limits(segment: u64, total: u64) -> LogLimits {
    LogLimits {
        segment_bytes_max: segment,
        bytes_max: total,
        record_bytes_max: 4096,
    }
}

#[test]
fn a_torn_tail_is_cut_and_a_bit_flip_keeps_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let (mut log, _) = Log::open("journal", &path, limits(200, 1 << 20), SyncPolicy::EveryAppend).unwrap();
        for key in 1..=20u64 {
            log.append(key, key, &[key as u8; 40]).unwrap();
        }
        assert!(log.segment_count() > 3);
    }
    let mut segments: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    // A torn append at the end of the newest segment.
    let newest = segments.last().unwrap();
    let len = fs::metadata(newest).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(newest).unwrap();
    file.set_len(len - 10).unwrap();
    // A bit flip in the second record of the first segment.
    let mut bytes = fs::read(&segments[0]).unwrap();
    bytes[64 + 30] ^= 0x04;
    fs::write(&segments[0], &bytes).unwrap();

    // Records are 64 bytes, three to a segment: seven segments, the newest
    // holding keys 19 and 20.
    let (log, recovery) = Log::open("journal", &path, limits(200, 1 << 20), SyncPolicy::EveryAppend).unwrap();
    assert_eq!(recovery.torn_tail_bytes, 54, "{recovery:?}");
    assert_eq!(recovery.corrupt, [(segments[0].clone(), 64, 128)]);
    assert!(recovery.lost_data());
    let keys: Vec<u64> = log.read_after(0, u64::MAX).unwrap().iter().map(|r| r.first).collect();
    let mut expected = vec![1];
    expected.extend(4..=19);
    assert_eq!(
        keys, expected,
        "the flipped record and the rest of its segment are not trusted"
    );
    assert_eq!(
        log.newest(),
        Some(19),
        "the torn record is gone, the one before it kept"
    );
    assert_eq!(recovery.records, 17);
}

#[test]
fn the_outbox_is_trimmed_only_on_acknowledgement_and_never_reuses_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    let message = |n: u8| vec![(Kind::Events, vec![n; 100])];
    let last = {
        let (mut outbox, _) = Outbox::open(
            &path,
            limits(300, 1 << 20),
            SyncPolicy::EveryBatch,
            OverflowPolicy::RefuseReadings,
        )
        .unwrap();
        for n in 0..10 {
            outbox.append_batch(u64::from(n) + 1, &message(n)).unwrap();
        }
        outbox.sync().unwrap();
        assert_eq!(outbox.depth(), 10);
        // A PUBACK changes nothing; only the store's acknowledgement trims.
        outbox.acknowledge(10).unwrap();
        assert_eq!(outbox.depth(), 0);
        assert_eq!(
            outbox.pending(0, u64::MAX).unwrap().0.len(),
            2,
            "the newest segment stays"
        );
        outbox.next_seq() - 1
    };
    let (outbox, recovery) = Outbox::open(
        &path,
        limits(300, 1 << 20),
        SyncPolicy::EveryBatch,
        OverflowPolicy::RefuseReadings,
    )
    .unwrap();
    assert!(!recovery.lost_data());
    assert_eq!(
        outbox.next_seq(),
        last + 1,
        "sequence numbers continue after a trim and a restart"
    );
    assert_eq!(outbox.origin(), 10);
}

#[test]
fn a_full_outbox_refuses_readings_before_journaling_them_then_takes_them_after_an_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.outbox.bytes_max = 16 << 10;
    config.outbox.record_bytes_max = 2048;
    let (mut pipeline, _) = Pipeline::open(dir.path(), config, Echo::default()).unwrap();
    let mut accepted = 0;
    let error = loop {
        match pipeline.accept(&values(accepted, 20)) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 1000, "the outbox never filled");
    };
    assert!(matches!(error, PipelineError::OutboxFull { .. }), "{error}");
    assert!(error.to_string().contains("bytes_max"), "{error}");
    assert_eq!(
        pipeline.journal().next_seq(),
        accepted as u64 * 20 + 1,
        "nothing journaled"
    );
    let through = pipeline.outbox().next_seq() - 1;
    pipeline.outbox().acknowledge(through).unwrap();
    pipeline.accept(&values(accepted, 20)).unwrap();
}

#[test]
fn drop_new_messages_spends_no_sequence_on_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.outbox.bytes_max = 8 << 10;
    config.overflow = OverflowPolicy::DropNewMessages;
    let (mut pipeline, _) = Pipeline::open(dir.path(), config, Echo::default()).unwrap();
    for batch in 0..100 {
        pipeline.accept(&values(batch, 20)).unwrap();
    }
    assert!(pipeline.outbox().dropped_messages() > 0);
    let seqs: Vec<u64> = delivered(&pipeline.outbox()).iter().map(|(seq, _)| *seq).collect();
    let mut expected: Vec<u64> = seqs.clone();
    expected.dedup();
    assert_eq!(
        expected,
        (1..=expected.len() as u64).collect::<Vec<_>>(),
        "gap-free uplink sequences"
    );
}

/// Crash points: after a batch was journaled but before its messages
/// reached the outbox; after the outbox but before the checkpoint; with a
/// torn outbox tail; with the newest checkpoint flipped.
#[test]
fn restarts_at_every_step_lose_no_reading_and_deliver_no_action_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config();
    let mut commands = Vec::new();
    let mut batch = 0usize;
    let mut resumes = Vec::new();
    for round in 0..12 {
        let (mut pipeline, resumed) = Pipeline::open(dir.path(), config.clone(), Echo::default()).unwrap();
        commands.extend(resumed.commands.iter().map(|(_, command)| command.value as u64));
        resumes.push(resumed);
        for _ in 0..(3 + round % 5) {
            let accepted = pipeline.accept(&values(batch, 7)).unwrap();
            commands.extend(accepted.commands.into_iter().map(|(_, command)| command.value as u64));
            batch += 1;
        }
        drop(pipeline);
        match round % 4 {
            // Journaled, never processed: the next open processes it.
            0 => {
                let (mut journal, _) =
                    Journal::open(&dir.path().join("journal"), config.journal, SyncPolicy::EveryBatch).unwrap();
                journal.append(&values(batch, 7), None).unwrap();
                batch += 1;
            }
            // A batch journaled, and its outbox append torn.
            1 => {
                let (mut journal, _) =
                    Journal::open(&dir.path().join("journal"), config.journal, SyncPolicy::EveryBatch).unwrap();
                journal.append(&values(batch, 7), None).unwrap();
                batch += 1;
                let mut segments: Vec<_> = fs::read_dir(dir.path().join("outbox"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                segments.sort();
                let newest = segments.last().unwrap();
                let mut file = fs::OpenOptions::new().append(true).open(newest).unwrap();
                std::io::Write::write_all(&mut file, &[0x80, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
            }
            // The newest checkpoint has a bit flipped.
            2 => flip_newest_checkpoint(dir.path()),
            _ => {}
        }
    }
    let (mut pipeline, resumed) = Pipeline::open(dir.path(), config, Echo::default()).unwrap();
    commands.extend(resumed.commands.iter().map(|(_, command)| command.value as u64));
    resumes.push(resumed);
    let total = batch as u64 * 7;
    let points = delivered(&pipeline.outbox());
    let readings: Vec<u64> = points.iter().map(|(_, reading)| *reading).collect();
    assert_eq!(
        readings,
        (1..=total).collect::<Vec<_>>(),
        "each reading's action in the outbox exactly once, in order"
    );
    assert_eq!(
        pipeline.policies().readings,
        total,
        "the state counts every reading once"
    );
    assert!(
        resumes.iter().any(|r| r.suppressed_batches > 0),
        "some re-processing was suppressed"
    );
    assert!(resumes.iter().any(|r| !r.bad_checkpoints.is_empty()));
    assert!(resumes.iter().any(|r| r.outbox.torn_tail_bytes > 0));
    // Commands: every tenth reading's, none twice, none missing (a batch
    // only journaled before a crash gives its commands on re-processing).
    assert_eq!(commands, (1..=total / 10).map(|n| n * 10).collect::<Vec<_>>());
}

fn flip_newest_checkpoint(dir: &Path) {
    let newest = (0..2)
        .map(|slot| dir.join(format!("checkpoint.{slot}")))
        .filter(|path| path.exists())
        .max_by_key(|path| fs::metadata(path).unwrap().modified().unwrap());
    if let Some(path) = newest {
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 0x10;
        fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn an_oversized_record_and_out_of_order_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open("outbox", dir.path(), limits(1024, 1 << 20), SyncPolicy::EveryBatch).unwrap();
    let error = log.append(1, 1, &[0; 5000]).unwrap_err();
    assert!(matches!(error, LogError::RecordTooLarge { .. }));
    assert!(error.to_string().contains("record_bytes_max=4096"));
    log.append(5, 6, b"x").unwrap();
    assert!(matches!(
        log.append(6, 7, b"y").unwrap_err(),
        LogError::OutOfOrder { .. }
    ));
}
