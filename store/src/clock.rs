//! The clock retention measures age with: wall time that never runs ahead of the monotonic
//! clock.
//!
//! Write times are stored as wall-clock stamps (they are shown to users and survive
//! restarts), but a wall clock can jump: an NTP step, a VM resumed after days, an operator's
//! typo. If retention trusted it, a clock stepped 40 days ahead would make every generation
//! look expired and the next sweep would drop the whole store. So between sweeps the
//! retention clock advances by at most what the monotonic clock says has passed:
//! `now = min(wall, previous now + monotonic elapsed)`. A forward jump is thereby ignored
//! (data written before it ages at the real rate; data stamped after it lives longer, the
//! safe side), and a backward jump is followed (data then looks younger, also the safe side).
//! Across a restart there is no monotonic reference, so the first reading is the wall clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A jump of the wall clock against the monotonic one beyond this (plus 1 % of the time
/// between readings, for slewing) is reported.
const TOLERANCE: Duration = Duration::from_secs(2);

/// Retention's notion of now; one per running sweep loop.
#[derive(Debug, Default)]
pub struct RetentionClock {
    /// (wall clock, retention clock, monotonic instant) at the previous reading.
    last: Option<(SystemTime, SystemTime, Instant)>,
}

/// One reading of the retention clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The time retention compares write stamps with.
    pub now: SystemTime,
    /// How far the wall clock moved against the monotonic clock since the previous reading
    /// (positive: forward), when that is beyond the tolerance.
    pub jump: Option<(bool, Duration)>,
    /// How far the retention clock is behind the wall clock.
    pub behind: Duration,
}

impl RetentionClock {
    /// Reads the clock from the system's wall and monotonic clocks.
    pub fn read(&mut self) -> Reading {
        self.read_at(SystemTime::now(), Instant::now())
    }

    /// Reads the clock given the wall and monotonic time (testable without a real jump).
    pub fn read_at(&mut self, wall: SystemTime, mono: Instant) -> Reading {
        let (now, jump) = match self.last {
            None => (wall, None),
            Some((last_wall, last_now, last_mono)) => {
                let elapsed = mono.saturating_duration_since(last_mono);
                let limit = last_now + elapsed;
                let jump = match wall.duration_since(last_wall) {
                    Ok(fwd) => fwd.checked_sub(elapsed).map(|d| (true, d)),
                    Err(back) => Some((false, back.duration() + elapsed)),
                }
                .filter(|(_, d)| *d > TOLERANCE + elapsed / 100);
                (wall.min(limit), jump)
            }
        };
        self.last = Some((wall, now, mono));
        Reading {
            now,
            jump,
            behind: wall.duration_since(now).unwrap_or_default(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it), the unit write stamps are stored in.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock now, in ms since the epoch (write stamps: both backends).
pub fn now_ms() -> u64 {
    millis(SystemTime::now())
}

/// A stamp in ms since the epoch as a time.
pub fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_forward_jump_is_ignored_and_real_time_still_counts() {
        let mut c = RetentionClock::default();
        let (wall, mono) = (UNIX_EPOCH + 1000 * DAY, Instant::now());
        assert_eq!(c.read_at(wall, mono).now, wall);
        // 60 s pass, but the wall clock says 40 days and 60 s.
        let mono = mono + Duration::from_secs(60);
        let r = c.read_at(wall + 40 * DAY + Duration::from_secs(60), mono);
        assert_eq!(r.now, wall + Duration::from_secs(60));
        assert_eq!(r.jump, Some((true, 40 * DAY)));
        assert_eq!(r.behind, 40 * DAY);
        // Then time runs normally: retention time advances with it, no new jump reported.
        let r = c.read_at(
            wall + 40 * DAY + Duration::from_secs(120),
            mono + Duration::from_secs(60),
        );
        assert_eq!(r.now, wall + Duration::from_secs(120));
        assert_eq!(r.jump, None);
    }

    #[test]
    fn a_backward_jump_is_followed() {
        let mut c = RetentionClock::default();
        let (wall, mono) = (UNIX_EPOCH + 1000 * DAY, Instant::now());
        c.read_at(wall, mono);
        let r = c.read_at(wall - DAY, mono + Duration::from_secs(1));
        assert_eq!(r.now, wall - DAY);
        assert_eq!(r.jump.map(|j| j.0), Some(false));
        assert_eq!(r.behind, Duration::ZERO);
    }

    #[test]
    fn small_drift_is_not_a_jump() {
        let mut c = RetentionClock::default();
        let (wall, mono) = (UNIX_EPOCH + 1000 * DAY, Instant::now());
        c.read_at(wall, mono);
        let r = c.read_at(
            wall + Duration::from_millis(60_500),
            mono + Duration::from_secs(60),
        );
        assert_eq!(r.jump, None);
        assert_eq!(r.now, wall + Duration::from_secs(60));
    }
}
