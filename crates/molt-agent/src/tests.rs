use std::collections::BTreeMap;

use crate::action_log::{ActionLog, Line};
use crate::error::DeviceError;
use crate::record::{self, Installed, PolicyRecord};

fn temp_dir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("temporary directory: {error}"),
    }
}

#[test]
fn installed_record_round_trips_and_refuses_oversized_or_foreign_files() {
    let dir = temp_dir();
    let path = dir.path().join("installed.json");
    let mut installed = Installed::factory("1.0.0");
    installed.release_version = 3;
    installed.security_counter = 2;
    installed.policies.insert(
        "threshold".into(),
        PolicyRecord {
            version: "2.0.0".into(),
            sha256: "ab".repeat(32),
            config: BTreeMap::from([("threshold".into(), "30".into())]),
        },
    );
    assert!(installed.store(&path).is_ok());
    assert_eq!(Installed::load(&path, 1 << 20).ok(), Some(installed.clone()));

    let size = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
    match Installed::load(&path, size - 1) {
        Err(DeviceError::TooLarge {
            limit_name, size_bytes, ..
        }) => {
            assert_eq!((limit_name, size_bytes), ("installed_bytes_max", size));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    assert!(record::replace_file(&path, br#"{"format":2}"#).is_ok());
    assert!(matches!(
        Installed::load(&path, 1 << 20),
        Err(DeviceError::Corrupt { .. })
    ));
}

#[test]
fn image_trust_round_trips() {
    let dir = temp_dir();
    let path = dir.path().join("image-trust.json");
    let keys: Vec<_> = [1u8, 2]
        .iter()
        .map(|seed| ed25519_dalek::SigningKey::from_bytes(&[*seed; 32]).verifying_key())
        .collect();
    let Ok(trust) = molt_core::TrustRoot::new(&keys, 2) else {
        panic!("trust root refused");
    };
    assert!(record::store_trust(&path, &trust).is_ok());
    let Ok(loaded) = record::load_trust(&path) else {
        panic!("trust file refused");
    };
    assert_eq!((loaded.keys(), loaded.threshold()), (trust.keys(), 2));

    assert!(record::replace_file(&path, br#"{"threshold":1,"keys":["zz"]}"#).is_ok());
    assert!(matches!(record::load_trust(&path), Err(DeviceError::Corrupt { .. })));
}

#[test]
fn kept_module_is_checked_against_its_digest() {
    let dir = temp_dir();
    let Ok(sha256) = record::store_module(dir.path(), b"\0asm module") else {
        panic!("store refused");
    };
    assert_eq!(
        record::load_module(dir.path(), &sha256, 1024).ok(),
        Some(b"\0asm module".to_vec())
    );
    assert!(record::replace_file(&dir.path().join(format!("{sha256}.wasm")), b"\0asm tampered").is_ok());
    assert!(matches!(
        record::load_module(dir.path(), &sha256, 1024),
        Err(DeviceError::Corrupt { .. })
    ));
}

#[test]
fn action_log_rotates_at_its_limit() {
    let dir = temp_dir();
    let path = dir.path().join("actions.jsonl");
    let Ok(mut log) = ActionLog::open(&path, 200) else {
        panic!("log refused");
    };
    let line = Line::Installed {
        release_version: 1,
        security_counter: 1,
        agent_version: "1.0.0",
    };
    for _ in 0..5 {
        assert!(log.append(&line).is_ok());
    }
    assert!(log.flush().is_ok());
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let current = read(&path);
    let rotated = read(&dir.path().join("actions.jsonl.1"));
    assert!(current.len() <= 200 && rotated.len() <= 200, "{current:?} {rotated:?}");
    // Lines of 86 bytes, two to a file: 1 2 | 3 4 | 5, and one rotation is kept.
    assert_eq!((rotated.lines().count(), current.lines().count()), (2, 1));
    assert!(
        current.starts_with(r#"{"kind":"installed","release_version":1"#),
        "{current}"
    );
}

/// An agent image and its manifest signed by `key`, written under `dir`.
fn signed_agent(
    dir: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
    version: molt_core::Version,
) -> (molt_release::client::FetchedAgent, molt_core::Manifest) {
    use sha2::Digest;
    let bytes = format!("agent image {version}").repeat(1000).into_bytes();
    let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let manifest = molt_core::Manifest {
        name: crate::AGENT_IMAGE_NAME.to_owned(),
        version,
        security_counter: 1,
        length: bytes.len() as u64,
        sha256,
        hardware_class: "test-class".to_owned(),
    };
    let image = dir.join(format!("agent-{version}.img"));
    std::fs::write(&image, &bytes).unwrap();
    let agent = molt_release::client::FetchedAgent {
        version: version.to_string(),
        manifest: manifest.sign(&[key]).unwrap(),
        image,
        image_length: manifest.length,
        image_sha256: sha256,
    };
    (agent, manifest)
}

#[test]
fn a_trial_agent_that_fails_its_health_check_is_rolled_back() {
    use molt_core::{Config, Engine, FileBackend, FileLayout, FsStore, TrustRoot, Version};

    let dir = temp_dir();
    let slots = dir.path().join("slots");
    std::fs::create_dir(&slots).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let trust = TrustRoot::new(&[key.verifying_key()], 1).unwrap();
    let config = Config::new(crate::AGENT_IMAGE_NAME, "test-class", trust);
    let open = || {
        let backend = FileBackend::new(FsStore::open(&slots).unwrap(), FileLayout::default());
        Engine::open(backend, config.clone()).unwrap().0
    };
    let mut engine = open();

    let (v1, v1_manifest) = signed_agent(dir.path(), &key, Version::new(1, 0, 0));
    let installed = crate::agent_slots::install_agent(&mut engine, None, &v1, &v1_manifest, &Ok(())).unwrap();
    assert_eq!(installed.committed.version, Version::new(1, 0, 0));

    let (v2, v2_manifest) = signed_agent(dir.path(), &key, Version::new(2, 0, 0));
    let unhealthy: crate::Health = Err("policy threshold does not answer a snapshot".to_owned());
    let error = crate::agent_slots::install_agent(&mut engine, None, &v2, &v2_manifest, &unhealthy).unwrap_err();
    match &error {
        DeviceError::HealthCheck { version, reason } => {
            assert_eq!(version, "2.0.0");
            assert!(reason.contains("does not answer"), "{reason}");
        }
        other => panic!("expected a health-check failure, got {other}"),
    }

    // After a reboot the committed 1.0.0 boots, and nothing is on trial.
    let mut engine = open();
    let (decision, committed) = crate::agent_slots::boot(&mut engine, &Ok(())).unwrap();
    let decision = decision.unwrap();
    assert_eq!(decision.image.version, Version::new(1, 0, 0));
    assert_eq!(decision.reason, molt_core::BootReason::Committed);
    assert!(committed.is_none());
    assert_eq!(engine.record().committed_version, Version::new(1, 0, 0));
}
