//! The `molt` binary end to end: a whole release flow in a temporary
//! directory, and the errors people hit most, with their exit codes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One run of the binary.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A scratch directory that every command runs in.
pub(crate) struct Workspace {
    pub(crate) dir: tempfile::TempDir,
}

impl Workspace {
    pub(crate) fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).expect("write a test input");
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_molt"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("MOLT_KEYS")
            .output()
            .expect("run molt");
        Run {
            code: output.status.code().expect("molt exited normally"),
            stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        }
    }

    /// Runs a command that must succeed and returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "molt {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs a command with `--json` that must succeed and parses its stdout.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(&[&["--json"], args].concat());
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("molt {args:?}: {error}\n{stdout}"))
    }

    /// Runs a command that must fail with `code` and an error containing
    /// each of `expect`.
    pub(crate) fn fails(&self, args: &[&str], code: i32, expect: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code, code,
            "molt {args:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        for expected in expect {
            assert!(
                run.stderr.contains(expected),
                "molt {args:?}: stderr lacks `{expected}`:\n{}",
                run.stderr
            );
        }
        run
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub(crate) const AGENT_V1: &[u8] = b"agent image 1.0.0 for rpi4; any bytes work for the release pipeline";
/// Real policies: `molt release create` and `molt verify` compile each one
/// and run its `init` with its config.
const THRESHOLD_V1: &[u8] = molt_guests::THRESHOLD;
/// The same policy in C: the same config keys, other bytes.
const THRESHOLD_V2: &[u8] = molt_guests::THRESHOLD_C;
const DEADBAND_V1: &[u8] = molt_guests::DEADBAND;

/// Creates keys, a root to pin, and the inputs of two releases.
pub(crate) fn prepared() -> Workspace {
    let workspace = Workspace::new();
    workspace.write("agent.img", AGENT_V1);
    workspace.write("threshold-0.1.0.wasm", THRESHOLD_V1);
    workspace.write("threshold-0.2.0.wasm", THRESHOLD_V2);
    workspace.write("deadband.wasm", DEADBAND_V1);
    workspace.write(
        "threshold.json",
        br#"{"threshold": 30.5, "sensor": 1, "severity": "critical"}"#,
    );
    workspace.write("deadband.json", br#"{"deadband": 0.5}"#);
    let init = workspace.json(&["keys", "init", "keys"]);
    assert_eq!(init["root_version"], 1, "{init}");
    let roles: Vec<(&str, u64, u64)> = init["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|role| {
            (
                role["role"].as_str().expect("name"),
                role["keys"].as_u64().expect("keys"),
                role["threshold"].as_u64().expect("k"),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("root", 3, 2),
            ("targets", 1, 1),
            ("snapshot", 1, 1),
            ("timestamp", 1, 1),
            ("image", 1, 1)
        ]
    );
    workspace.ok(&["keys", "root", "keys", "--output", "root.json"]);
    let root: Value = serde_json::from_slice(&std::fs::read(workspace.path("root.json")).expect("root.json"))
        .expect("root.json is JSON");
    assert_eq!(root["signed"]["_type"], "root", "{root}");
    workspace
}

pub(crate) fn create_release_1(workspace: &Workspace) -> Value {
    workspace.json(&[
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
        "--agent",
        "rpi4=agent.img@1.0.0",
        "--policy",
        "threshold=threshold-0.1.0.wasm@0.1.0:threshold.json",
        "--policy",
        "deadband=deadband.wasm@1.0.0:deadband.json",
    ])
}

/// Checks a `molt --json verify` document against the release it should
/// describe.
fn check_verified(verified: &Value, version: u64, threshold: (&str, &[u8])) {
    assert_eq!(verified["up_to_date"], false, "{verified}");
    assert_eq!(verified["release"]["version"], version, "{verified}");
    let agent = &verified["install"]["agent"];
    assert_eq!(agent["hardware_class"], "rpi4", "{verified}");
    assert_eq!(agent["version"], "1.0.0", "{verified}");
    assert_eq!(agent["length"], AGENT_V1.len(), "{verified}");
    assert_eq!(agent["sha256"], sha256_hex(AGENT_V1), "{verified}");
    let policies = verified["install"]["policies"].as_array().expect("policies");
    let described: Vec<(&str, &str, u64, &str)> = policies
        .iter()
        .map(|policy| {
            (
                policy["name"].as_str().expect("name"),
                policy["version"].as_str().expect("version"),
                policy["length"].as_u64().expect("length"),
                policy["sha256"].as_str().expect("sha256"),
            )
        })
        .collect();
    let (threshold_version, threshold_bytes) = threshold;
    let deadband_sha256 = sha256_hex(DEADBAND_V1);
    let threshold_sha256 = sha256_hex(threshold_bytes);
    assert_eq!(
        described,
        [
            ("deadband", "1.0.0", DEADBAND_V1.len() as u64, deadband_sha256.as_str()),
            (
                "threshold",
                threshold_version,
                threshold_bytes.len() as u64,
                threshold_sha256.as_str()
            ),
        ]
    );
    let threshold_config = &policies[1]["config"];
    assert_eq!(threshold_config["threshold"], "30.5", "{verified}");
    assert_eq!(threshold_config["sensor"], "1", "{verified}");
    assert_eq!(threshold_config["severity"], "critical", "{verified}");
    assert_eq!(verified["install"]["parts_verified"], 4, "{verified}");
}

/// Serves `root` over HTTP/1.1 on 127.0.0.1 (whole files, GET only) for
/// the rest of the test process; returns the base URL.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if header == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let file = (!path.split('/').any(|segment| segment == "..")).then(|| root.join(path));
            let response = match file.and_then(|file| std::fs::read(file).ok()) {
                Some(body) => {
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&body);
                    response
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{address}/")
}

/// Finds the published copy of `bytes` under `public/targets`.
fn published_target(public: &Path, bytes: &[u8]) -> PathBuf {
    let mut pending = vec![public.join("targets")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list targets") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).expect("read target") == bytes {
                return path;
            }
        }
    }
    panic!(
        "no published target holds the expected bytes under {}",
        public.display()
    );
}

#[test]
fn release_flow_from_keys_to_verify_and_through_key_rotation() {
    let workspace = prepared();

    let created = create_release_1(&workspace);
    assert_eq!(created["signed"], false, "{created}");
    assert_eq!(created["release"]["version"], 1, "{created}");
    assert_eq!(
        created["release"]["agents"][0]["sha256"],
        sha256_hex(AGENT_V1),
        "{created}"
    );

    let signed = workspace.json(&["release", "sign", "--repo", "repo", "--keys", "keys", "1"]);
    assert_eq!(signed["signed"], true, "{signed}");

    let published = workspace.json(&["repo", "publish", "--repo", "repo", "--keys", "keys", "1"]);
    assert_eq!(published["release_set"], 1, "{published}");
    assert_eq!(published["root_version"], 1, "{published}");

    // Human output names what would be installed, with digests.
    let human = workspace.ok(&[
        "verify",
        "--root",
        "root.json",
        "--hardware-class",
        "rpi4",
        "repo/public",
    ]);
    assert!(human.contains("verified release 1"), "{human}");
    assert!(human.contains(&sha256_hex(AGENT_V1)), "{human}");
    assert!(human.contains(&sha256_hex(THRESHOLD_V1)), "{human}");

    let verify_args = [
        "verify",
        "--root",
        "root.json",
        "--hardware-class",
        "rpi4",
        "repo/public",
    ];
    check_verified(&workspace.json(&verify_args), 1, ("0.1.0", THRESHOLD_V1));

    // A device that has committed release 1 has nothing to do.
    let current = workspace.json(&[
        "verify",
        "--root",
        "root.json",
        "--hardware-class",
        "rpi4",
        "--installed-release",
        "1",
        "--installed-counter",
        "1",
        "--agent-version",
        "1.0.0",
        "repo/public",
    ]);
    assert_eq!(current["up_to_date"], true, "{current}");
    assert_eq!(current["install"], Value::Null, "{current}");

    // Rotate an online key and the root keys; refresh publishes root v3,
    // and a device pinned to root v1 follows the chain.
    let rotated = workspace.json(&["keys", "rotate", "keys", "--role", "timestamp"]);
    assert_eq!(rotated["root_version"], 2, "{rotated}");
    let rotated = workspace.json(&[
        "keys",
        "rotate",
        "keys",
        "--role",
        "root",
        "--keys",
        "4",
        "--threshold",
        "3",
    ]);
    assert_eq!(
        (rotated["root_version"].clone(), rotated["threshold"].clone()),
        (3.into(), 3.into()),
        "{rotated}"
    );
    let refreshed = workspace.json(&["repo", "refresh", "--repo", "repo", "--keys", "keys"]);
    assert_eq!(refreshed["root_version"], 3, "{refreshed}");
    assert_eq!(refreshed["release_set"], 1, "{refreshed}");
    check_verified(&workspace.json(&verify_args), 1, ("0.1.0", THRESHOLD_V1));

    // A second release after the rotation, verified over HTTP.
    workspace.json(&[
        "release",
        "create",
        "--repo",
        "repo",
        "--keys",
        "keys",
        "--version",
        "2",
        "--security-counter",
        "1",
        "--min-agent-version",
        "1.0.0",
        "--agent",
        "rpi4=agent.img@1.0.0",
        "--policy",
        "threshold=threshold-0.2.0.wasm@0.2.0:threshold.json",
        "--policy",
        "deadband=deadband.wasm@1.0.0:deadband.json",
    ]);
    workspace.json(&["release", "sign", "--repo", "repo", "--keys", "keys", "2"]);
    let published = workspace.json(&["repo", "publish", "--repo", "repo", "--keys", "keys", "2"]);
    assert_eq!(published["release_set"], 2, "{published}");
    let url = serve(workspace.path("repo/public"));
    let verified = workspace.json(&["verify", "--root", "root.json", "--hardware-class", "rpi4", &url]);
    check_verified(&verified, 2, ("0.2.0", THRESHOLD_V2));

    // A kept trusted directory serves later runs without --root.
    workspace.json(&[
        "verify",
        "--root",
        "root.json",
        "--trusted",
        "device",
        "--hardware-class",
        "rpi4",
        "repo/public",
    ]);
    let again = workspace.json(&[
        "verify",
        "--trusted",
        "device",
        "--hardware-class",
        "rpi4",
        "repo/public",
    ]);
    check_verified(&again, 2, ("0.2.0", THRESHOLD_V2));
    workspace.fails(
        &["verify", "--root", "root.json", "--trusted", "device", "repo/public"],
        2,
        &["--trusted device is already initialised; drop --root"],
    );

    // One flipped byte in a published module: nothing verifies.
    let tampered = published_target(&workspace.path("repo/public"), THRESHOLD_V2);
    let mut bytes = THRESHOLD_V2.to_vec();
    bytes[0] ^= 0xff;
    std::fs::write(&tampered, bytes).expect("tamper with a target");
    let run = workspace.fails(
        &[
            "verify",
            "--root",
            "root.json",
            "--hardware-class",
            "rpi4",
            "repo/public",
        ],
        1,
        &[],
    );
    assert!(run.stderr.contains("nothing would be installed"), "{}", run.stderr);
}

#[test]
fn publishing_needs_a_signed_release() {
    let workspace = prepared();
    create_release_1(&workspace);
    workspace.fails(
        &["repo", "publish", "--repo", "repo", "--keys", "keys", "1"],
        1,
        &[
            "could not publish release 1",
            "run `molt release sign --repo repo --keys keys 1` first",
        ],
    );
    // Signing is all it lacked.
    workspace.ok(&["release", "sign", "--repo", "repo", "--keys", "keys", "1"]);
    let published = workspace.json(&["repo", "publish", "--repo", "repo", "--keys", "keys", "1"]);
    assert_eq!(published["release_set"], 1, "{published}");
}

/// Errors that need no key material: each names the fix and has the right
/// exit code.
#[test]
fn bad_inputs_say_what_to_do_next() {
    let workspace = Workspace::new();
    workspace.write("agent.img", AGENT_V1);
    workspace.write("m.wasm", THRESHOLD_V1);
    workspace.write("list.json", b"[1, 2]");
    let create = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
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
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let cases: Vec<(Vec<String>, i32, Vec<&str>)> = vec![
        (
            create(&["--agent", "rpi4=agent.img@1.0.0"]),
            1,
            vec!["key directory keys does not exist; create it with `molt keys init keys`"],
        ),
        (
            ["release", "sign", "--repo", "repo", "--keys", "nokeys", "1"]
                .map(str::to_owned)
                .to_vec(),
            1,
            vec!["key directory nokeys does not exist; create it with `molt keys init nokeys`"],
        ),
        (
            ["repo", "refresh", "--repo", "repo", "--keys", "agent.img"]
                .map(str::to_owned)
                .to_vec(),
            1,
            vec!["agent.img is not a directory"],
        ),
        (
            create(&["--policy", "threshold=m.wasm"]),
            2,
            vec![
                "invalid value 'threshold=m.wasm' for '--policy",
                "expected NAME=PATH@VERSION[:CONFIG]",
            ],
        ),
        (
            create(&["--policy", "threshold=m.wasm@1.0"]),
            2,
            vec!["expected NAME=PATH@VERSION[:CONFIG]"],
        ),
        (
            create(&["--agent", "rpi 4=agent.img@1.0.0"]),
            2,
            vec!["hardware class `rpi 4` must be"],
        ),
        (create(&[]), 2, vec!["a release needs at least one --agent or --policy"]),
        (
            create(&["--agent", "rpi4=agent.img@1.0.0", "--agent", "rpi4=agent.img@1.0.1"]),
            2,
            vec!["hardware class `rpi4` is given twice"],
        ),
        (
            create(&["--policy", "p=missing.wasm@1.0.0"]),
            1,
            vec!["missing.wasm, is not a file; check the path given with --policy"],
        ),
        (
            create(&["--policy", "p=m.wasm@1.0.0:list.json"]),
            1,
            vec!["list.json of policy `p` is not a JSON object", "drop `:CONFIG`"],
        ),
        (
            ["keys", "init", "k", "--root-keys", "2", "--root-threshold", "3"]
                .map(str::to_owned)
                .to_vec(),
            2,
            vec!["--root-threshold 3 is out of range; give 1 to --root-keys (2)"],
        ),
        (
            ["keys", "rotate", "nokeys", "--role", "root"]
                .map(str::to_owned)
                .to_vec(),
            1,
            vec!["create it with `molt keys init nokeys`"],
        ),
        (
            ["keys", "rotate", "k", "--role", "admin"].map(str::to_owned).to_vec(),
            2,
            vec!["invalid value 'admin'"],
        ),
        (
            [
                "repo",
                "publish",
                "--repo",
                "repo",
                "--keys",
                "k",
                "1",
                "--expires-timestamp",
                "1 day",
            ]
            .map(str::to_owned)
            .to_vec(),
            2,
            vec!["expected a number and a unit"],
        ),
        (
            ["verify", "--hardware-class", "rpi4", "."].map(str::to_owned).to_vec(),
            1,
            vec![". has no metadata/ directory; publish a release into it first"],
        ),
        (
            ["verify", "ftp://host/repo"].map(str::to_owned).to_vec(),
            2,
            vec!["`ftp://` sources are not supported"],
        ),
        (
            ["frobnicate"].map(str::to_owned).to_vec(),
            2,
            vec!["unrecognized subcommand 'frobnicate'"],
        ),
    ];
    for (args, code, expect) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workspace.fails(&args, *code, expect);
    }
    // No command above created anything.
    assert!(!workspace.path("repo").exists());
    assert!(!workspace.path("k").exists());

    // With --json, the error is also one document on stdout.
    let run = workspace.fails(&["--json", "keys", "rotate", "nokeys", "--role", "root"], 1, &[]);
    let error: Value = serde_json::from_str(&run.stdout).expect("JSON error document");
    assert_eq!(error["error"]["kind"], "failure", "{error}");
    assert_eq!(
        error["error"]["message"], "key directory nokeys does not exist; create it with `molt keys init nokeys`",
        "{error}"
    );
}

#[test]
fn verify_without_a_root_asks_for_one() {
    let workspace = prepared();
    std::fs::create_dir_all(workspace.path("public/metadata")).expect("mkdir");
    workspace.fails(
        &["verify", "public"],
        2,
        &["--root is required", "molt keys root <KEYS> --output root.json"],
    );
    workspace.fails(
        &["verify", "--root", "nothere.json", "public"],
        1,
        &["could not read --root nothere.json; export it with `molt keys root <KEYS> --output nothere.json`"],
    );
    workspace.fails(
        &["verify", "--root", "root.json", "."],
        1,
        &["is a repository workspace", "public"],
    );
}

#[test]
fn help_teaches_the_next_step() {
    let workspace = Workspace::new();
    let help = workspace.ok(&["--help"]);
    for expected in [
        "keys",
        "release",
        "repo",
        "verify",
        "tuf-client",
        "demo",
        "  molt demo\n",
        "Release for real devices:",
        "Exit codes: 0",
    ] {
        assert!(help.contains(expected), "molt --help lacks `{expected}`:\n{help}");
    }
    for (command, expected) in [
        (
            &["keys", "init", "--help"][..],
            "molt keys root <DIR> --output root.json",
        ),
        (
            &["release", "create", "--help"][..],
            "--policy NAME=PATH@VERSION[:CONFIG]",
        ),
        (&["release", "sign", "--help"][..], "molt repo publish"),
        (&["repo", "publish", "--help"][..], "molt verify --root root.json"),
        (&["verify", "--help"][..], "Exit codes: 0"),
        (&["tuf-client", "--help"][..], "Conformance"),
    ] {
        let help = workspace.ok(command);
        assert!(help.contains(expected), "molt {command:?} lacks `{expected}`:\n{help}");
    }
}

#[test]
fn fleet_sim_stops_a_bad_release_and_replays_from_its_seed() {
    let workspace = Workspace::new();
    let args = [
        "fleet-sim",
        "--scenario",
        "healthy",
        "--devices",
        "20000",
        "--seed",
        "3",
        "--model",
        "*=drift:3",
    ];
    let first = workspace.json(&args);
    assert_eq!(first["report"]["outcome"], "rolled_back", "{first:#}");
    let reason = first["report"]["deciding"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("latency_ms"), "{reason}");
    assert_eq!(workspace.json(&args), first, "the same seed replays the same run");
    workspace.fails(
        &["fleet-sim", "--model", "jetson=traps"],
        2,
        &["--model \"jetson=traps\": traps needs a factor", "'jetson=traps:3'"],
    );
}
