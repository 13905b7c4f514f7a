//! `OpenAiClient`: the one HTTP client spar uses for every OpenAI-compatible endpoint (judge, extractor, verifier,
//! patient simulator, encoder, external rollout server).
//!
//! One logical call = up to `1 + max_retries` attempts. Timeouts, connection errors, HTTP 408 / 429 / 5xx and
//! malformed reply bodies are retried after an exponential backoff with jitter (honouring `Retry-After`); other
//! 4xx are not. Each attempt holds one of `concurrency` permits, released during the backoff so that waiting
//! calls do not block the others. The bearer token is read from the environment variable the endpoint names,
//! marked sensitive, and never logged or written.
use crate::privacy;
use crate::retry::RetryPolicy;
use crate::stats::{ClientStats, StatsCell};
use crate::wire::{
    ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, Usage, completion_body,
    parse_chat, parse_completion, parse_embeddings, parse_models,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use spar_core::recipe::EndpointConfig;
use spar_core::{Error, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A cheap-to-clone handle to one endpoint: clones share the connection pool, the concurrency limit and the
/// counters.
#[derive(Clone)]
pub struct OpenAiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    cfg: EndpointConfig,
    /// `base_url` with a trailing slash (and `/v1/` when it had no path), ready for `join`.
    base: Url,
    bearer: Option<HeaderValue>,
    redact: bool,
    retry: RetryPolicy,
    permits: Semaphore,
    stats: StatsCell,
}

/// Options beyond `EndpointConfig`; `OpenAiClient::new` uses the defaults.
pub struct ClientBuilder {
    cfg: EndpointConfig,
    retry: RetryPolicy,
    resolve: Vec<(String, SocketAddr)>,
}

impl ClientBuilder {
    /// Backoff between attempts (default 0.5 s doubling to 20 s).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sends requests for `host` to `addr` without DNS (like curl's `--resolve`). The PHI decision still
    /// follows the host name of `base_url`.
    pub fn resolve(mut self, host: &str, addr: SocketAddr) -> Self {
        self.resolve.push((host.to_string(), addr));
        self
    }

    pub fn build(self) -> Result<OpenAiClient> {
        let cfg = self.cfg;
        let where_ = format!("endpoint {}", cfg.base_url);
        cfg.validate()
            .map_err(|(k, m)| Error::Other(format!("{where_}: `{k}`: {m}")))?;
        let mut base = Url::parse(&cfg.base_url)
            .map_err(|e| Error::Other(format!("{where_}: `base_url`: {e}")))?;
        if base.path() == "/" || base.path().is_empty() {
            base.set_path("/v1/");
        } else if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let bearer = match &cfg.api_key_env {
            None => None,
            Some(var) => {
                let key = std::env::var(var).ok().filter(|k| !k.trim().is_empty());
                let key = key.ok_or_else(|| {
                    Error::Other(format!(
                        "{where_}: `api_key_env`: environment variable {var} is not set"
                    ))
                })?;
                let mut v = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| Error::Other(format!("{where_}: `api_key_env`: {var} holds characters not allowed in an HTTP header")))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("spar/", env!("CARGO_PKG_VERSION")));
        for (host, addr) in &self.resolve {
            http = http.resolve(host, *addr);
        }
        let http = http
            .build()
            .map_err(|e| Error::Other(format!("{where_}: cannot build the HTTP client: {e}")))?;
        let redact = cfg.redact_phi && !privacy::is_loopback(&base);
        Ok(OpenAiClient {
            inner: Arc::new(Inner {
                http,
                permits: Semaphore::new(cfg.concurrency),
                cfg,
                base,
                bearer,
                redact,
                retry: self.retry,
                stats: StatsCell::default(),
            }),
        })
    }
}

/// Why one attempt failed.
struct Failure {
    msg: String,
    retryable: bool,
    timeout: bool,
    retry_after: Option<Duration>,
}

/// Counts a call as cancelled when its future is dropped before it finished (e.g. a `select!` timeout above).
struct CallGuard<'a> {
    stats: &'a StatsCell,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.cancelled();
        }
    }
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.cfg;
        f.debug_struct("OpenAiClient")
            .field("base_url", &c.base_url)
            .field("model", &c.model)
            .field("api_key_env", &c.api_key_env)
            .field("concurrency", &c.concurrency)
            .field("redacts_phi", &self.inner.redact)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    /// A client for `cfg` with the default retry policy. Fails when the config is invalid or names an API-key
    /// variable that is not set.
    pub fn new(cfg: &EndpointConfig) -> Result<Self> {
        Self::builder(cfg).build()
    }

    pub fn builder(cfg: &EndpointConfig) -> ClientBuilder {
        ClientBuilder {
            cfg: cfg.clone(),
            retry: RetryPolicy::default(),
            resolve: Vec::new(),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.inner.cfg
    }

    /// The model name sent with every request.
    pub fn model(&self) -> &str {
        &self.inner.cfg.model
    }

    /// Whether outgoing text is PHI-redacted (`redact_phi` on and the host off loopback).
    pub fn redacts_phi(&self) -> bool {
        self.inner.redact
    }

    /// The full URL of an endpoint path such as `chat/completions`.
    pub fn url(&self, path: &str) -> String {
        self.inner
            .base
            .join(path)
            .map(String::from)
            .unwrap_or_else(|_| format!("{}{path}", self.inner.base))
    }

    pub fn stats(&self) -> ClientStats {
        self.inner.stats.snapshot()
    }

    fn outgoing(&self, text: &str) -> String {
        if self.inner.redact {
            privacy::redact(text)
        } else {
            text.to_string()
        }
    }

    /// `POST chat/completions`; the first choice. Message contents are PHI-redacted first when the client
    /// redacts.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse> {
        let mut req = req.clone();
        if self.inner.redact {
            for m in &mut req.messages {
                m.content = privacy::redact_prompt(&m.content);
            }
        }
        let mut body =
            serde_json::to_value(&req).map_err(|e| Error::Other(format!("chat request: {e}")))?;
        body["model"] = self.model().into();
        let resp = self
            .send(Method::POST, "chat/completions", Some(body), parse_chat)
            .await?;
        self.count_usage(resp.usage);
        Ok(resp)
    }

    /// `POST completions` with a token-id prompt; the generated token ids (and log-probs when asked). Token ids
    /// cannot be PHI-redacted, so a redacting client refuses: serve the policy on loopback, or set
    /// `redact_phi = false` for that endpoint.
    pub async fn complete_tokens(&self, req: &CompletionRequest) -> Result<CompletionResponse> {
        self.check_token_prompts_allowed()?;
        let body = completion_body(self.model(), req);
        let want = req.logprobs;
        let top = req.sampling.top_logprobs;
        let resp = self
            .send(Method::POST, "completions", Some(body), move |b| {
                parse_completion(b, want, top)
            })
            .await?;
        self.count_usage(resp.usage);
        Ok(resp)
    }

    /// Errors when token-id prompts would leave the machine unredacted (see `complete_tokens`).
    pub fn check_token_prompts_allowed(&self) -> Result<()> {
        if self.inner.redact {
            return Err(Error::external(
                self.service("completions"),
                "token-id prompts cannot be PHI-redacted and this endpoint is not on loopback: serve the policy on \
                 127.0.0.1, or set redact_phi = false for this endpoint if the server is trusted",
                false,
            ));
        }
        Ok(())
    }

    /// `POST embeddings`; one raw (not normalised) vector per text, in order. Texts are PHI-redacted first when
    /// the client redacts.
    pub async fn embeddings(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let input: Vec<String> = texts.iter().map(|t| self.outgoing(t)).collect();
        let body =
            serde_json::json!({"model": self.model(), "input": input, "encoding_format": "float"});
        let n = texts.len();
        self.send(Method::POST, "embeddings", Some(body), move |b| {
            parse_embeddings(b, n)
        })
        .await
    }

    /// `GET models`: the ids the server serves.
    pub async fn models(&self) -> Result<Vec<String>> {
        self.send(Method::GET, "models", None, parse_models).await
    }

    /// Any JSON request through the same retries, limit and counters (a path relative to `base_url`). The body
    /// is sent as given: PHI redaction is the caller's.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.send(method, path, body, |b| {
            serde_json::from_slice::<Value>(b).map_err(|e| e.to_string())
        })
        .await
    }

    fn count_usage(&self, usage: Option<Usage>) {
        if let Some(u) = usage {
            self.inner
                .stats
                .tokens(u.prompt_tokens, u.completion_tokens);
        }
    }

    fn service(&self, path: &str) -> String {
        format!("{} [model {}]", self.url(path), self.model())
    }

    async fn send<T>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T> {
        let inner = &*self.inner;
        let url = inner
            .base
            .join(path)
            .map_err(|e| Error::Other(format!("{}: path {path}: {e}", inner.base)))?;
        let body = match body {
            Some(v) => Some(
                serde_json::to_vec(&v)
                    .map_err(|e| Error::Other(format!("{url}: request body: {e}")))?,
            ),
            None => None,
        };
        inner.stats.request();
        let mut guard = CallGuard {
            stats: &inner.stats,
            done: false,
        };
        let started = Instant::now();
        let max_retries = inner.cfg.max_retries;
        let mut retries = 0;
        loop {
            let outcome = {
                let _permit = inner
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                inner.stats.attempt();
                let sent = Instant::now();
                let r = self.attempt(&method, &url, body.as_deref(), &parse).await;
                (r, sent.elapsed())
            };
            let failure = match outcome {
                (Ok(v), took) => {
                    inner.stats.success(took, started.elapsed());
                    guard.done = true;
                    return Ok(v);
                }
                (Err(f), _) => f,
            };
            if failure.timeout {
                inner.stats.timeout();
            }
            if failure.retryable && retries < max_retries {
                let wait = inner.retry.delay(retries, failure.retry_after);
                tracing::debug!(url = %url, retry = retries + 1, wait_ms = wait.as_millis() as u64, "retrying: {}", failure.msg);
                inner.stats.retry();
                retries += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            inner.stats.failure();
            guard.done = true;
            let attempts = retries + 1;
            let msg = format!(
                "{} ({attempts} attempt{})",
                failure.msg,
                if attempts == 1 { "" } else { "s" }
            );
            return Err(Error::external(self.service(path), msg, failure.retryable));
        }
    }

    async fn attempt<T>(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        parse: &impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, Failure> {
        let inner = &*self.inner;
        let mut rb = inner.http.request(method.clone(), url.clone());
        if let Some(b) = &inner.bearer {
            rb = rb.header(AUTHORIZATION, b.clone());
        }
        if let Some(body) = body {
            rb = rb
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let resp = rb.send().await.map_err(transport_failure)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = resp.bytes().await.map_err(transport_failure)?;
        if !status.is_success() {
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error();
            return Err(Failure {
                msg: format!("HTTP {status}: {}", error_snippet(&bytes)),
                retryable,
                timeout: false,
                retry_after,
            });
        }
        parse(&bytes).map_err(|e| Failure {
            msg: format!("malformed reply: {e}"),
            retryable: true,
            timeout: false,
            retry_after: None,
        })
    }
}

fn transport_failure(e: reqwest::Error) -> Failure {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Failure {
        retryable: !e.is_builder(),
        timeout: e.is_timeout(),
        msg,
        retry_after: None,
    }
}

/// The server's error message, short and PHI-redacted: a 4xx body can echo the request (patient text).
fn error_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.into_owned());
    let msg = privacy::redact(msg.trim());
    match msg.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &msg[..i]),
        None => msg,
    }
}
