//! Ranges of the sampling parameters, one rule for `spar serve` requests and the command-line defaults of
//! `spar generate`: a value out of range is refused with a message naming the range, before it reaches the
//! sampler (where libtorch would fail with a C++ backtrace, or sample nonsense).

/// Highest temperature accepted, OpenAI's bound (vLLM accepts any; above 2 a small model samples noise).
pub const MAX_TEMPERATURE: f64 = 2.0;

/// Most alternatives per token a request may ask for: OpenAI's chat limit (its legacy `/completions` allows 5;
/// spar allows 20 there too, as vLLM does).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `temperature`: finite, in [0, [`MAX_TEMPERATURE`]]; 0 is greedy.
pub fn check_temperature(t: f64) -> Result<f64, String> {
    if t.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "temperature must be a number in [0, {MAX_TEMPERATURE}] (got {t})"
        ))
    }
}

/// `top_p`: in (0, 1]; 0 would keep no token at all.
pub fn check_top_p(p: f64) -> Result<f64, String> {
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("top_p must be a number in (0, 1] (got {p})"))
    }
}

/// `min_p`: in [0, 1]; 0 is off.
pub fn check_min_p(p: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("min_p must be a number in [0, 1] (got {p})"))
    }
}

/// `top_k`: vLLM's convention, -1 or 0 for off, else the number of tokens kept.
pub fn check_top_k(k: i64) -> Result<u32, String> {
    match k {
        -1 | 0 => Ok(0),
        k if k > 0 && k <= u32::MAX as i64 => Ok(k as u32),
        k => Err(format!(
            "top_k must be -1 or 0 (off) or a positive count (got {k})"
        )),
    }
}

/// `logprobs` of `/v1/completions` or `top_logprobs` of chat, named `field`: 0..=[`MAX_TOP_LOGPROBS`].
pub fn check_top_logprobs(field: &str, n: u32) -> Result<u32, String> {
    if n <= MAX_TOP_LOGPROBS {
        Ok(n)
    } else {
        Err(format!(
            "{field} must be in 0..={MAX_TOP_LOGPROBS} (got {n})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_ranges_refuse_nan_negative_and_out_of_range_values() {
        for t in [-1.0, f64::NAN, f64::INFINITY, 2.5] {
            assert!(check_temperature(t).is_err(), "{t}");
        }
        assert_eq!(check_temperature(0.0), Ok(0.0));
        assert_eq!(check_temperature(2.0), Ok(2.0));
        for p in [0.0, -0.1, 1.5, 5.0, f64::NAN] {
            assert!(check_top_p(p).is_err(), "{p}");
        }
        assert_eq!(check_top_p(1.0), Ok(1.0));
        assert!(check_min_p(f64::NAN).is_err() && check_min_p(1.1).is_err());
        assert_eq!(check_top_k(-1), Ok(0));
        assert_eq!(check_top_k(5), Ok(5));
        assert!(check_top_k(-2).is_err());
        assert!(check_top_logprobs("logprobs", 21).is_err());
    }
}
