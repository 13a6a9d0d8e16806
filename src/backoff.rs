//! The one retry schedule for waiting out Redis or Kafka: exponential from 100-200 ms up to
//! 2.5-5 s, with jitter (so instances that lost Redis together do not come back in lockstep), reset after every
//! success (so a short outage after a long one is not waited out at the long one's pace).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

const FIRST: Duration = Duration::from_millis(100);
/// The longest wait: jitter adds up to the delay itself on top of half of it.
const MAX: Duration = Duration::from_secs(5);

pub struct Backoff {
    schedule: ExponentialBackoff,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            schedule: builder().build(),
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.schedule.next().unwrap_or(MAX)
    }

    /// Starts over from the shortest delay: the last attempt succeeded.
    pub fn reset(&mut self) {
        self.schedule = builder().build();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

fn builder() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST)
        .with_max_delay(MAX / 2)
        .without_max_times()
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!((FIRST..=FIRST * 2).contains(&first), "{first:?}");
        let late: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).skip(10).collect();
        assert!(late.iter().all(|d| *d >= MAX / 2 && *d <= MAX), "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST * 2);
    }
}
