//! Batched token sampling on the device: temperature, top-k, top-p, min-p and greedy, one row per sequence.
//!
//! Every row draws from its own seeded stream (one uniform per token, from the request's ChaCha RNG), and the
//! token is picked by inverse-CDF over the filtered distribution. A request's samples therefore depend only
//! on its seed and its logits, never on which other sequences share the batch, and the device needs a single
//! `[B]` upload of uniforms per step instead of a per-row generator.
//!
//! Rows that ask for `top_logprobs` also get their k most likely tokens under the same log-softmax that gives
//! the sampled token's log-prob; they ride the same device-to-host copy, and a batch where no row asks pays
//! nothing for them. That log-softmax is of the raw logits (the policy's own log pi), or of logits / T for rows
//! that ask for `logprobs_at_temperature` (training rollouts: the distribution the token was drawn from).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::traits::SamplingParams;
use spar_model::temperature_sampling::{
    PARAMS_ROWS, inverse_cdf, log_softmax_at_temperature, pick_at_temperature_into,
};
use tch::{Device, Kind, Tensor};

/// A request's sampling state: its knobs and its random stream.
#[derive(Clone, Debug)]
pub struct RowSampler {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub min_p: f32,
    /// How many most likely tokens to report per step (0 = off).
    pub top_logprobs: u32,
    /// Report log-probs under softmax(logits / temperature) (see `SamplingParams::logprobs_at_temperature`).
    pub logprobs_at_temperature: bool,
    rng: ChaCha8Rng,
}

impl RowSampler {
    pub fn new(p: &SamplingParams, seed: u64) -> Self {
        RowSampler {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            top_logprobs: p.top_logprobs,
            logprobs_at_temperature: p.logprobs_at_temperature,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Whether this row samples at a temperature alone (or greedily): no top-k, top-p or min-p filter, so
    /// [`sample_at_temperature`](spar_model::temperature_sampling::sample_at_temperature) (and the CUDA-graph decode step) can choose its token.
    pub fn temperature_only(&self) -> bool {
        self.top_k == 0 && self.top_p >= 1.0 && self.min_p <= 0.0
    }

    /// The temperature this row's log-probs are reported at: its sampling temperature when it asks for
    /// tempered log-probs and samples, else 1 (the policy's own log pi).
    fn logprob_temperature(&self) -> f32 {
        if self.logprobs_at_temperature && !self.greedy() {
            self.temperature
        } else {
            1.0
        }
    }

    fn next_uniform(&mut self) -> f32 {
        // In [0, 1): a target of exactly the total mass would fall past the last token.
        self.rng.random::<f32>()
    }
}

/// The token chosen for each row and its log-prob: under the unmodified policy (log_softmax of the raw logits, the
/// policy's own log pi), or under softmax(logits / T) for rows with `logprobs_at_temperature` (what the trainer's
/// forward recomputes for a training rollout sampled at T).
pub struct Sampled {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// Per row, its `top_logprobs` most likely (token, log-prob) under the same log pi, most likely first;
    /// empty for rows that asked for none.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// Samples one token per row of `logits` (`[B, V]`, any float kind) with `rows[i]`'s knobs and RNG.
/// One device-to-host copy per call.
pub fn sample(logits: &Tensor, rows: &mut [&mut RowSampler]) -> Sampled {
    let (b, v) = logits.size2().expect("logits must be [B, V]");
    assert_eq!(b as usize, rows.len(), "one sampler per logits row");
    let device = logits.device();
    let top = TopRequest::of(rows, v);
    // Token ids < 2^24 are exact in f64, and so is every f32: one transfer carries tokens, log-probs and the
    // top-k of the rows that asked (ids then values, `[asking rows, k]` each).
    let (mut parts, logp) = if rows.iter().all(|r| r.temperature_only()) {
        // One upload of every row's knobs and uniform; the pick the CUDA-graph decode step runs too (one kernel
        // on a GPU, whether or not a row asks for its top log-probs, so that asking changes no token).
        let params = Tensor::from_slice(&temperature_params(rows))
            .view([PARAMS_ROWS, b])
            .to_device(device);
        let picked = Tensor::zeros([2, b], (Kind::Double, device));
        let computed = pick_at_temperature_into(logits, &params, &picked)
            .expect("temperature sampling on the device");
        let logp = top.is_some().then(|| {
            computed.unwrap_or_else(|| {
                log_softmax_at_temperature(logits, &params).expect("log-softmax on the device")
            })
        });
        (vec![picked.reshape([-1])], logp)
    } else {
        let (tokens, lp, logp) = sample_filtered(logits, rows, device, v);
        (
            vec![tokens.to_kind(Kind::Double), lp.to_kind(Kind::Double)],
            Some(logp),
        )
    };
    if let (Some(t), Some(logp)) = (&top, logp) {
        let asked = if t.rows.len() == rows.len() {
            logp
        } else {
            let idx: Vec<i64> = t.rows.iter().map(|&r| r as i64).collect();
            logp.index_select(0, &Tensor::from_slice(&idx).to_device(device))
        };
        let (values, ids) = asked.topk(t.k, -1, true, true);
        parts.push(ids.to_kind(Kind::Double).reshape([-1]));
        parts.push(values.to_kind(Kind::Double).reshape([-1]));
    }
    let flat: Vec<f64> = Vec::<f64>::try_from(Tensor::cat(&parts, 0).to_device(Device::Cpu))
        .expect("sampled tensor to host");
    let (t, rest) = flat.split_at(b as usize);
    let (l, rest) = rest.split_at(b as usize);
    let mut per_row = vec![Vec::new(); b as usize];
    if let Some(top) = top {
        let k = top.k as usize;
        let (ids, values) = rest.split_at(top.rows.len() * k);
        for (n, &r) in top.rows.iter().enumerate() {
            let want = (rows[r].top_logprobs as usize).min(k);
            per_row[r] = (0..want)
                .map(|j| (ids[n * k + j] as u32, values[n * k + j] as f32))
                .collect();
        }
    }
    Sampled {
        tokens: t.iter().map(|&x| x as u32).collect(),
        logprobs: l.iter().map(|&x| x as f32).collect(),
        top: per_row,
    }
}

/// Each row's temperature (greedy rows: their own, <= 0), log-prob temperature and uniform, as the `[3, R]`
/// rows of [`sample_at_temperature`](spar_model::temperature_sampling::sample_at_temperature)'s parameters (row-major). A uniform is drawn from every row's stream, in
/// row order, when any row samples, and none when all are greedy: the draws the filtered path makes too, so a
/// request's tokens do not depend on which path its batch took.
pub fn temperature_params(rows: &mut [&mut RowSampler]) -> Vec<f32> {
    let n = rows.len();
    let mut p = vec![0f32; n * PARAMS_ROWS as usize];
    let any_sampling = rows.iter().any(|r| !r.greedy());
    for (i, r) in rows.iter_mut().enumerate() {
        p[i] = r.temperature;
        p[n + i] = r.logprob_temperature();
        if any_sampling {
            p[2 * n + i] = r.next_uniform();
        }
    }
    p
}

/// Tokens, their log-probs and the `[B, V]` log-softmax of a batch where some row filters its distribution
/// (top-k, top-p or min-p).
fn sample_filtered(
    logits: &Tensor,
    rows: &mut [&mut RowSampler],
    device: Device,
    v: i64,
) -> (Tensor, Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let logp = if rows.iter().any(|r| r.logprob_temperature() != 1.0) {
        let temps = column(
            rows.iter().map(|r| r.logprob_temperature()).collect(),
            device,
        );
        (&logits / temps).log_softmax(-1, Kind::Float)
    } else {
        logits.log_softmax(-1, Kind::Float)
    };
    let argmax = logits.argmax(-1, false);
    let tokens = if rows.iter().all(|r| r.greedy()) {
        argmax
    } else {
        let sampled = sample_stochastic(&logits, rows, device, v);
        let greedy: Vec<bool> = rows.iter().map(|r| r.greedy()).collect();
        if greedy.iter().any(|&g| g) {
            argmax.where_self(&Tensor::from_slice(&greedy).to_device(device), &sampled)
        } else {
            sampled
        }
    };
    let lp = logp
        .gather(-1, &tokens.unsqueeze(-1), false)
        .squeeze_dim(-1);
    (tokens, lp, logp)
}

/// The rows of a batch that want top log-probs and the largest k among them (at most the vocabulary).
struct TopRequest {
    rows: Vec<usize>,
    k: i64,
}

impl TopRequest {
    fn of(rows: &[&mut RowSampler], v: i64) -> Option<Self> {
        let asking: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].top_logprobs > 0)
            .collect();
        let k = asking
            .iter()
            .map(|&i| rows[i].top_logprobs as i64)
            .max()?
            .min(v);
        Some(TopRequest { rows: asking, k })
    }
}

fn column(values: Vec<f32>, device: Device) -> Tensor {
    Tensor::from_slice(&values).to_device(device).unsqueeze(-1)
}

fn sample_stochastic(
    logits: &Tensor,
    rows: &mut [&mut RowSampler],
    device: Device,
    v: i64,
) -> Tensor {
    let temps = column(
        rows.iter()
            .map(|r| if r.greedy() { 1.0 } else { r.temperature })
            .collect(),
        device,
    );
    let mut probs = (logits / temps).softmax(-1, Kind::Float);
    if rows.iter().any(|r| r.min_p > 0.0) {
        let min_p = column(rows.iter().map(|r| r.min_p.max(0.0)).collect(), device);
        let (maxp, _) = probs.max_dim(-1, true);
        let keep = probs.ge_tensor(&(maxp * min_p));
        probs = probs.where_self(&keep, &probs.zeros_like());
    }
    let uniforms = column(rows.iter_mut().map(|r| r.next_uniform()).collect(), device);
    let needs_sort = rows.iter().any(|r| r.top_k > 0 || r.top_p < 1.0);
    if needs_sort {
        let (sorted, order) = probs.sort(-1, true);
        let ks = rows
            .iter()
            .map(|r| {
                if r.top_k == 0 {
                    v
                } else {
                    (r.top_k as i64).min(v)
                }
            })
            .collect::<Vec<i64>>();
        let ks = Tensor::from_slice(&ks).to_device(device).unsqueeze(-1);
        let rank = Tensor::arange(v, (Kind::Int64, device)).unsqueeze(0);
        let mut keep = rank.lt_tensor(&ks);
        if rows.iter().any(|r| r.top_p < 1.0) {
            let top_p = column(rows.iter().map(|r| r.top_p).collect(), device);
            let cum = sorted.cumsum(-1, Kind::Float);
            let total = cum.select(-1, v - 1).unsqueeze(-1);
            // Keep a token while the mass before it is below top_p: the most likely token always stays.
            keep = keep.logical_and(&(cum - &sorted).lt_tensor(&(total * top_p)));
        }
        let kept = sorted.where_self(&keep, &sorted.zeros_like());
        let pos = inverse_cdf(&kept, &uniforms, v).expect("inverse CDF on the device");
        order.gather(-1, &pos.unsqueeze(-1), false).squeeze_dim(-1)
    } else {
        inverse_cdf(&probs, &uniforms, v).expect("inverse CDF on the device")
    }
}

/// Index of the first position whose cumulative mass exceeds `u * total` (never a zero-mass position).
#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            ..Default::default()
        }
    }

    /// The temperature-only path (shared with the CUDA-graph decode step) chooses what the filtered path chooses
    /// with its filters off, bit for bit, drawing the same uniforms: mixed temperatures, greedy rows among
    /// sampling ones, log-probs at temperature or not.
    #[test]
    fn temperature_only_rows_match_the_filtered_path_with_filters_off() {
        tch::manual_seed(9);
        let logits = Tensor::randn([6, 50], (Kind::Float, Device::Cpu)) * 3.0;
        let knobs = [
            (0.0, false),
            (0.7, true),
            (1.0, false),
            (1.3, true),
            (0.0, true),
            (0.9, false),
        ];
        let make = |seed: u64| -> Vec<RowSampler> {
            knobs
                .iter()
                .enumerate()
                .map(|(i, &(t, at_t))| {
                    let mut p = params(t, 1.0, 0, 0.0);
                    p.logprobs_at_temperature = at_t;
                    RowSampler::new(&p, seed + i as u64)
                })
                .collect()
        };
        for step in 0..20 {
            let (mut a, mut b) = (make(step), make(step));
            assert!(a.iter().all(|r| r.temperature_only()));
            let mut ra: Vec<&mut RowSampler> = a.iter_mut().collect();
            let mut rb: Vec<&mut RowSampler> = b.iter_mut().collect();
            let shared = sample(&logits, &mut ra);
            let (tokens, lp, _) = sample_filtered(&logits, &mut rb, Device::Cpu, 50);
            assert_eq!(
                shared.tokens,
                Vec::<i64>::try_from(&tokens)
                    .unwrap()
                    .iter()
                    .map(|&t| t as u32)
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                shared.logprobs,
                Vec::<f32>::try_from(&lp).unwrap(),
                "step {step}"
            );
            // Both consumed one uniform per row, greedy rows included.
            for (x, y) in ra.iter_mut().zip(rb.iter_mut()) {
                assert_eq!(x.next_uniform(), y.next_uniform());
            }
        }
    }

    #[test]
    fn greedy_picks_argmax_with_policy_logprob() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 0.5, 3.0, 0.0]).reshape([2, 3]);
        let mut a = RowSampler::new(&params(0.0, 1.0, 0, 0.0), 1);
        let mut b = RowSampler::new(&params(0.0, 1.0, 0, 0.0), 2);
        let s = sample(&logits, &mut [&mut a, &mut b]);
        assert_eq!(s.tokens, vec![1, 1]);
        let lp = logits.log_softmax(-1, Kind::Float);
        assert!((s.logprobs[0] - lp.double_value(&[0, 1]) as f32).abs() < 1e-6);
    }

    #[test]
    fn logprobs_at_temperature_are_those_of_the_tempered_distribution() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 0.5, 3.0, 0.0]).reshape([2, 3]);
        let mut tempered = params(0.7, 1.0, 0, 0.0);
        tempered.logprobs_at_temperature = true;
        let mut a = RowSampler::new(&tempered, 1);
        // The same temperature without the flag: the policy's own log pi.
        let mut b = RowSampler::new(&params(0.7, 1.0, 0, 0.0), 2);
        let s = sample(&logits, &mut [&mut a, &mut b]);
        let at_t = (&logits / 0.7).log_softmax(-1, Kind::Float);
        let raw = logits.log_softmax(-1, Kind::Float);
        let (ta, tb) = (s.tokens[0] as i64, s.tokens[1] as i64);
        assert!((s.logprobs[0] - at_t.double_value(&[0, ta]) as f32).abs() < 1e-6);
        assert!((s.logprobs[1] - raw.double_value(&[1, tb]) as f32).abs() < 1e-6);
        // Greedy rows report the policy's own log pi, flag or not.
        let mut greedy = params(0.0, 1.0, 0, 0.0);
        greedy.logprobs_at_temperature = true;
        let mut g = RowSampler::new(&greedy, 3);
        let s = sample(&logits.narrow(0, 0, 1), &mut [&mut g]);
        assert!((s.logprobs[0] - raw.double_value(&[0, 1]) as f32).abs() < 1e-6);
    }

    #[test]
    fn top_logprobs_only_for_rows_that_ask_sorted_and_consistent() {
        let logits =
            Tensor::from_slice(&[0.0f32, 2.0, 1.0, 0.5, 3.0, 0.0, 1.0, 1.5, -1.0]).reshape([3, 3]);
        let mut asks = params(0.0, 1.0, 0, 0.0);
        asks.top_logprobs = 2;
        let mut wide = params(1.0, 1.0, 0, 0.0);
        wide.top_logprobs = 50;
        let mut a = RowSampler::new(&asks, 1);
        let mut b = RowSampler::new(&params(0.0, 1.0, 0, 0.0), 2);
        let mut c = RowSampler::new(&wide, 3);
        let s = sample(&logits, &mut [&mut a, &mut b, &mut c]);
        let lp = logits.log_softmax(-1, Kind::Float);
        assert!(s.top[1].is_empty());
        assert_eq!(s.top[0].iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.top[0][0], (s.tokens[0], s.logprobs[0]));
        // k beyond the vocabulary gives the whole vocabulary, most likely first.
        assert_eq!(
            s.top[2].iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 0, 2]
        );
        for (row, top) in [(0i64, &s.top[0]), (2, &s.top[2])] {
            for &(id, l) in top {
                assert!((l - lp.double_value(&[row, id as i64]) as f32).abs() < 1e-6);
            }
        }
        let none = sample(
            &logits,
            &mut [
                &mut b,
                &mut RowSampler::new(&params(1.0, 1.0, 0, 0.0), 4),
                &mut RowSampler::new(&params(1.0, 1.0, 0, 0.0), 5),
            ],
        );
        assert!(none.top.iter().all(|t| t.is_empty()));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = Tensor::from_slice(&[0.1f32, 0.3, 0.2, 0.0]).reshape([1, 4]);
        for p in [
            params(1.0, 1.0, 1, 0.0),
            params(1.0, 1e-4, 0, 0.0),
            params(1.0, 1.0, 0, 0.99),
        ] {
            for seed in 0..20 {
                let mut r = RowSampler::new(&p, seed);
                assert_eq!(sample(&logits, &mut [&mut r]).tokens, vec![1], "{p:?}");
            }
        }
    }

    #[test]
    fn same_seed_same_tokens_whatever_the_batch() {
        let logits = Tensor::randn([3, 50], (Kind::Float, Device::Cpu));
        let p = params(1.0, 0.9, 20, 0.0);
        let run = |rows: &[usize]| {
            let mut samplers: Vec<RowSampler> = rows
                .iter()
                .map(|&r| RowSampler::new(&p, 100 + r as u64))
                .collect();
            let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
            let sub = logits.index_select(0, &idx);
            let mut out = vec![];
            for _ in 0..10 {
                let mut refs: Vec<&mut RowSampler> = samplers.iter_mut().collect();
                out.push(sample(&sub, &mut refs).tokens);
            }
            out
        };
        let alone: Vec<u32> = run(&[1]).into_iter().map(|t| t[0]).collect();
        let batched: Vec<u32> = run(&[0, 1, 2]).into_iter().map(|t| t[1]).collect();
        assert_eq!(alone, batched);
    }

    #[test]
    fn frequencies_follow_the_tempered_distribution() {
        let logits =
            Tensor::from_slice(&[0.0f32, (2.0f32).ln(), (3.0f32).ln(), -1e9]).reshape([1, 4]);
        let mut r = RowSampler::new(&params(1.0, 1.0, 0, 0.0), 7);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[sample(&logits, &mut [&mut r]).tokens[0] as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        let f: Vec<f64> = counts.iter().map(|&c| c as f64 / 3000.0).collect();
        assert!(
            (f[0] - 1.0 / 6.0).abs() < 0.03
                && (f[1] - 2.0 / 6.0).abs() < 0.03
                && (f[2] - 0.5).abs() < 0.03,
            "{f:?}"
        );
        // top_p 0.6 keeps tokens 2 (mass before it 0) and 1 (0.5 before it), drops 0 (0.83 before it).
        let mut r = RowSampler::new(&params(1.0, 0.6, 0, 0.0), 7);
        for _ in 0..200 {
            let t = sample(&logits, &mut [&mut r]).tokens[0];
            assert!(t == 1 || t == 2, "{t}");
        }
    }
}
