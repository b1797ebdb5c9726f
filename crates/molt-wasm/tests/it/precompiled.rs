//! Precompiled modules: only bytes this engine produced or verified load.

use molt_wasm::{CacheKey, CacheLookup, Compiler, Error, ModuleCache, Runtime, RuntimeConfig, WASMTIME_VERSION};

use crate::fixtures::{echo, echoed, readings};

fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig::default()).unwrap()
}

fn serves(module: &molt_wasm::PolicyModule) {
    let mut instance = module.instantiate().unwrap();
    instance.init(&[]).unwrap();
    let batch = readings(1, 3);
    assert_eq!(instance.process(&batch).unwrap(), echoed(&batch));
}

#[test]
fn precompiled_module_loads_with_its_own_key_and_digest() {
    let runtime = runtime();
    let precompiled = runtime.precompile(&echo()).unwrap();
    assert_eq!(precompiled.key.wasmtime_version, WASMTIME_VERSION);
    let module = runtime
        .load_precompiled(&precompiled.key, &precompiled.bytes, precompiled.sha256)
        .unwrap();
    assert_eq!(module.source_sha256(), precompiled.key.source_sha256);
    assert_eq!(
        module.source_sha256(),
        runtime.compile(&echo()).unwrap().source_sha256()
    );
    serves(&module);
}

#[test]
fn cache_key_is_stable_and_covers_the_engine_configuration() {
    let wasm_sha256 = [7; 32];
    let key = runtime().cache_key(wasm_sha256);
    assert_eq!(key, runtime().cache_key(wasm_sha256), "same configuration, same key");

    let mut pulley = RuntimeConfig::default();
    pulley.compiler = Compiler::Pulley;
    let pulley_key = Runtime::new(&pulley).unwrap().cache_key(wasm_sha256);
    assert_ne!(pulley_key.target, key.target);
    assert_ne!(pulley_key.engine_sha256, key.engine_sha256);

    // Winch makes native code for the same target; the engine digest is
    // what keeps its code and Cranelift's apart.
    let mut winch = RuntimeConfig::default();
    winch.compiler = Compiler::Winch;
    let winch_key = Runtime::new(&winch).unwrap().cache_key(wasm_sha256);
    assert_eq!(winch_key.target, key.target);
    assert_ne!(winch_key.engine_sha256, key.engine_sha256);

    let mut nondeterministic = RuntimeConfig::default();
    nondeterministic.deterministic = false;
    let nondeterministic_key = Runtime::new(&nondeterministic).unwrap().cache_key(wasm_sha256);
    assert_ne!(nondeterministic_key.engine_sha256, key.engine_sha256);
}

#[test]
fn mismatched_cache_keys_are_refused() {
    let runtime = runtime();
    let precompiled = runtime.precompile(&echo()).unwrap();
    let mut pulley = RuntimeConfig::default();
    pulley.compiler = Compiler::Pulley;
    let pulley_key = Runtime::new(&pulley).unwrap().cache_key(precompiled.key.source_sha256);

    let mut other_version = precompiled.key.clone();
    other_version.wasmtime_version = "47.0.0".into();
    let mut other_engine = precompiled.key.clone();
    other_engine.engine_sha256[0] ^= 1;
    for (key, field) in [
        (other_version, "wasmtime_version"),
        (pulley_key, "target"),
        (other_engine, "engine_sha256"),
    ] {
        let refused = runtime
            .load_precompiled(&key, &precompiled.bytes, precompiled.sha256)
            .unwrap_err();
        assert!(
            matches!(&refused, Error::CacheKeyMismatch { field: found, .. } if *found == field),
            "{field}: {refused:?}"
        );
    }
}

#[test]
fn tampered_precompiled_bytes_are_refused() {
    let runtime = runtime();
    let precompiled = runtime.precompile(&echo()).unwrap();
    for byte_idx in [0, precompiled.bytes.len() / 2, precompiled.bytes.len() - 1] {
        let mut tampered = precompiled.bytes.clone();
        tampered[byte_idx] ^= 0x40;
        let refused = runtime
            .load_precompiled(&precompiled.key, &tampered, precompiled.sha256)
            .unwrap_err();
        assert!(matches!(refused, Error::PrecompiledDigestMismatch), "{refused:?}");
    }
}

#[test]
fn bytes_that_are_not_precompiled_are_refused_even_if_trusted() {
    let runtime = runtime();
    let wasm = echo();
    let key = runtime.cache_key([0; 32]);
    let sha256 = sha256(&wasm);
    let refused = runtime.load_precompiled(&key, &wasm, sha256).unwrap_err();
    assert!(matches!(refused, Error::InvalidPrecompiled { .. }), "{refused:?}");
}

#[test]
fn oversized_precompiled_bytes_are_refused() {
    let mut config = RuntimeConfig::default();
    config.limits.precompiled_bytes_max = 1_000;
    let runtime = Runtime::new(&config).unwrap();
    let precompiled = runtime.precompile(&echo()).unwrap();
    let refused = runtime
        .load_precompiled(&precompiled.key, &precompiled.bytes, precompiled.sha256)
        .unwrap_err();
    assert!(matches!(refused, Error::PrecompiledTooLarge { limit_bytes: 1_000, .. }));
    assert!(refused.to_string().contains("precompiled_bytes_max=1000"), "{refused}");
}

#[test]
fn verified_precompiled_code_loads_again_and_again() {
    let runtime = runtime();
    let precompiled = runtime.precompile(&echo()).unwrap();
    let verified = runtime
        .verify_precompiled(&precompiled.key, precompiled.bytes.clone(), precompiled.sha256)
        .unwrap();
    assert_eq!(verified.bytes(), &precompiled.bytes[..]);
    assert_eq!(verified.sha256(), precompiled.sha256);
    for _ in 0..3 {
        serves(&runtime.load_verified(&verified).unwrap());
    }
    // Another runtime of the same configuration has the same key.
    let same_configuration = Runtime::new(&RuntimeConfig::default()).unwrap();
    serves(&same_configuration.load_verified(&verified).unwrap());
}

/// `verify_precompiled` refuses what `load_precompiled` refuses, and code
/// verified for one runtime never loads on a runtime with another key or a
/// smaller size limit.
#[test]
fn verification_is_the_same_check_and_binds_to_the_key() {
    let runtime = runtime();
    let precompiled = runtime.precompile(&echo()).unwrap();
    let mut tampered = precompiled.bytes.clone();
    tampered[precompiled.bytes.len() / 2] ^= 0x40;
    let refused = runtime
        .verify_precompiled(&precompiled.key, tampered, precompiled.sha256)
        .unwrap_err();
    assert!(matches!(refused, Error::PrecompiledDigestMismatch), "{refused:?}");

    let mut other_engine = precompiled.key.clone();
    other_engine.engine_sha256[0] ^= 1;
    let refused = runtime
        .verify_precompiled(&other_engine, precompiled.bytes.clone(), precompiled.sha256)
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            Error::CacheKeyMismatch {
                field: "engine_sha256",
                ..
            }
        ),
        "{refused:?}"
    );

    let verified = runtime
        .verify_precompiled(&precompiled.key, precompiled.bytes.clone(), precompiled.sha256)
        .unwrap();
    let mut winch = RuntimeConfig::default();
    winch.compiler = Compiler::Winch;
    let refused = Runtime::new(&winch).unwrap().load_verified(&verified).unwrap_err();
    assert!(
        matches!(
            &refused,
            Error::CacheKeyMismatch {
                field: "engine_sha256",
                ..
            }
        ),
        "{refused:?}"
    );

    let mut small = RuntimeConfig::default();
    small.limits.precompiled_bytes_max = 1_000;
    let refused = Runtime::new(&small).unwrap().load_verified(&verified).unwrap_err();
    assert!(
        matches!(refused, Error::PrecompiledTooLarge { limit_bytes: 1_000, .. }),
        "{refused:?}"
    );
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

const SECRET: [u8; 32] = [0x5e; 32];

fn entry_path(cache: &ModuleCache, runtime: &Runtime, wasm: &[u8]) -> std::path::PathBuf {
    let key: CacheKey = runtime.cache_key(sha256(wasm));
    cache.entry_path(&key)
}

#[test]
fn module_cache_misses_then_hits() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let cache = ModuleCache::open(dir.path(), SECRET).unwrap();
    let (module, lookup) = cache.load_or_compile(&runtime, &echo()).unwrap();
    assert_eq!(lookup, CacheLookup::Miss);
    serves(&module);
    let (module, lookup) = cache.load_or_compile(&runtime, &echo()).unwrap();
    assert_eq!(lookup, CacheLookup::Hit);
    serves(&module);
}

/// Each way an attacker with write access to the cache directory, but not
/// the secret, could change an entry.
#[test]
fn module_cache_detects_tampering_and_recompiles() {
    let wasm = echo();
    type Tamper = fn(&mut Vec<u8>);
    let tamperings: [(&str, Tamper); 5] = [
        ("flip a code byte", |entry| {
            let last = entry.len() - 1;
            entry[last] ^= 1;
        }),
        ("flip a MAC byte", |entry| entry[10] ^= 1),
        ("truncate", |entry| entry.truncate(entry.len() / 2)),
        ("empty", |entry| entry.clear()),
        ("append", |entry| entry.extend_from_slice(b"\x90\x90")),
    ];
    for (name, tamper) in tamperings {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let cache = ModuleCache::open(dir.path(), SECRET).unwrap();
        cache.load_or_compile(&runtime, &wasm).unwrap();
        let path = entry_path(&cache, &runtime, &wasm);
        let mut entry = std::fs::read(&path).unwrap();
        tamper(&mut entry);
        std::fs::write(&path, &entry).unwrap();

        let (module, lookup) = cache.load_or_compile(&runtime, &wasm).unwrap();
        assert_eq!(lookup, CacheLookup::Rejected, "{name}");
        serves(&module);
        let (_, lookup) = cache.load_or_compile(&runtime, &wasm).unwrap();
        assert_eq!(lookup, CacheLookup::Hit, "{name}: the entry was rewritten");
    }
}

#[test]
fn module_cache_refuses_entries_made_with_another_secret() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let wasm = echo();
    ModuleCache::open(dir.path(), [1; 32])
        .unwrap()
        .load_or_compile(&runtime, &wasm)
        .unwrap();
    let cache = ModuleCache::open(dir.path(), SECRET).unwrap();
    let (_, lookup) = cache.load_or_compile(&runtime, &wasm).unwrap();
    assert_eq!(lookup, CacheLookup::Rejected);
}

/// A valid entry for one module, renamed to another module's key, must not
/// load as that module.
#[test]
fn module_cache_refuses_an_entry_moved_to_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let cache = ModuleCache::open(dir.path(), SECRET).unwrap();
    let wasm = echo();
    let other_wasm = crate::fixtures::Core {
        memory_pages: 3,
        ..Default::default()
    }
    .component();
    cache.load_or_compile(&runtime, &other_wasm).unwrap();
    std::fs::rename(
        entry_path(&cache, &runtime, &other_wasm),
        entry_path(&cache, &runtime, &wasm),
    )
    .unwrap();
    let (module, lookup) = cache.load_or_compile(&runtime, &wasm).unwrap();
    assert_eq!(lookup, CacheLookup::Rejected);
    assert_eq!(module.source_sha256(), sha256(&wasm));
}
