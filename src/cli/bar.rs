//! The progress bar on standard error, for runs on a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, in bytes.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    pub(crate) fn new(message: &'static str) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_message(message);
        Bar(bar)
    }

    pub(crate) fn set_total(&self, total: Option<u64>) {
        match total {
            Some(total) if self.0.length() != Some(total) => {
                self.0.set_length(total);
                self.0.set_style(bar_style());
            }
            Some(_) => {}
            None if self.0.length().is_some() => {
                self.0.unset_length();
                self.0.set_style(spinner_style());
            }
            None => {}
        }
    }
}

pub(crate) fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:7} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta:3}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

pub(crate) fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg:7} {bytes:>10} {binary_bytes_per_sec:>12} {elapsed}")
        .expect("a valid template")
}

impl ckpt::Progress for Bar {
    fn start(&self, total: u64) {
        self.set_total(Some(total));
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
