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
    std::fs::write(&config, text).expect("write config");

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
