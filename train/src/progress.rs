//! Progress of a training loop: a bar on a terminal; without one (a log file, CI) the bar is
//! hidden and a plain line is printed every 5 % of the steps.

use std::{io::IsTerminal as _, time::Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress of one loop.
pub(crate) struct StepProgress {
    pub(crate) bar: ProgressBar,
    plain_every: Option<usize>,
    label: String,
    unit: &'static str,
    steps: usize,
    first_step: usize,
    started: Instant,
}

impl StepProgress {
    /// `label` prefixes the bar and the lines; `unit` names what a step's samples are.
    pub(crate) fn new(label: String, unit: &'static str, steps: usize, first_step: usize, hidden: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(steps as u64),
            if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30.cyan/blue} {pos}/{len} steps, {msg}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.clone());
        bar.set_position(first_step as u64);
        let plain_every = (!hidden && !std::io::stderr().is_terminal()).then(|| (steps / 20).max(1));
        Self { bar, plain_every, label, unit, steps, first_step, started: Instant::now() }
    }

    /// Records step `done` (1-based): its loss and samples per second.
    pub(crate) fn step(&self, done: usize, loss: f64, rate: f64) {
        self.bar.set_message(format!("loss {loss:.4}, {rate:.2} {}/s", self.unit));
        self.bar.inc(1);
        if self.plain_every.is_some_and(|every| done.is_multiple_of(every) || done == self.steps) {
            let per_step = self.started.elapsed().as_secs_f64() / (done - self.first_step) as f64;
            eprintln!(
                "{} step {done}/{}: loss {loss:.4}, {rate:.2} {}/s, eta {:.0} s",
                self.label,
                self.steps,
                self.unit,
                per_step * (self.steps - done) as f64
            );
        }
    }

    /// Seconds since the loop started.
    pub(crate) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
