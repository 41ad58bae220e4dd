//! Where start-up time goes: `RUST_LOG=info kalive` prints it once attached
//! (`cargo xtask bench` reads it).

use std::{
    fmt,
    time::{Duration, Instant},
};

/// Named steps, each timed from the end of the one before.
#[derive(Debug)]
pub struct Timings {
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timings {
    #[must_use]
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// Ends the step `name`: the time since the previous step ended.
    pub fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    /// Splits the last step into named parts measured inside it; what the
    /// parts do not cover stays with the step.
    pub fn split_last(&mut self, parts: &[(&'static str, Duration)]) {
        let Some((name, total)) = self.steps.pop() else {
            return;
        };
        let covered: Duration = parts.iter().map(|&(_, d)| d).sum();
        self.steps
            .extend(parts.iter().copied().filter(|&(_, d)| !d.is_zero()));
        self.steps.push((name, total.saturating_sub(covered)));
    }
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} ms", ms(self.last - self.start))?;
        for (i, (name, d)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{name} {:.1}", ms(*d))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times one call, adding its duration to `total`.
pub fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *total += start.elapsed();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_the_total_and_the_remainder() {
        let mut t = Timings::start();
        t.steps.push(("a", Duration::from_millis(2)));
        t.steps.push(("load", Duration::from_millis(10)));
        t.last = t.start + Duration::from_millis(12);
        t.split_last(&[
            ("verifier", Duration::from_millis(6)),
            ("none", Duration::ZERO),
            ("attach", Duration::from_millis(3)),
        ]);
        assert_eq!(
            t.to_string(),
            "12.0 ms: a 2.0, verifier 6.0, attach 3.0, load 1.0"
        );
    }
}
