//! `molt demo --ci` end to end: every step of the demo runs, at a lower
//! sensor rate and shorter phases than the default, and its one-line result
//! must show every promise kept.

use std::process::Command;

/// The counts on the last line, in the order the line gives them.
const KEYS: [&str; 8] = [
    "readings",
    "lost",
    "duplicated",
    "swaps",
    "reverts",
    "power-cuts",
    "recovered",
    "attacks-rejected",
];

/// Parses `demo: readings=N lost=0 ...`, requiring exactly these keys in
/// this order.
fn parse(line: &str) -> Result<[u64; 8], String> {
    let mut words = line.split(' ');
    if words.next() != Some("demo:") {
        return Err(format!("last line does not start with `demo:`: {line:?}"));
    }
    let mut values = [0u64; 8];
    for (index, key) in KEYS.iter().enumerate() {
        let word = words.next().ok_or_else(|| format!("`{key}` missing from {line:?}"))?;
        let value = word
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| format!("expected `{key}=` at {word:?} in {line:?}"))?;
        values[index] = value
            .parse()
            .map_err(|_| format!("`{key}` is not a count in {line:?}"))?;
    }
    match words.next() {
        None => Ok(values),
        Some(extra) => Err(format!("unexpected {extra:?} after the counts in {line:?}")),
    }
}

#[test]
fn demo_ci_keeps_every_promise() {
    let output = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args([
            "demo",
            "--ci",
            "--sensors",
            "4",
            "--rate-hz",
            "50",
            "--phase-ms",
            "400",
            "--image-mib",
            "1",
            "--power-cuts",
            "2",
        ])
        .output()
        .expect("run molt demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The demo prints its power-cut seed; a failure here replays with --seed.
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "{context}");
    let last = stdout.lines().last().unwrap_or_default();
    let counts = parse(last).unwrap_or_else(|error| panic!("{error}\n{context}"));
    let [
        readings,
        lost,
        duplicated,
        swaps,
        reverts,
        power_cuts,
        recovered,
        attacks_rejected,
    ] = counts;
    assert!(readings > 0, "{context}");
    assert_eq!((lost, duplicated), (0, 0), "{context}");
    // threshold and audit swap to v2 and to v3; both v3s trap and revert.
    assert!(swaps >= 4 && reverts >= 2, "{context}");
    assert!(power_cuts >= 1 && recovered == power_cuts, "{context}");
    assert_eq!(attacks_rejected, 2, "{context}");
}

#[test]
fn the_last_line_parser_is_strict() {
    let good = "demo: readings=5 lost=0 duplicated=0 swaps=4 reverts=2 power-cuts=1 recovered=1 attacks-rejected=2";
    assert_eq!(parse(good), Ok([5, 0, 0, 4, 2, 1, 1, 2]));
    for bad in [
        "readings=5 lost=0 duplicated=0 swaps=4 reverts=2 power-cuts=1 recovered=1 attacks-rejected=2",
        "demo: readings=5 duplicated=0 lost=0 swaps=4 reverts=2 power-cuts=1 recovered=1 attacks-rejected=2",
        "demo: readings=5 lost=0 duplicated=0 swaps=4 reverts=2 power-cuts=1 recovered=1",
        "demo: readings=5 lost=0 duplicated=0 swaps=4 reverts=2 power-cuts=1 recovered=1 attacks-rejected=2 x=1",
        "demo: readings=five lost=0 duplicated=0 swaps=4 reverts=2 power-cuts=1 recovered=1 attacks-rejected=2",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn demo_refuses_a_directory_that_is_not_empty() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    std::fs::write(dir.path().join("something"), b"x").expect("write a file");
    let output = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["demo", "--ci", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run molt demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
}
