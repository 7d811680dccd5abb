//! Pacing a replay: as fast as possible, a fixed number of records per second, the event-time gaps of
//! the data scaled by a speed factor, or the wall clock (each record when its event time comes).

use std::time::{Duration, Instant};

/// How fast records are emitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// No waiting at all.
    Max,
    /// This many records per second on average.
    Rate(f64),
    /// Event-time gaps between records, divided by `speed` (2.0 replays twice as fast as it happened).
    Realtime {
        /// The speed factor; must be positive.
        speed: f64,
    },
    /// Each record when the wall clock reaches its event time: records from the past go at once
    /// (a history catches up), later ones as their time comes (a live feed).
    Clock,
}

/// Sleeps between records so that they go out at the chosen pace.
#[derive(Debug)]
pub struct Pacer {
    pacing: Pacing,
    start: Option<Instant>,
    sent: u64,
    first_ts: i64,
}

/// Waits shorter than this are skipped: sleeping that briefly costs more than it keeps.
const MIN_SLEEP: Duration = Duration::from_micros(200);

impl Pacer {
    /// A pacer; `Rate` and `Realtime` values must be positive and finite.
    pub fn new(pacing: Pacing) -> Result<Self, crate::FeedError> {
        match pacing {
            Pacing::Rate(r) if !(r.is_finite() && r > 0.0) => {
                return Err(crate::FeedError::Options(format!(
                    "--rate must be a positive number of records per second, not {r}"
                )))
            }
            Pacing::Realtime { speed } if !(speed.is_finite() && speed > 0.0) => {
                return Err(crate::FeedError::Options(format!(
                    "--speed must be a positive factor, not {speed}"
                )))
            }
            _ => {}
        }
        Ok(Pacer {
            pacing,
            start: None,
            sent: 0,
            first_ts: 0,
        })
    }

    /// Blocks until the record with event time `ts` (µs) is due. Returns how long it slept.
    pub fn wait(&mut self, ts: i64) -> Duration {
        match self.pacing {
            Pacing::Max => return Duration::ZERO,
            Pacing::Clock => return sleep_until_event(ts),
            _ => {}
        }
        let start = *self.start.get_or_insert_with(|| {
            self.first_ts = ts;
            Instant::now()
        });
        let due = match self.pacing {
            Pacing::Max | Pacing::Clock => return Duration::ZERO,
            Pacing::Rate(r) => Duration::from_secs_f64(self.sent as f64 / r),
            Pacing::Realtime { speed } => {
                let gap = ts.saturating_sub(self.first_ts).max(0) as f64 / 1e6;
                Duration::from_secs_f64(gap / speed)
            }
        };
        self.sent += 1;
        let elapsed = start.elapsed();
        if due > elapsed + MIN_SLEEP {
            let d = due - elapsed;
            std::thread::sleep(d);
            d
        } else {
            Duration::ZERO
        }
    }

    /// Starts timing afresh, e.g. when a looped replay begins its next pass.
    pub fn reset(&mut self) {
        self.start = None;
        self.sent = 0;
    }
}

/// Sleeps until the wall clock reaches `ts` (µs since the Unix epoch); returns how long.
fn sleep_until_event(ts: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let ahead = Duration::from_micros(ts.saturating_sub(now).max(0) as u64);
    if ahead > MIN_SLEEP {
        std::thread::sleep(ahead);
        ahead
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense() {
        assert!(Pacer::new(Pacing::Rate(0.0)).is_err());
        assert!(Pacer::new(Pacing::Rate(f64::NAN)).is_err());
        assert!(Pacer::new(Pacing::Realtime { speed: -1.0 }).is_err());
    }

    // These check the schedule the pacer keeps (how long it decides to sleep), not the machine's speed.
    #[test]
    fn rate_spaces_records_evenly() {
        let mut p = Pacer::new(Pacing::Rate(100.0)).unwrap();
        let slept: Duration = (0..11).map(|_| p.wait(0)).sum();
        // 11 records at 100/s: the 11th is due 100 ms after the first.
        assert!(slept >= Duration::from_millis(90), "{slept:?}");
    }

    #[test]
    fn realtime_scales_event_gaps() {
        let mut p = Pacer::new(Pacing::Realtime { speed: 10.0 }).unwrap();
        assert_eq!(p.wait(0), Duration::ZERO);
        // One event-second later at 10x speed: due 100 ms after the first.
        let slept = p.wait(1_000_000);
        assert!(
            slept >= Duration::from_millis(90) && slept <= Duration::from_millis(101),
            "{slept:?}"
        );
        // Out-of-order (earlier) events are not held back.
        assert_eq!(p.wait(500_000), Duration::ZERO);
    }

    #[test]
    fn clock_sends_the_past_at_once_and_waits_for_the_future() {
        let mut p = Pacer::new(Pacing::Clock).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        assert!((1..1000).all(|h| p.wait(now - h * 3_600_000_000) == Duration::ZERO));
        let slept = p.wait(now + 100_000);
        assert!(
            slept >= Duration::from_millis(50) && slept <= Duration::from_millis(101),
            "{slept:?}"
        );
    }

    #[test]
    fn max_never_sleeps() {
        let mut p = Pacer::new(Pacing::Max).unwrap();
        assert!((0..1000).all(|i| p.wait(i * 1_000_000_000) == Duration::ZERO));
    }
}
