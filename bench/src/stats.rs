//! Side-by-side timing: alternate rounds of two closures and summarise.

use std::time::{Duration, Instant};

/// Medians of one side over all rounds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Median of the per-round medians.
    pub median: Duration,
    /// Smallest per-round median.
    pub min: Duration,
    /// Largest per-round median.
    pub max: Duration,
}

impl Summary {
    fn of(mut rounds: Vec<Duration>) -> Summary {
        rounds.sort();
        Summary {
            median: rounds[rounds.len() / 2],
            min: rounds[0],
            max: rounds[rounds.len() - 1],
        }
    }

    /// `median (min–max)` in a readable unit.
    pub fn show(&self) -> String {
        format!("{} ({}–{})", fmt(self.median), fmt(self.min), fmt(self.max))
    }
}

/// A duration in µs or ms.
pub fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// Runs `rounds` rounds; in each, `per_round` calls of `a` then of `b` (the order
/// flips every round), and keeps the median call time of each side per round.
pub fn side_by_side(rounds: usize, per_round: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Summary, Summary) {
    let mut ra = Vec::with_capacity(rounds);
    let mut rb = Vec::with_capacity(rounds);
    let time = |f: &mut dyn FnMut()| {
        let mut calls: Vec<Duration> = (0..per_round)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        calls.sort();
        calls[calls.len() / 2]
    };
    for round in 0..rounds {
        if round % 2 == 0 {
            ra.push(time(&mut a));
            rb.push(time(&mut b));
        } else {
            rb.push(time(&mut b));
            ra.push(time(&mut a));
        }
    }
    (Summary::of(ra), Summary::of(rb))
}

/// `b / a`, one decimal.
pub fn ratio(a: &Summary, b: &Summary) -> String {
    format!("{:.1}×", b.median.as_secs_f64() / a.median.as_secs_f64())
}
