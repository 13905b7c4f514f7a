//! Counters of one client: requests, attempts, retries, failures, timeouts, tokens and latencies.
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Log-scale latency buckets: bucket i holds latencies up to 2^((i+1)/8) microseconds (about 9% wide), enough
/// for percentiles of millions of calls in constant memory.
const BUCKETS_PER_OCTAVE: f64 = 8.0;
const BUCKETS: usize = 8 * 40;

/// A snapshot of a client's counters (`OpenAiClient::stats`). A request is one logical call; it may take
/// several attempts. `latency_*` is the endpoint's speed: one successful attempt, from sending the request to
/// reading the reply. `call_*` is what callers waited: the queue for a concurrency permit, retries and backoff
/// included.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientStats {
    pub requests: u64,
    pub attempts: u64,
    pub retries: u64,
    pub successes: u64,
    /// Calls that failed after their last attempt.
    pub failures: u64,
    /// Calls whose caller stopped waiting (future dropped) before they finished.
    pub cancelled: u64,
    /// Attempts that hit the endpoint's timeout.
    pub timeouts: u64,
    /// Calls started and not yet finished.
    pub in_flight: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_mean_s: f64,
    pub latency_p50_s: f64,
    pub latency_p90_s: f64,
    pub latency_p99_s: f64,
    pub latency_max_s: f64,
    pub call_mean_s: f64,
    pub call_max_s: f64,
}

#[derive(Default)]
pub(crate) struct StatsCell {
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    cancelled: AtomicU64,
    timeouts: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    latency: Mutex<Latency>,
    calls: Mutex<(f64, f64)>,
}

struct Latency {
    buckets: Vec<u64>,
    sum_s: f64,
    max_s: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: vec![0; BUCKETS],
            sum_s: 0.0,
            max_s: 0.0,
        }
    }
}

impl Latency {
    fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let i = ((1.0 + us).log2() * BUCKETS_PER_OCTAVE).floor() as usize;
        self.buckets[i.min(BUCKETS - 1)] += 1;
        self.sum_s += d.as_secs_f64();
        self.max_s = self.max_s.max(d.as_secs_f64());
    }

    /// The upper edge of the bucket holding quantile `q`, never above the observed maximum.
    fn quantile(&self, q: f64) -> f64 {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper_us = 2f64.powf((i + 1) as f64 / BUCKETS_PER_OCTAVE) - 1.0;
                return (upper_us / 1e6).min(self.max_s);
            }
        }
        self.max_s
    }
}

impl StatsCell {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn success(&self, attempt: Duration, call: Duration) {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(attempt);
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.0 += call.as_secs_f64();
        calls.1 = calls.1.max(call.as_secs_f64());
        self.successes.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ClientStats {
        let lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let (call_sum_s, call_max_s) = *self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let successes = self.successes.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        ClientStats {
            requests,
            attempts: self.attempts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            successes,
            failures,
            cancelled,
            timeouts: self.timeouts.load(Ordering::Relaxed),
            in_flight: requests.saturating_sub(successes + failures + cancelled),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            latency_mean_s: if successes > 0 {
                lat.sum_s / successes as f64
            } else {
                0.0
            },
            latency_p50_s: lat.quantile(0.5),
            latency_p90_s: lat.quantile(0.9),
            latency_p99_s: lat.quantile(0.99),
            latency_max_s: lat.max_s,
            call_mean_s: if successes > 0 {
                call_sum_s / successes as f64
            } else {
                0.0
            },
            call_max_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_a_bucket() {
        let cell = StatsCell::default();
        for ms in 1..=100u64 {
            cell.request();
            cell.success(Duration::from_millis(ms), Duration::from_millis(2 * ms));
        }
        let s = cell.snapshot();
        assert_eq!((s.requests, s.successes, s.in_flight), (100, 100, 0));
        assert!((s.latency_mean_s - 0.0505).abs() < 1e-9);
        assert!(
            s.latency_p50_s >= 0.050 && s.latency_p50_s <= 0.050 * 1.1,
            "{}",
            s.latency_p50_s
        );
        assert!(
            s.latency_p99_s >= 0.099 && s.latency_p99_s <= 0.100,
            "{}",
            s.latency_p99_s
        );
        assert_eq!(s.latency_max_s, 0.1);
        assert!((s.call_mean_s - 0.101).abs() < 1e-9);
        assert_eq!(s.call_max_s, 0.2);
    }

    #[test]
    fn empty_snapshot_is_zero() {
        assert_eq!(StatsCell::default().snapshot(), ClientStats::default());
    }
}
