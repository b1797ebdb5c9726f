//! `molt server` and `molt device`: a real server from `molt server init`,
//! started with `molt server run`, driven over its HTTPS API.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    https_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn molt(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_molt"));
    command
        .current_dir(dir)
        .env_remove("MOLT_SERVER")
        .env_remove("MOLT_TOKEN")
        .env_remove("MOLT_CA");
    command
}

/// `molt server init`, then the config's listeners moved to free loopback
/// ports, then `molt server run` until it prints its addresses.
fn start(dir: &Path) -> Server {
    start_with(dir, |config| config)
}

/// [`start`], with the config changed by `edit` before the server runs.
fn start_with(dir: &Path, edit: impl Fn(String) -> String) -> Server {
    let out = molt(dir).args(["server", "init", "fleet"]).output().expect("run molt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "init failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("next: molt server run --config"),
        "init names the next command: {stdout}"
    );
    let config = dir.join("fleet/molt-server.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace("mqtt = \"0.0.0.0:8883\"", "mqtt = \"127.0.0.1:0\"")
        .replace("https = \"0.0.0.0:8443\"", "https = \"127.0.0.1:0\"");
    std::fs::write(&config, edit(text)).expect("write config");

    // A second init refuses to overwrite what the first wrote.
    let again = molt(dir).args(["server", "init", "fleet"]).output().expect("run molt");
    assert_eq!(again.status.code(), Some(1));
    let token_before = std::fs::read(dir.join("fleet/admin.token")).expect("token");

    let mut child = molt(dir)
        .args(["server", "run", "--config", "fleet/molt-server.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's first line");
    assert!(line.starts_with("molt-server listening"), "{line}");
    let https_port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("https="))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no https= address in {line:?}"));
    assert_eq!(
        std::fs::read(dir.join("fleet/admin.token")).expect("token"),
        token_before,
        "a refused second init left the admin token alone"
    );
    Server { child, https_port }
}

#[test]
fn server_init_run_and_device_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    let url = format!("https://localhost:{}", server.https_port);
    let api = |args: &[&str]| {
        molt(dir.path())
            .env("MOLT_SERVER", &url)
            .env("MOLT_CA", "fleet/device-ca.pem")
            .env(
                "MOLT_TOKEN",
                std::fs::read_to_string(dir.path().join("fleet/admin.token"))
                    .expect("token")
                    .trim(),
            )
            .args(args)
            .output()
            .expect("run molt")
    };

    // An enrollment token, as JSON.
    let out = api(&[
        "device",
        "--json",
        "enroll",
        "--uses",
        "3",
        "--hardware-class",
        "rpi4",
        "--tag",
        "site=berlin",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).expect("enroll --json is JSON");
    assert!(
        token["token"].as_str().expect("token").starts_with("molt_enroll_"),
        "{token}"
    );
    assert_eq!(token["uses"], 3);

    // No device has enrolled yet.
    let out = api(&["device", "--json", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    assert_eq!(devices, serde_json::json!([]));

    // Refusals carry the server's code and message, and exit 1.
    let out = api(&["device", "show", "no-such-device"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not_found"), "{stderr}");
    let out = api(&["device", "enroll", "--uses", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.enrollment_token_uses_max"), "{stderr}");
    let out = api(&["device", "tag", "x", "not-a-pair"]);
    assert_eq!(out.status.code(), Some(2), "a malformed tag is a usage error");

    // Groups: a dynamic one by query, a static one naming an unknown device.
    let out = api(&[
        "group",
        "--json",
        "create",
        "berlin",
        "--query",
        "hardware_class=rpi4,site=berlin",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let group: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(group["query"], "hardware_class=rpi4,site=berlin");
    assert_eq!(group["devices"], serde_json::json!([]));
    let out = api(&["group", "create", "berlin", "--query", "site=berlin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_exists"));
    let out = api(&["group", "create", "pilot", "--device", "gw-404"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    let out = api(&["group", "create", "odd", "--query", "site"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_query_invalid"));
    let out = api(&["group", "create", "empty"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "neither --query nor --device is a usage error"
    );
    let out = api(&["group", "--json", "list"]);
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    let out = api(&["group", "set", "berlin", "gw-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_dynamic"));
    let out = api(&["group", "delete", "berlin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Alerts: none yet; an unknown one and an unknown state are refused.
    let out = api(&["alert", "--json", "list", "--state", "open"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON"),
        serde_json::json!([])
    );
    let out = api(&["alert", "ack", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    let out = api(&["alert", "list", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("alert_state_invalid"));

    // A wrong token, and no token at all.
    let out = molt(dir.path())
        .env("MOLT_SERVER", &url)
        .env("MOLT_CA", "fleet/device-ca.pem")
        .env("MOLT_TOKEN", "not-a-token")
        .args(["device", "list"])
        .output()
        .expect("run molt");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    let out = molt(dir.path())
        .env("MOLT_SERVER", &url)
        .args(["device", "list"])
        .output()
        .expect("run molt");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MOLT_TOKEN"));

    // SIGTERM stops the server cleanly.
    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "the server exits 0 after SIGTERM: {status}");
}

/// `molt repo push`: the server verifies an upload as a device would,
/// serves it at /repo/ with Range requests, refuses a tampered one, and
/// keeps the timestamp fresh with the online key alone.
#[test]
fn repo_push_is_verified_served_and_kept_fresh() {
    let workspace = crate::cli::prepared();
    crate::cli::create_release_1(&workspace);
    workspace.ok(&["release", "sign", "--repo", "repo", "--keys", "keys", "1"]);
    workspace.ok(&["repo", "publish", "--repo", "repo", "--keys", "keys", "1"]);
    // The server holds the online timestamp key (a path relative to its
    // data directory) and re-signs whenever the timestamp expires within a
    // year: every second, here.
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workspace.path("keys/keys.json")).expect("keys.json")).expect("JSON");
    let timestamp_key = format!(
        "timestamp_key = \"../keys/{}.pem\"",
        keys["roles"]["timestamp"]["keys"][0].as_str().expect("a timestamp key")
    );
    let server = start_with(workspace.dir.path(), |config| {
        config
            .replace("# timestamp_key = \"KEYID.pem\"", &timestamp_key)
            .replace(
                "timestamp_resign_before_s = 21600",
                "timestamp_resign_before_s = 31536000",
            )
            .replace("timestamp_check_interval_s = 60", "timestamp_check_interval_s = 1")
    });
    let url = format!("https://localhost:{}", server.https_port);
    let served = workspace.path("fleet/repository/public");
    let verify_served = || {
        workspace.json(&[
            "verify",
            "--root",
            "root.json",
            "--hardware-class",
            "rpi4",
            served.to_str().expect("UTF-8 path"),
        ])
    };
    let push = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "repo",
            "push",
            "--repo",
            "repo",
            "--server",
            &url,
            "--ca",
            "fleet/device-ca.pem",
            "--token-file",
            "fleet/admin.token",
        ];
        args.extend_from_slice(extra);
        workspace.run(&args)
    };

    // The first push must pin the root.
    let refused = push(&[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("root_not_pinned"), "{refused:?}");
    let pushed = push(&["--pin-root"]);
    assert_eq!(pushed.code, 0, "{pushed:?}");
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout).expect("JSON");
    assert_eq!(pushed["release_set"], 1, "{pushed}");
    assert_eq!(pushed["hardware_classes"], serde_json::json!(["rpi4"]), "{pushed}");
    assert_eq!(pushed["root_pinned"], true, "{pushed}");
    assert!(pushed["files_uploaded"].as_u64().expect("count") >= 6, "{pushed}");
    let verified = verify_served();
    assert_eq!(verified["release"]["version"], 1, "{verified}");
    // Over HTTPS without the server's CA: refused at once, saying why.
    let started = std::time::Instant::now();
    let untrusted = Command::new(env!("CARGO_BIN_EXE_molt"))
        .current_dir(workspace.dir.path())
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .args(["verify", "--root", "root.json", "--hardware-class", "rpi4"])
        .arg(format!("{url}/repo/"))
        .output()
        .expect("run molt verify");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS certificate that is not trusted"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "an untrusted certificate is not retried: {:?}",
        started.elapsed()
    );
    // And over HTTPS, as a device fetches it, trusting the server's CA.
    let over_https = Command::new(env!("CARGO_BIN_EXE_molt"))
        .current_dir(workspace.dir.path())
        .env("SSL_CERT_FILE", "fleet/device-ca.pem")
        .args(["--json", "verify", "--root", "root.json", "--hardware-class", "rpi4"])
        .arg(format!("{url}/repo/"))
        .output()
        .expect("run molt verify");
    assert!(
        over_https.status.success(),
        "{}",
        String::from_utf8_lossy(&over_https.stderr)
    );
    let over_https: serde_json::Value = serde_json::from_slice(&over_https.stdout).expect("JSON");
    assert_eq!(over_https["release"]["version"], 1, "{over_https}");

    // Served over HTTPS, with Range requests.
    let token = std::fs::read_to_string(workspace.path("fleet/admin.token")).expect("token");
    let http = Https::new(&workspace.path("fleet/device-ca.pem"), token.trim());
    let agent_target = find_file(&served.join("targets"), &crate::cli::sha256_hex(crate::cli::AGENT_V1));
    let relative = agent_target
        .strip_prefix(&served)
        .expect("under served")
        .to_str()
        .expect("UTF-8")
        .to_owned();
    let (status, body) = http.get(&format!("{url}/repo/{relative}"), Some("bytes=10-19"));
    assert_eq!(status, 206);
    assert_eq!(body, &crate::cli::AGENT_V1[10..20]);
    let (status, _) = http.get(&format!("{url}/repo/metadata/99.root.json"), None);
    assert_eq!(status, 404);

    // The server re-signs the timestamp on its own; devices accept it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let (_, body) = http.get(&format!("{url}/api/v1/repository"), None);
        let status: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        if status["timestamp_version"].as_u64() > pushed["timestamp_version"].as_u64() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "never re-signed: {status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status["timestamp_key"], true, "{status}");
    assert_eq!(verify_served()["release"]["version"], 1);

    // A tampered target is refused, and what was served is unchanged.
    let timestamp_before = std::fs::read(served.join("metadata/timestamp.json")).expect("timestamp");
    let files_before = listing(&served);
    // Release 2 carries policies only: a new threshold policy.
    workspace.ok(&[
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
        "--policy",
        "threshold=threshold-0.2.0.wasm@0.2.0:threshold.json",
    ]);
    workspace.ok(&["release", "sign", "--repo", "repo", "--keys", "keys", "2"]);
    workspace.ok(&["repo", "publish", "--repo", "repo", "--keys", "keys", "2"]);
    let threshold = find_file(
        &workspace.path("repo/public/targets"),
        crate::cli::sha256_hex(molt_guests::THRESHOLD_C).as_str(),
    );
    let original = std::fs::read(&threshold).expect("target");
    let mut tampered = original.clone();
    tampered[100] ^= 1;
    std::fs::write(&threshold, &tampered).expect("tamper");
    let refused = push(&[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("repository_invalid"), "{refused:?}");
    assert_eq!(listing(&served), files_before, "nothing of release 2 is served");
    let timestamp_now = std::fs::read(served.join("metadata/timestamp.json")).expect("timestamp");
    let version =
        |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).expect("JSON")["signed"]["version"].clone();
    assert!(version(&timestamp_now).as_u64() >= version(&timestamp_before).as_u64());

    // Put right, release 2 goes out: the operator's timestamp is older than
    // the server's re-signed one, so the server signs the next version.
    std::fs::write(&threshold, &original).expect("restore");
    let pushed = push(&[]);
    assert_eq!(pushed.code, 0, "{pushed:?}");
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout).expect("JSON");
    assert_eq!(pushed["release_set"], 2, "{pushed}");
    assert_eq!(pushed["timestamp_resigned"], true, "{pushed}");
    assert!(
        pushed["files_skipped"].as_u64().expect("count") >= 1,
        "served targets are not sent again: {pushed}"
    );
    assert_eq!(verify_served()["release"]["version"], 2);

    // A second --pin-root is refused: devices follow rotations instead.
    let again = push(&["--pin-root"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stdout.contains("root_already_pinned"), "{again:?}");

    // Counted: two pushes served, three refused, the timestamp re-signed.
    let (_, metrics) = http.get(&format!("{url}/metrics"), None);
    let metrics = String::from_utf8(metrics).expect("UTF-8");
    assert!(metrics.contains("molt_repository_pushes_total 2\n"), "{metrics}");
    assert!(
        metrics.contains("molt_repository_pushes_refused_total 3\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("molt_repository_timestamps_resigned_total 0\n"),
        "{metrics}"
    );
    drop(server);
}

/// A small HTTPS client trusting the server's CA, for what the CLI does not do.
struct Https {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: String,
}

impl Https {
    fn new(ca: &Path, token: &str) -> Https {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("CA")).expect("PEM");
        Https {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: reqwest::Client::builder().tls_certs_only([ca]).build().expect("client"),
            token: token.to_owned(),
        }
    }

    /// `GET url` with an optional `Range`: the status and the body.
    fn get(&self, url: &str, range: Option<&str>) -> (u16, Vec<u8>) {
        self.runtime.block_on(async {
            let mut request = self.client.get(url).bearer_auth(&self.token);
            if let Some(range) = range {
                request = request.header("Range", range);
            }
            let response = request.send().await.expect("GET");
            let status = response.status().as_u16();
            (status, response.bytes().await.expect("body").to_vec())
        })
    }
}

/// The file under `dir` whose name contains `needle`.
fn find_file(dir: &Path, needle: &str) -> std::path::PathBuf {
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(needle))
            {
                return path;
            }
        }
    }
    panic!("no file with {needle} under {}", dir.display());
}

/// Every file under `dir` with its length, but `timestamp.json`, which the
/// server re-signs on its own.
fn listing(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if !path.ends_with("metadata/timestamp.json") {
                let length = std::fs::metadata(&path).expect("metadata").len();
                files.push((path, length));
            }
        }
    }
    files.sort();
    files
}

/// A release set with two hardware classes: the server downloads and hashes
/// every class's agent image before it serves anything, the first class's
/// as much as the last's.
#[test]
fn repo_push_verifies_every_hardware_class() {
    let workspace = crate::cli::prepared();
    workspace.write("agent-x86.img", b"agent image 1.0.0 for x86; other bytes than rpi4's");
    workspace.ok(&[
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
        "--agent",
        "x86=agent-x86.img@1.0.0",
        "--policy",
        "threshold=threshold-0.1.0.wasm@0.1.0:threshold.json",
    ]);
    workspace.ok(&["release", "sign", "--repo", "repo", "--keys", "keys", "1"]);
    workspace.ok(&["repo", "publish", "--repo", "repo", "--keys", "keys", "1"]);
    let server = start(workspace.dir.path());
    let url = format!("https://localhost:{}", server.https_port);
    let push = || {
        workspace.run(&[
            "--json",
            "repo",
            "push",
            "--repo",
            "repo",
            "--server",
            &url,
            "--ca",
            "fleet/device-ca.pem",
            "--token-file",
            "fleet/admin.token",
            "--pin-root",
        ])
    };
    // rpi4 is the first class the server checks.
    let image = find_file(
        &workspace.path("repo/public/targets"),
        &crate::cli::sha256_hex(crate::cli::AGENT_V1),
    );
    let original = std::fs::read(&image).expect("image");
    let mut tampered = original.clone();
    tampered[0] ^= 1;
    std::fs::write(&image, &tampered).expect("tamper");
    let refused = push();
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("repository_invalid"), "{refused:?}");
    assert!(
        !workspace
            .path("fleet/repository/public/metadata/timestamp.json")
            .exists(),
        "nothing is served"
    );

    std::fs::write(&image, &original).expect("restore");
    let pushed = push();
    assert_eq!(pushed.code, 0, "{pushed:?}");
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout).expect("JSON");
    assert_eq!(
        pushed["hardware_classes"],
        serde_json::json!(["rpi4", "x86"]),
        "{pushed}"
    );
    drop(server);
}
