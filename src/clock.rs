//! The shells' clock. Cores never read a clock: they are given `now`. Shells are given a
//! `Clock`, so a test can run them on tokio's paused time and step through a deadline without
//! waiting for it.
//!
//! Two readings: wall time (Unix milliseconds) for what is recorded and shown — when an order was
//! taken in, when a call was answered — and monotonic time (`tokio::time::Instant`) for timers.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct Clock {
    /// `None`: the system's wall clock. `Some(wall)`: wall time that starts at `wall` and
    /// follows tokio's clock from `base`, so pausing and advancing tokio's time moves it too.
    follows: Option<u64>,
    /// Where `mono_ms` (and a following wall time) count from.
    base: Instant,
}

impl Clock {
    /// The real clock.
    pub fn system() -> Clock {
        Clock {
            follows: None,
            base: Instant::now(),
        }
    }

    /// A clock whose wall time starts at `wall_ms` and then moves with tokio's (possibly paused)
    /// clock. For tests of shells: `tokio::time::pause()`, then `advance` past a deadline.
    pub fn following_tokio(wall_ms: u64) -> Clock {
        Clock {
            follows: Some(wall_ms),
            base: Instant::now(),
        }
    }

    /// Wall time, Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self.follows {
            None => now_ms(),
            Some(wall) => wall + self.base.elapsed().as_millis() as u64,
        }
    }

    /// Monotonic time, for timers and latency.
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// Monotonic milliseconds since the clock was made: for silences and rates, which a step
    /// of the wall clock (NTP) must not stretch or cut.
    pub fn mono_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Sleeps until wall time `at_ms` (at once if it has passed).
    pub fn sleep_until_ms(&self, at_ms: u64) -> tokio::time::Sleep {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms()));
        tokio::time::sleep_until(self.instant() + wait)
    }
}

/// The system's wall time, Unix milliseconds. For the command line, start-up and tests; shells
/// read their injected `Clock`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_following_clock_moves_with_paused_time() {
        let c = Clock::following_tokio(1_000_000);
        assert_eq!(c.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms(), 1_090_000);
        let t0 = c.instant();
        c.sleep_until_ms(1_100_000).await;
        assert_eq!(c.now_ms(), 1_100_000);
        assert_eq!(c.instant() - t0, Duration::from_secs(10));
        assert_eq!(c.mono_ms(), 100_000);
    }
}
