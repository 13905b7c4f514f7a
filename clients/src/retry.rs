//! Exponential backoff with jitter between attempts of one request.
use rand::Rng;
use std::time::Duration;

/// How long to wait before retry `n` (0-based): `base * 2^n`, capped at `max`, then "equal jitter" (half fixed,
/// half uniform) so that a burst of failed calls does not come back in lock step. A server's `Retry-After`
/// raises the wait, within `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(500),
            max: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `n`, with `unit` in [0, 1) the random part.
    pub fn delay_with(&self, n: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self.base.as_secs_f64() * 2f64.powi(n.min(30) as i32);
        let capped = exp.min(self.max.as_secs_f64());
        let jittered = capped / 2.0 + unit.clamp(0.0, 1.0) * capped / 2.0;
        let floor = retry_after.map_or(0.0, |d| d.as_secs_f64().min(self.max.as_secs_f64()));
        Duration::from_secs_f64(jittered.max(floor))
    }

    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(n, rand::rng().random::<f64>(), retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_with_jitter_in_upper_half() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.delay_with(0, 0.0, None), Duration::from_millis(50));
        assert_eq!(p.delay_with(0, 1.0, None), Duration::from_millis(100));
        assert_eq!(p.delay_with(2, 1.0, None), Duration::from_millis(400));
        assert_eq!(p.delay_with(10, 1.0, None), Duration::from_secs(1));
        assert_eq!(p.delay_with(10, 0.0, None), Duration::from_millis(500));
        assert_eq!(
            p.delay_with(0, 0.0, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay_with(0, 0.0, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }
}
