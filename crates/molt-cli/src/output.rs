//! How commands speak: human text by default, one JSON document with
//! `--json`, errors that name the next step, and progress bars for long
//! transfers.
//!
//! Results go to stdout; errors and progress go to stderr, except that with
//! `--json` an error is also a JSON document on stdout, so a script reads
//! exactly one document whatever happened.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Exit code of a command that did what it was asked.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code of a command that failed.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line that does not make sense (clap uses it too).
pub(crate) const EXIT_USAGE: u8 = 2;

/// A command's result: the same facts for people and for scripts.
pub(crate) trait Report: Serialize {
    /// The human form, lines ending in `\n`.
    fn human(&self) -> String;
}

/// An error in how the command was invoked that clap cannot see (for
/// example a threshold above the number of keys); exits with
/// [`EXIT_USAGE`].
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Where a command writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

#[derive(Serialize)]
struct ErrorDocument<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    /// `failure` or `usage`, matching exit codes 1 and 2.
    kind: &'a str,
    /// The outermost message, which says what to do next.
    message: String,
    /// The causes, outermost first.
    causes: Vec<String>,
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output { json }
    }

    /// Whether `--json` was given (no progress output then).
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `report` in the chosen form.
    pub(crate) fn report<R: Report>(&self, report: &R) -> anyhow::Result<()> {
        let text = if self.json {
            let mut text = serde_json::to_string_pretty(report)?;
            text.push('\n');
            text
        } else {
            report.human()
        };
        write_stdout(&text)
    }

    /// Progress for a transfer: bars on a terminal, nothing otherwise or
    /// with `--json`.
    pub(crate) fn progress(&self) -> Bars {
        Bars {
            visible: !self.json && std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Prints a failed command's error and returns its exit code.
    pub(crate) fn error(&self, error: &anyhow::Error) -> u8 {
        let usage = error.downcast_ref::<UsageError>().is_some();
        let (kind, code) = if usage {
            ("usage", EXIT_USAGE)
        } else {
            ("failure", EXIT_FAILURE)
        };
        let message = error.to_string();
        let causes: Vec<String> = error.chain().skip(1).map(|cause| cause.to_string()).collect();
        let mut text = format!("error: {message}\n");
        for cause in &causes {
            text.push_str(&format!("  caused by: {cause}\n"));
        }
        if usage {
            text.push_str("\nFor more information, try '--help'.\n");
        }
        // A failure to report a failure has nowhere left to go.
        let _ = std::io::stderr().write_all(text.as_bytes());
        if self.json {
            let document = ErrorDocument {
                error: ErrorBody { kind, message, causes },
            };
            if let Ok(mut json) = serde_json::to_string_pretty(&document) {
                json.push('\n');
                let _ = write_stdout(&json);
            }
        }
        code
    }
}

/// Writes to stdout; a closed pipe (`molt ... | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// [`molt_release::download::Progress`] drawn with indicatif: one bar per
/// transfer, cleared when it ends.
#[derive(Debug)]
pub(crate) struct Bars {
    visible: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        // A panic elsewhere while drawing leaves at worst a stale bar.
        self.bar.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl molt_release::download::Progress for Bars {
    fn start(&self, name: &str, total: u64, resumed_at: u64) {
        if !self.visible {
            return;
        }
        let style = ProgressStyle::with_template(
            "{msg:32!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style);
        bar.set_message(name.to_owned());
        bar.set_position(resumed_at);
        if let Some(previous) = self.current().replace(bar) {
            previous.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.current().as_ref() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current().take() {
            bar.finish_and_clear();
        }
    }
}

/// Formats a byte count for people: `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}
