//! The power-cut simulator, run as a test: at least 10,000 runs by default,
//! `MOLT_CRASH_RUNS=<n>` for more, zero failures required.

use std::io::Write;

use molt_core::sim::{CrashReport, CrashSimConfig, Sabotage, run};

fn print_failures(report: &CrashReport) {
    for failure in report.failures.iter().take(20) {
        eprintln!("{}", failure.describe(report));
    }
    if report.failures.len() > 20 {
        eprintln!("... and {} more failures", report.failures.len() - 20);
    }
}

#[test]
fn power_cuts_at_every_operation_never_brick() {
    let config = CrashSimConfig::from_env().unwrap();
    let report = run(&config).unwrap();
    print_failures(&report);
    // Straight to the process's stderr, past libtest's capture, so the line
    // shows in every test run, passing or not.
    std::io::stderr().write_all(format!("{report}\n").as_bytes()).unwrap();
    if config.only.is_none() {
        assert!(report.runs >= config.runs_min.max(10_000), "only {} runs", report.runs);
    }
    assert_eq!(report.failures.len(), 0, "{report}");
}

/// The oracle must catch a broken durability protocol; a simulator that
/// cannot fail proves nothing.
#[test]
fn oracle_catches_a_record_rename_without_fsync() {
    check_sabotage_is_caught(Sabotage::SkipRecordSync);
}

/// Without the directory fsync, a renamed record can vanish after commit
/// returned Ok.
#[test]
fn oracle_catches_a_record_replace_without_directory_fsync() {
    check_sabotage_is_caught(Sabotage::SkipRecordDirSync);
}

fn check_sabotage_is_caught(sabotage: Sabotage) {
    // Only the exhaustive plan: random top-up runs are not needed to find it.
    let config = CrashSimConfig {
        runs_min: 0,
        sabotage,
        ..CrashSimConfig::default()
    };
    let report = run(&config).unwrap();
    let first = report.failures.first().map(|failure| failure.describe(&report));
    println!("{sabotage:?}: {report}\n  first: {first:?}");
    assert!(
        report.failures.iter().all(|failure| failure.case.starts_with("files ")),
        "sabotage only touches the file back end"
    );
    assert!(!report.failures.is_empty(), "{sabotage:?} went unnoticed: {report}");
}
