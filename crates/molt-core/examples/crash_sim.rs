//! Runs the power-cut simulator and prints its report line.
//!
//! `cargo xtask crash-sim` runs this in release mode. Environment:
//! `MOLT_CRASH_RUNS` (default 10,000), `MOLT_CRASH_SEED`, `MOLT_CRASH_ONLY`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molt_core::sim::{CrashSimConfig, run};

fn main() -> ExitCode {
    let mut config = match CrashSimConfig::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("crash-sim: {message}");
            return ExitCode::from(2);
        }
    };
    let progress = Arc::new(AtomicU64::new(0));
    config.progress = Some(Arc::clone(&progress));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let reporter = {
        let (progress, done, runs_min) = (Arc::clone(&progress), Arc::clone(&done), config.runs_min);
        let interactive = std::io::stderr().is_terminal();
        std::thread::spawn(move || {
            let mut last_print = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let period = if interactive {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(10)
                };
                if last_print.elapsed() < period {
                    continue;
                }
                last_print = Instant::now();
                let runs = progress.load(Ordering::Relaxed);
                let rate = runs as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let line = format!("crash-sim: {runs} runs of at least {runs_min}, {rate:.0} runs/s");
                if interactive {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
                let _ = std::io::stderr().flush();
            }
            if interactive {
                eprint!("\r{:60}\r", "");
            }
        })
    };
    let outcome = run(&config);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let report = match outcome {
        Ok(report) => report,
        Err(message) => {
            eprintln!("crash-sim: could not start: {message}");
            return ExitCode::from(2);
        }
    };
    for failure in report.failures.iter().take(20) {
        eprintln!("{}", failure.describe(&report));
    }
    if report.failures.len() > 20 {
        eprintln!("... and {} more failures", report.failures.len() - 20);
    }
    eprintln!("crash-sim: finished in {:.1} s", started.elapsed().as_secs_f64());
    println!("{report}");
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
