//! Opening an engine on arbitrary record copies, then booting and driving
//! it, returns `Ok` or a typed `Err`: it never panics and never tries to
//! write an inconsistent record.
//!
//! Input: `len | flags | copy 0 (len bytes) | copy 1 (the rest)`. Flag bit 0
//! and 1 say whether copy 0 and 1 exist; bit 2 and 3 frame that copy's bytes
//! as a record body with a correct magic, length and checksum, so the
//! fuzzer reaches the body decoder and the engine instead of stopping at
//! the checksum.

#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use molt_core::sim::SimStore;
use molt_core::{Config, Engine, Error, FileBackend, FileLayout, FileStore, RECORD_MAGIC, TrustRoot};
use sha2::{Digest, Sha256};

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = RECORD_MAGIC.to_vec();
    // Far longer than any record either way; keep the length field honest.
    let body = &body[..body.len().min(usize::from(u16::MAX))];
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    let checksum = Sha256::digest(&frame);
    frame.extend_from_slice(&checksum[..8]);
    frame
}

fn check<T>(result: Result<T, Error>) {
    assert!(
        !matches!(result, Err(Error::Record(_))),
        "engine built an inconsistent record"
    );
}

fuzz_target!(|data: &[u8]| {
    let [len, flags, rest @ ..] = data else {
        return;
    };
    let (copy0, copy1) = rest.split_at(usize::from(*len).min(rest.len()));
    let mut store = SimStore::new();
    for (copy, bytes) in [copy0, copy1].into_iter().enumerate() {
        if flags & (1 << copy) == 0 {
            continue;
        }
        let bytes = if flags & (4 << copy) != 0 {
            framed(bytes)
        } else {
            bytes.to_vec()
        };
        store
            .write(&format!("boot.{copy}"), 0, &bytes)
            .expect("sim store writes");
    }
    // Small images that match no digest, so verification runs and fails.
    store.write("a.img", 0, b"slot a").expect("sim store writes");
    store.write("b.img", 0, b"slot b").expect("sim store writes");

    let key = SigningKey::from_bytes(&[7; 32]);
    let trust = TrustRoot::new(&[key.verifying_key()], 1).expect("one key, threshold 1");
    let config = Config::new("agent", "hw", trust);
    let Ok((mut engine, _recovery)) = Engine::open(FileBackend::new(store, FileLayout::default()), config) else {
        return;
    };
    check(engine.boot());
    check(engine.rollback());
    check(engine.mark_trial());
    check(engine.boot());
    check(engine.commit());
});
