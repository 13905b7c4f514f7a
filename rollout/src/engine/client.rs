//! The async face of the engine: a cloneable [`EngineClient`] sends requests over a channel to the thread that
//! runs [`super::Engine::run_until`]. Many episodes (tokio tasks) call it at once; the engine batches whatever
//! is in flight.
use super::{EngineOutput, Reply};
use anyhow::{Result, anyhow};
use async_trait::async_trait;
use spar_core::traits::{GenerateOutput, GenerateRequest, RolloutBackend};
use std::sync::mpsc;
use std::time::Duration;

/// One event of a streamed request.
#[derive(Debug)]
pub enum StreamEvent {
    /// A sampled token, its log-prob and, when the request asked, the most likely tokens with theirs.
    Token {
        id: u32,
        logprob: f32,
        top_logprobs: Vec<(u32, f32)>,
    },
    Done(std::result::Result<EngineOutput, String>),
}

/// Sends requests to a running engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineClient {
    tx: mpsc::Sender<(GenerateRequest, Reply)>,
    id: String,
}

/// The engine's end of the channel.
pub struct EngineInbox {
    rx: mpsc::Receiver<(GenerateRequest, Reply)>,
    /// Weight loads (`spar serve`'s `/update_weights_from_disk`); None: this engine's weights never change.
    loads: Option<mpsc::Receiver<WeightLoad>>,
}

/// A request to load new weights into the running engine's model (see [`super::Engine::run_until`]).
pub struct WeightLoad {
    /// A transformers folder of the served model's shape.
    pub dir: std::path::PathBuf,
    /// Answered once the weights are in place (or with why they are not).
    pub done: tokio::sync::oneshot::Sender<Result<()>>,
}

impl EngineInbox {
    /// Also takes weight loads from `loads`.
    pub fn with_weight_loads(mut self, loads: mpsc::Receiver<WeightLoad>) -> Self {
        self.loads = Some(loads);
        self
    }

    pub(crate) fn try_recv_load(&self) -> Option<WeightLoad> {
        self.loads.as_ref().and_then(|rx| rx.try_recv().ok())
    }

    pub(crate) fn try_recv(&self) -> Option<(GenerateRequest, Reply)> {
        self.rx.try_recv().ok()
    }
    pub(crate) fn recv_timeout(&self, d: Duration) -> Option<(GenerateRequest, Reply)> {
        self.rx.recv_timeout(d).ok()
    }
}

/// A connected client / inbox pair. `id` names the policy (shown by `RolloutBackend::id`).
pub fn channel(id: impl Into<String>) -> (EngineClient, EngineInbox) {
    let (tx, rx) = mpsc::channel();
    (
        EngineClient { tx, id: id.into() },
        EngineInbox { rx, loads: None },
    )
}

impl EngineClient {
    /// Generates one request; resolves when it finishes.
    pub async fn generate_one(&self, req: GenerateRequest) -> Result<EngineOutput> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((req, Reply::Once(tx)))
            .map_err(|_| anyhow!("the generation engine has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the generation engine dropped the request"))?
    }

    /// Generates one request, token by token.
    pub fn stream(
        &self,
        req: GenerateRequest,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<StreamEvent>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.tx
            .send((req, Reply::Stream(tx)))
            .map_err(|_| anyhow!("the generation engine has stopped"))?;
        Ok(rx)
    }
}

#[async_trait]
impl RolloutBackend for EngineClient {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn generate(&self, reqs: Vec<GenerateRequest>) -> spar_core::Result<Vec<GenerateOutput>> {
        let outs = futures::future::join_all(reqs.into_iter().map(|r| self.generate_one(r))).await;
        outs.into_iter()
            .map(|o| {
                o.map(|o| o.output).map_err(|e| {
                    spar_core::Error::external("builtin-engine", format!("{e:#}"), false)
                })
            })
            .collect()
    }
}
