//! Judge throughput: N trajectories x M rubric items through `LlmJudge` against the fake server at a fixed
//! latency, compared with the ideal `latency x ceil(calls / concurrency)` of a perfectly packed client.
use crate::{FakeServer, FakeServerConfig, responders};
use serde::Serialize;
use spar_clients::{ClientStats, LlmJudge, OpenAiClient, RetryPolicy};
use spar_core::case::RubricItem;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{Judge, JudgeRequest};
use spar_core::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct JudgeBenchOptions {
    pub trajectories: usize,
    pub items: usize,
    pub concurrency: usize,
    /// The fake server's latency per request.
    pub latency: Duration,
    /// Fraction of requests the fake server answers 503 (each one is retried).
    pub error_rate: f64,
    pub timeout_s: f64,
    pub max_retries: u32,
    pub seed: u64,
}

impl Default for JudgeBenchOptions {
    fn default() -> Self {
        JudgeBenchOptions {
            trajectories: 1000,
            items: 20,
            concurrency: 64,
            latency: Duration::from_millis(200),
            error_rate: 0.0,
            timeout_s: 30.0,
            max_retries: 3,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct JudgeBenchReport {
    pub trajectories: usize,
    pub items: usize,
    pub calls: usize,
    pub concurrency: usize,
    pub latency_s: f64,
    pub error_rate: f64,
    pub wall_s: f64,
    /// `latency x ceil(calls / concurrency)`.
    pub ideal_s: f64,
    /// `wall / ideal - 1`, in percent.
    pub overhead_pct: f64,
    pub calls_per_s: f64,
    pub met: usize,
    pub unmet: usize,
    /// Calls that failed after their retries (nothing is dropped: met + unmet + failures = calls).
    pub failures: usize,
    pub retries: u64,
    /// The most requests the server had in flight at once (bounded by `concurrency`).
    pub server_max_in_flight: usize,
    pub client: ClientStats,
}

impl std::fmt::Display for JudgeBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "judge benchmark: {} trajectories x {} items = {} calls, concurrency {}, latency {:.3} s, error rate {}",
            self.trajectories,
            self.items,
            self.calls,
            self.concurrency,
            self.latency_s,
            self.error_rate
        )?;
        writeln!(f, "  wall        {:>9.2} s", self.wall_s)?;
        writeln!(
            f,
            "  ideal       {:>9.2} s   (latency x ceil(calls / concurrency))",
            self.ideal_s
        )?;
        writeln!(f, "  overhead    {:>9.2} %", self.overhead_pct)?;
        writeln!(f, "  throughput  {:>9.1} calls/s", self.calls_per_s)?;
        writeln!(
            f,
            "  verdicts    {} met, {} unmet, {} failed",
            self.met, self.unmet, self.failures
        )?;
        writeln!(f, "  retries     {}", self.retries)?;
        writeln!(
            f,
            "  in flight   {} max at the server",
            self.server_max_in_flight
        )?;
        writeln!(
            f,
            "  endpoint    p50 {:.3} s, p99 {:.3} s, max {:.3} s per request",
            self.client.latency_p50_s, self.client.latency_p99_s, self.client.latency_max_s
        )?;
        write!(
            f,
            "  callers     {:.2} s mean, {:.2} s max wait (queue for the {} permits included)",
            self.client.call_mean_s, self.client.call_max_s, self.concurrency
        )
    }
}

/// A synthetic consultation: varied per trajectory so every prompt differs.
fn trajectory(i: usize) -> (Vec<Turn>, String) {
    let conversation = vec![
        Turn::new(
            Role::User,
            format!(
                "I have had a cough for {} days and a fever since yesterday.",
                2 + i % 9
            ),
        ),
        Turn::new(
            Role::Assistant,
            "Is the cough dry or are you bringing up sputum? What colour is it?",
        ),
        Turn::new(
            Role::User,
            "Yellow sputum, and it hurts on the right when I breathe in.",
        ),
        Turn::new(
            Role::Assistant,
            "Do you smoke, and do you have any allergies to medicines?",
        ),
        Turn::new(
            Role::User,
            format!(
                "I smoke {} cigarettes a day. I am allergic to penicillin.",
                5 + i % 20
            ),
        ),
    ];
    let response = format!(
        "<ddx>\n1. Community-acquired pneumonia (J18.9)\n2. Acute bronchitis (J20.9)\n</ddx>\nGiven the fever, productive cough and \
         pleuritic pain, pneumonia is most likely. Because of your penicillin allergy I would avoid amoxicillin. Please get a chest \
         X-ray and a blood count today (case {i})."
    );
    (conversation, response)
}

fn rubric(items: usize) -> Vec<RubricItem> {
    const CRITERIA: [&str; 10] = [
        "Asks about the duration of the cough",
        "Asks about sputum colour",
        "Asks about drug allergies",
        "Orders a chest X-ray",
        "Avoids penicillin-class antibiotics given the allergy",
        "Asks about smoking",
        "Names pneumonia as the leading diagnosis",
        "Explains when to seek emergency care",
        "Recommends a blood count",
        "Asks about shortness of breath",
    ];
    (0..items)
        .map(|k| {
            let negative = k % 4 == 3;
            let criterion = if negative {
                format!("Prescribes amoxicillin despite the allergy (variant {k})")
            } else {
                format!("{} (variant {k})", CRITERIA[k % CRITERIA.len()])
            };
            RubricItem {
                criterion,
                points: if negative { -5 } else { 1 + (k % 5) as i32 },
                tags: vec![],
                rule: None,
            }
        })
        .collect()
}

/// Starts the fake server in the current runtime and runs the benchmark; `on_done` is called after every
/// finished call (progress bars).
pub async fn run_judge_bench(
    opts: &JudgeBenchOptions,
    on_done: impl Fn() + Send + Sync + 'static,
) -> Result<JudgeBenchReport> {
    let server = FakeServer::start(FakeServerConfig {
        latency: opts.latency,
        error_rate: opts.error_rate,
        seed: opts.seed,
        record_bodies: false,
        chat: responders::judge_by_hash(),
        ..FakeServerConfig::default()
    })
    .await
    .map_err(|e| Error::Other(format!("cannot start the fake server on 127.0.0.1: {e}")))?;
    let mut endpoint = server.endpoint();
    endpoint.concurrency = opts.concurrency;
    endpoint.timeout_s = opts.timeout_s;
    endpoint.max_retries = opts.max_retries;
    let client = OpenAiClient::builder(&endpoint)
        .retry_policy(RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        })
        .build()?;
    let judge = Arc::new(LlmJudge::new(client.clone()));
    let items = rubric(opts.items);
    let on_done = Arc::new(on_done);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..opts.trajectories {
        let (conversation, response) = trajectory(t);
        for item in &items {
            let req = JudgeRequest {
                conversation: conversation.clone(),
                response: response.clone(),
                item: item.clone(),
            };
            let (judge, on_done) = (judge.clone(), on_done.clone());
            tasks.spawn(async move {
                let r = judge.judge(&req).await;
                on_done();
                r
            });
        }
    }
    let (mut met, mut unmet, mut failures) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| Error::Other(format!("a judge task panicked: {e}")))? {
            Ok(v) if v.met => met += 1,
            Ok(_) => unmet += 1,
            Err(_) => failures += 1,
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let calls = opts.trajectories * opts.items;
    let ideal_s = opts.latency.as_secs_f64() * calls.div_ceil(opts.concurrency.max(1)) as f64;
    let stats = client.stats();
    Ok(JudgeBenchReport {
        trajectories: opts.trajectories,
        items: opts.items,
        calls,
        concurrency: opts.concurrency,
        latency_s: opts.latency.as_secs_f64(),
        error_rate: opts.error_rate,
        wall_s,
        ideal_s,
        overhead_pct: if ideal_s > 0.0 {
            (wall_s / ideal_s - 1.0) * 100.0
        } else {
            0.0
        },
        calls_per_s: calls as f64 / wall_s.max(1e-9),
        met,
        unmet,
        failures,
        retries: stats.retries,
        server_max_in_flight: server.max_in_flight(),
        client: stats,
    })
}
