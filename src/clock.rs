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

    /// Wall time, Unix microseconds: what orders connections made within one millisecond.
    pub fn now_us(&self) -> u64 {
        match self.follows {
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
            Some(wall) => wall * 1000 + self.base.elapsed().as_micros() as u64,
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

// Howard Hinnant's algorithms: days since 1970-01-01 to and from a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
        tokio::time::advance(Duration::from_micros(250)).await;
        assert_eq!(c.now_us(), 1_100_000_250);
    }
}
