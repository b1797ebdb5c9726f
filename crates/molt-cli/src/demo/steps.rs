//! One line per step: a spinner on a terminal, plain lines with `--ci`.
//! Everything here goes to stderr; the summary goes to stdout.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Steps {
    plain: bool,
    index: usize,
    total: usize,
}

pub(crate) struct Step {
    bar: Option<ProgressBar>,
    prefix: String,
    started: Instant,
}

impl Steps {
    pub(crate) fn new(plain: bool, total: usize) -> Steps {
        Steps { plain, index: 0, total }
    }

    pub(crate) fn begin(&mut self, title: &str) -> Step {
        self.index += 1;
        let prefix = format!("[{}/{}] {title}", self.index, self.total);
        let bar = if self.plain {
            eprintln!("{prefix} ...");
            None
        } else {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(prefix.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        };
        Step {
            bar,
            prefix,
            started: Instant::now(),
        }
    }
}

impl Step {
    /// A transient status (spinner only).
    pub(crate) fn status(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
    }

    /// A line that stays in the output.
    pub(crate) fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("      {line}")),
            None => eprintln!("      {line}"),
        }
    }

    pub(crate) fn finish(self, ok: bool, summary: &str) {
        let mark = if ok { "ok" } else { "FAILED" };
        let line = format!(
            "{} {mark} in {:.1} s: {summary}",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        );
        match self.bar {
            Some(bar) => {
                bar.finish_and_clear();
                eprintln!("{} {line}", if ok { "✔" } else { "✘" });
            }
            None => eprintln!("{line}"),
        }
    }
}
