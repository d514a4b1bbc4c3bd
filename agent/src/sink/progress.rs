//! A progress bar on stderr, shown only when stderr is a terminal (scripts and CI logs
//! get no control characters).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Progress of a scan: entries done (of a known total, when there is one) and bytes.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `total` entries, or a spinner when the total is unknown.
    pub fn new(total: Option<u64>, action: &'static str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} entries, {msg} ({eta} left)",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} {prefix} {pos} entries, {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(action);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// No progress shown (the daemon).
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// One more entry; `bytes_hashed` is the running total.
    pub fn entry(&self, bytes_hashed: u64) {
        self.bar.inc(1);
        if self.bar.position().is_multiple_of(512) {
            self.bar
                .set_message(format!("{} hashed", indicatif::HumanBytes(bytes_hashed)));
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
