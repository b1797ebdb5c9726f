//! `molt policy` on good and bad inputs, releases that refuse a policy that
//! cannot run, and a policies-only release from publish to a device.

use std::path::Path;

use molt_release::download::{NoProgress, Source};
use serde_json::Value;

use crate::cli::{Workspace, prepared, sha256_hex};

/// A component that imports a function: policies import nothing.
const WITH_IMPORT: &str = r#"(component (import "host-log" (func)))"#;

/// A complete policy as a core module, written by hand: exports and
/// return areas as docs/policy-authors-guide.md lists them. `process`
/// returns no actions and `snapshot` the empty DAG-CBOR map.
const CORE_POLICY: &str = r#"(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\a0")
  (global $next (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (i32.and (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
    (global.set $next (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.const 32))
  (func (export "process") (param i32 i32) (result i32)
    (i64.store (i32.const 40) (i64.const 0))
    (i64.store (i32.const 48) (i64.const 0))
    (i32.const 40))
  (func (export "snapshot") (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (i32.const 0))
  (func (export "restore") (param i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.const 32)))"#;

const READINGS_CSV: &str = "sensor,timestamp_ms,value
1,0,20.0
1,1000,31.0
1,2000,32.0
1,3000,25.0
1,4000,33.0
1,5000,20.0
";

/// Writes the bad inputs every subcommand is tried on.
fn with_inputs() -> Workspace {
    let workspace = Workspace::new();
    workspace.write("threshold.wasm", molt_guests::THRESHOLD);
    workspace.write("threshold-c.wasm", molt_guests::THRESHOLD_C);
    workspace.write("chaos.wasm", molt_guests::CHAOS);
    workspace.write("threshold.json", br#"{"threshold": 30, "hysteresis": 2}"#);
    workspace.write("threshold-35.json", br#"{"threshold": 35, "hysteresis": 2}"#);
    workspace.write("typo.json", br#"{"threshold": 30, "hysteresys": 2}"#);
    workspace.write("trap-in-init.json", br#"{"mode": "trap", "at": "init"}"#);
    workspace.write("notes.txt", b"remember to write the policy\n");
    workspace.write("core.wasm", &wat::parse_str(CORE_POLICY).expect("core module"));
    workspace.write("import.wasm", &wat::parse_str(WITH_IMPORT).expect("component"));
    workspace.write("readings.csv", READINGS_CSV.as_bytes());
    workspace
}

#[test]
fn check_reports_fuel_and_memory_and_names_each_mistake() {
    let workspace = with_inputs();
    let checked = workspace.json(&["policy", "check", "threshold.wasm", "--config", "threshold.json"]);
    assert_eq!(checked["size_bytes"], molt_guests::THRESHOLD.len(), "{checked}");
    assert!(checked["init_fuel"].as_u64().expect("init_fuel") > 0, "{checked}");
    let memory = checked["memory_bytes"].as_u64().expect("memory_bytes");
    assert!(
        memory >= 65_536 && memory <= checked["memory_bytes_max"].as_u64().expect("max"),
        "{checked}"
    );
    let human = workspace.ok(&["policy", "check", "threshold.wasm", "--config", "threshold.json"]);
    assert!(
        human.contains("imports nothing") && human.contains("fuel_per_batch"),
        "{human}"
    );

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["notes.txt"],
            &["notes.txt cannot run as a policy", "not a WebAssembly binary"],
        ),
        (
            &["core.wasm"],
            &["a core WebAssembly module, not a component", "molt policy build --core"],
        ),
        (&["import.wasm"], &["imports \"host-log\"", "policies import nothing"]),
        (
            &["threshold.wasm", "--config", "typo.json"],
            &["init with this config failed", "unknown key `hysteresys`"],
        ),
        (
            &["chaos.wasm", "--config", "trap-in-init.json"],
            &["init with this config failed", "trapped"],
        ),
    ];
    for (args, expect) in cases {
        workspace.fails(&[&["policy", "check"], *args].concat(), 1, expect);
        // --json: one error document on stdout.
        let run = workspace.run(&[&["--json", "policy", "check"], *args].concat());
        let error: Value = serde_json::from_str(&run.stdout).expect("a JSON error document");
        assert!(error.to_string().contains(expect[1]), "{error}");
    }
}

#[test]
fn run_prints_actions_fuel_and_state_and_round_trips_it() {
    let workspace = with_inputs();
    let args = [
        "policy",
        "run",
        "threshold.wasm",
        "--config",
        "threshold.json",
        "--readings",
        "readings.csv",
        "--batch",
        "2",
    ];
    let ran = workspace.json(&args);
    let batches = ran["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 3, "{ran}");
    assert!(
        batches.iter().all(|batch| batch["fuel"].as_u64().expect("fuel") > 0),
        "{ran}"
    );
    // Raised at 31 (batch 1), cleared at 25 (batch 2), raised at 33 and cleared at 20 (batch 3).
    let alerts: Vec<usize> = batches
        .iter()
        .map(|batch| {
            batch["actions"]
                .as_array()
                .expect("actions")
                .iter()
                .filter(|action| action["kind"] == "alert")
                .count()
        })
        .collect();
    assert_eq!(alerts, [1, 1, 2], "{ran}");
    // A raise is a warning (the default severity), a clear is info.
    let first_alert = batches[0]["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["kind"] == "alert")
        .expect("an alert");
    assert_eq!(first_alert["severity"], "warning", "{ran}");
    assert!(ran["state_cid"].as_str().expect("cid").starts_with("bafyrei"), "{ran}");
    assert!(
        ran["round_trip"].as_str().expect("round trip").starts_with("ok"),
        "{ran}"
    );
    // The same run gives the same state.
    assert_eq!(workspace.json(&args)["state_cid"], ran["state_cid"]);
    // JSON lines give the same readings.
    let lines: String = READINGS_CSV
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            format!(
                "{{\"sensor\": {}, \"timestamp_ms\": {}, \"value\": {}}}\n",
                fields[0], fields[1], fields[2]
            )
        })
        .collect();
    workspace.write("readings.jsonl", lines.as_bytes());
    let from_json = workspace.json(&[
        "policy",
        "run",
        "threshold.wasm",
        "--config",
        "threshold.json",
        "--readings",
        "readings.jsonl",
        "--batch",
        "2",
    ]);
    assert_eq!(from_json["state_cid"], ran["state_cid"], "{from_json}");

    let run_with = |file: &str, config: &str, readings: &str| -> Vec<String> {
        ["policy", "run", file, "--config", config, "--readings", readings]
            .map(str::to_owned)
            .to_vec()
    };
    let fails = |args: Vec<String>, code: i32, expect: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workspace.fails(&args, code, expect);
    };
    fails(
        run_with("notes.txt", "threshold.json", "readings.csv"),
        1,
        &["not a WebAssembly binary"],
    );
    fails(
        run_with("core.wasm", "threshold.json", "readings.csv"),
        1,
        &["not a component"],
    );
    fails(
        run_with("import.wasm", "threshold.json", "readings.csv"),
        1,
        &["policies import nothing"],
    );
    fails(
        run_with("threshold.wasm", "typo.json", "readings.csv"),
        1,
        &["unknown key `hysteresys`"],
    );
    fails(
        run_with("chaos.wasm", "trap-in-init.json", "readings.csv"),
        1,
        &["trapped"],
    );
    fails(
        run_with("threshold.wasm", "threshold.json", "notes.txt"),
        1,
        &["must name the columns sensor"],
    );
    let mut too_big = run_with("threshold.wasm", "threshold.json", "readings.csv");
    too_big.extend(["--batch".to_owned(), "5000".to_owned()]);
    fails(too_big, 2, &["batch_readings_max"]);
}

#[test]
fn swap_carries_state_into_the_new_version_and_shows_what_changed() {
    let workspace = with_inputs();
    // The C policy restores the Rust one's state and carries on exactly as
    // the Rust one does.
    let swapped = workspace.json(&[
        "policy",
        "swap",
        "threshold.wasm",
        "threshold-c.wasm",
        "--config",
        "threshold.json",
        "--readings",
        "readings.csv",
        "--batch",
        "1",
        "--at",
        "3",
    ]);
    assert_eq!(swapped["swapped_at_batch"], 3, "{swapped}");
    assert_eq!(
        swapped["differences"].as_array().expect("differences").len(),
        0,
        "{swapped}"
    );
    assert_eq!(swapped["old_state_cid"], swapped["new_state_cid"], "{swapped}");

    let reconfigured = workspace.json(&[
        "policy",
        "swap",
        "threshold.wasm",
        "threshold-c.wasm",
        "--config",
        "threshold.json",
        "--new-config",
        "threshold-35.json",
        "--readings",
        "readings.csv",
        "--batch",
        "1",
        "--at",
        "4",
    ]);
    // At 33 (batch 5) the old version raises the alarm and the new one, at 35, does not.
    assert!(
        !reconfigured["differences"].as_array().expect("differences").is_empty(),
        "{reconfigured}"
    );

    let swap = |old: &str, new: &str, new_config: &str, at: &str| -> Vec<String> {
        [
            "policy",
            "swap",
            old,
            new,
            "--config",
            "threshold.json",
            "--new-config",
            new_config,
            "--readings",
            "readings.csv",
            "--batch",
            "1",
            "--at",
            at,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let fails = |args: Vec<String>, code: i32, expect: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workspace.fails(&args, code, expect);
    };
    fails(
        swap("threshold.wasm", "notes.txt", "threshold.json", "2"),
        1,
        &["not a WebAssembly binary"],
    );
    fails(
        swap("threshold.wasm", "core.wasm", "threshold.json", "2"),
        1,
        &["not a component"],
    );
    fails(
        swap("threshold.wasm", "import.wasm", "threshold.json", "2"),
        1,
        &["policies import nothing"],
    );
    fails(
        swap("threshold.wasm", "threshold-c.wasm", "typo.json", "2"),
        1,
        &["unknown key `hysteresys`"],
    );
    fails(
        swap("threshold.wasm", "chaos.wasm", "trap-in-init.json", "2"),
        1,
        &["trapped"],
    );
    fails(
        swap("threshold.wasm", "threshold-c.wasm", "threshold.json", "9"),
        2,
        &["--at 9 is outside the 6 batches"],
    );
}

#[test]
fn build_wraps_a_core_module_and_refuses_what_it_cannot_wrap() {
    let workspace = with_inputs();
    let built = workspace.json(&["policy", "build", "--core", "core.wasm", "--output", "core-policy.wasm"]);
    assert_eq!(built["embedded_world"], true, "{built}");
    let checked = workspace.json(&["policy", "check", "core-policy.wasm"]);
    assert!(checked["init_fuel"].as_u64().expect("fuel") > 0, "{checked}");
    let ran = workspace.json(&["policy", "run", "core-policy.wasm", "--readings", "readings.csv"]);
    // The empty DAG-CBOR map, as the runtime's own example computes it.
    assert_eq!(
        ran["state_cid"], "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua",
        "{ran}"
    );

    workspace.fails(
        &["policy", "build", "--core", "notes.txt"],
        1,
        &["not a valid WebAssembly module"],
    );
    workspace.fails(
        &["policy", "build", "--core", "threshold.wasm"],
        1,
        &["already a component"],
    );
    // A core module that exports the wrong things is named as such.
    workspace.write(
        "empty.wasm",
        &wat::parse_str("(module (memory (export \"memory\") 1))").expect("wat"),
    );
    workspace.fails(
        &["policy", "build", "--core", "empty.wasm"],
        1,
        &["could not make a policy component of empty.wasm"],
    );
    workspace.fails(
        &["policy", "build", "no-such-dir"],
        2,
        &["has no Cargo.toml", "molt policy new"],
    );
    // A component with an import is not a core module.
    workspace.fails(
        &["policy", "build", "--core", "import.wasm"],
        1,
        &["already a component"],
    );
}

/// `molt policy new`, then the crate's own tests and `molt policy build`,
/// in a directory outside this repository, with crates.io's packages only.
#[test]
fn new_makes_a_crate_that_tests_and_builds_outside_the_repository() {
    let workspace = with_inputs();
    let created = workspace.json(&["policy", "new", "rate"]);
    assert_eq!(created["dir"], "rate", "{created}");
    workspace.fails(&["policy", "new", "rate"], 1, &["already exists"]);
    workspace.fails(&["policy", "new", "9lives"], 2, &["not a crate name"]);

    // A target directory of its own, kept between runs of the suite.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-new-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(workspace.path("rate"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo test");
    assert!(status.success(), "the new crate's tests failed");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["--json", "policy", "build", "rate"])
        .current_dir(workspace.dir.path())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run molt policy build");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let built: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(built["component"], "rate/rate.wasm", "{built}");
    let ran = workspace.json(&[
        "policy",
        "run",
        "rate/rate.wasm",
        "--config",
        "rate/config.json",
        "--readings",
        "rate/readings.csv",
    ]);
    let text = ran.to_string();
    assert!(
        text.contains("\"metric\":\"rate\"") && text.contains("over max_rate 5"),
        "{ran}"
    );
}

/// A release with a policy that cannot run is refused, naming the policy
/// and the reason, and nothing is created.
#[test]
fn release_create_refuses_a_policy_that_cannot_run() {
    let workspace = prepared();
    let inputs = with_inputs();
    for name in [
        "notes.txt",
        "core.wasm",
        "import.wasm",
        "typo.json",
        "trap-in-init.json",
        "chaos.wasm",
    ] {
        std::fs::copy(inputs.path(name), workspace.path(name)).expect("copy a test input");
    }
    let create = |policy: &str| -> Vec<String> {
        [
            "release",
            "create",
            "--repo",
            "repo",
            "--keys",
            "keys",
            "--version",
            "1",
            "--security-counter",
            "1",
            "--min-agent-version",
            "1.0.0",
            "--policy",
            policy,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let cases = [
        (
            "junk=notes.txt@1.0.0",
            "policy `junk` cannot run: not a WebAssembly binary",
        ),
        (
            "core=core.wasm@1.0.0",
            "policy `core` cannot run: a core WebAssembly module, not a component",
        ),
        (
            "import=import.wasm@1.0.0",
            "policy `import` cannot run: policy imports \"host-log\"",
        ),
        (
            "threshold=threshold-0.1.0.wasm@1.0.0:typo.json",
            "policy `threshold` cannot run: init with this config failed",
        ),
        (
            "chaos=chaos.wasm@1.0.0:trap-in-init.json",
            "policy `chaos` cannot run: init with this config failed",
        ),
    ];
    for (policy, expect) in cases {
        let args = create(policy);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workspace.fails(&args, 1, &[expect, "nothing was created"]);
    }
    assert!(
        !workspace.path("repo/drafts/1").exists(),
        "a refused release left a draft"
    );
}

/// A release of policies only: no --hardware-class needed to verify it, and
/// a device installs it without touching its agent slots.
#[test]
fn a_policies_only_release_goes_from_publish_to_a_device() {
    let workspace = prepared();
    let release = |version: &str, parts: &[&str]| {
        let mut args = vec![
            "release",
            "create",
            "--repo",
            "repo",
            "--keys",
            "keys",
            "--version",
            version,
            "--security-counter",
            "1",
            "--min-agent-version",
            "0.9.0",
        ];
        args.extend_from_slice(parts);
        workspace.ok(&args);
        workspace.ok(&["release", "sign", "--repo", "repo", "--keys", "keys", version]);
        workspace.ok(&["repo", "publish", "--repo", "repo", "--keys", "keys", version])
    };
    let published = release(
        "1",
        &[
            "--agent",
            "rpi4=agent.img@1.0.0",
            "--policy",
            "threshold=threshold-0.1.0.wasm@0.1.0:threshold.json",
        ],
    );
    // The hint names the device's class when the release has agents.
    assert!(
        published.contains("molt verify --root root.json --hardware-class rpi4 "),
        "{published}"
    );

    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let keys = molt_release::keys::KeyDir::open(&workspace.path("keys")).expect("keys");
    let root_json = std::fs::read(workspace.path("root.json")).expect("root.json");
    let device_dir = workspace.path("device");
    let mut device = molt_agent::Device::provision(
        &device_dir,
        &root_json,
        &keys.image_trust_root().expect("image keys"),
        molt_agent::DeviceConfig::new("rpi4", "0.9.0"),
    )
    .expect("provision");
    let source = Source::Dir(workspace.path("repo/public"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let first = runtime
        .block_on(device.update(&source, &NoProgress, &cancel))
        .expect("install release 1")
        .expect("release 1 is newer");
    assert!(first.agent.is_some(), "release 1 carries an agent");
    let slots_before = files(&device.slots_dir());

    let published = release(
        "2",
        &["--policy", "threshold=threshold-0.2.0.wasm@0.2.0:threshold.json"],
    );
    assert!(
        published.contains("molt verify --root root.json repo/public"),
        "{published}"
    );
    let verified = workspace.ok(&["verify", "--root", "root.json", "repo/public"]);
    assert!(
        verified.contains("policies only: the device keeps its agent"),
        "{verified}"
    );
    assert!(verified.contains("checked threshold"), "{verified}");
    let for_class = workspace.json(&[
        "verify",
        "--root",
        "root.json",
        "--hardware-class",
        "rpi4",
        "repo/public",
    ]);
    assert_eq!(for_class["install"]["agent"], Value::Null, "{for_class}");

    let second = runtime
        .block_on(device.update(&source, &NoProgress, &cancel))
        .expect("install release 2")
        .expect("release 2 is newer");
    assert!(second.agent.is_none(), "{second:?}");
    assert_eq!(second.staged, ["threshold@0.2.0"], "{second:?}");
    assert_eq!(device.installed().release_version, 2);
    assert_eq!(device.installed().agent_version, "1.0.0", "the agent stays");
    assert_eq!(files(&device.slots_dir()), slots_before, "the agent slots were touched");
    assert_eq!(
        device.installed().policies["threshold"].sha256,
        sha256_hex(molt_guests::THRESHOLD_C)
    );
}

/// Every file under `dir` with its bytes, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push((path.display().to_string(), std::fs::read(&path).expect("read")));
            }
        }
    }
    found.sort();
    found
}

/// The Zig release `cargo xtask deps` installs into `.tools/zig` (PyPI's
/// `ziglang` wheel), or the binary `MOLT_ZIG` names.
fn zig() -> std::path::PathBuf {
    if let Some(zig) = std::env::var_os("MOLT_ZIG") {
        return zig.into();
    }
    let zig = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/zig/ziglang/zig");
    assert!(
        zig.is_file(),
        "Zig is not installed at {}: `cargo xtask deps` installs it from PyPI (or set MOLT_ZIG to a zig 0.15 binary)",
        zig.display()
    );
    zig
}

/// The guide's third-language example, guests-zig/rate/rate.zig: compiled
/// from source with Zig into a core module, wrapped by `molt policy build
/// --core`, then checked, run and swapped like any policy.
#[test]
fn a_zig_policy_builds_checks_runs_and_swaps() {
    let workspace = with_inputs();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests-zig/rate/rate.zig");
    let output = std::process::Command::new(zig())
        .arg("build-exe")
        .arg(&source)
        .args([
            "-target",
            "wasm32-freestanding",
            "-fno-entry",
            "-rdynamic",
            "-O",
            "ReleaseSmall",
        ])
        .arg(format!("-femit-bin={}", workspace.path("rate.core.wasm").display()))
        .current_dir(workspace.dir.path())
        .output()
        .expect("run zig");
    assert!(
        output.status.success(),
        "zig build-exe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let built = workspace.json(&["policy", "build", "--core", "rate.core.wasm", "--output", "rate.wasm"]);
    assert_eq!(built["embedded_world"], true, "{built}");
    workspace.write("rate.json", br#"{"max_rate": 5}"#);
    workspace.write("rate-10.json", br#"{"max_rate": 10, "severity": "critical"}"#);
    workspace.write("rate-typo.json", br#"{"max_rat": 5}"#);
    workspace.write("rate-zero.json", br#"{"max_rate": 0}"#);

    let checked = workspace.json(&["policy", "check", "rate.wasm", "--config", "rate.json"]);
    assert!(checked["init_fuel"].as_u64().expect("init_fuel") > 0, "{checked}");
    for (config, expect) in [
        (
            "rate-typo.json",
            "unknown key `max_rat` (known keys: max_rate, sensor, severity)",
        ),
        ("rate-zero.json", "`max_rate`: must be a finite number above 0, got `0`"),
    ] {
        workspace.fails(&["policy", "check", "rate.wasm", "--config", config], 1, &[expect]);
    }

    // 20, 31, 32, 25, 33, 20 a second apart: rates 11, 1, -7, 8, -13 per
    // second, of which all but 1 are faster than 5.
    let ran = workspace.json(&[
        "policy",
        "run",
        "rate.wasm",
        "--config",
        "rate.json",
        "--readings",
        "readings.csv",
        "--batch",
        "2",
    ]);
    let actions: Vec<&Value> = ran["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .flat_map(|batch| batch["actions"].as_array().expect("actions"))
        .collect();
    let rates: Vec<f64> = actions
        .iter()
        .filter(|action| action["kind"] == "telemetry")
        .map(|action| action["value"].as_f64().expect("a rate"))
        .collect();
    assert_eq!(rates, [11.0, 1.0, -7.0, 8.0, -13.0], "{ran}");
    let alerts: Vec<&&Value> = actions.iter().filter(|action| action["kind"] == "alert").collect();
    assert_eq!(alerts.len(), 4, "{ran}");
    assert_eq!(alerts[0]["severity"], "warning", "{ran}");
    assert!(
        alerts[0]["message"]
            .as_str()
            .expect("message")
            .contains("changing at 11.00 per s, faster than max_rate 5"),
        "{ran}"
    );
    assert!(
        ran["round_trip"].as_str().expect("round trip").starts_with("ok"),
        "{ran}"
    );

    // A live swap to max_rate 10: the new instance restores the old one's
    // last reading per sensor, so its first rate is computed across the swap,
    // and from then on only changes faster than 10 per second raise alerts.
    let swapped = workspace.json(&[
        "policy",
        "swap",
        "rate.wasm",
        "rate.wasm",
        "--config",
        "rate.json",
        "--new-config",
        "rate-10.json",
        "--readings",
        "readings.csv",
        "--batch",
        "1",
        "--at",
        "4",
    ]);
    assert_eq!(swapped["swapped_at_batch"], 4, "{swapped}");
    assert!(
        !swapped["differences"].as_array().expect("differences").is_empty(),
        "{swapped}"
    );
    // The threshold policy's state is not a rate state: restore refuses it.
    workspace.fails(
        &[
            "policy",
            "swap",
            "threshold.wasm",
            "rate.wasm",
            "--config",
            "threshold.json",
            "--new-config",
            "rate.json",
            "--readings",
            "readings.csv",
            "--batch",
            "1",
            "--at",
            "2",
        ],
        1,
        &["not a rate state"],
    );
}
