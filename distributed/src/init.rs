//! From a [`DistEnv`] to a working group: connect (or host) the store, run the rendezvous checks, create the
//! backend.
use crate::collectives::Collectives;
use crate::env::{DistEnv, Launcher};
use crate::group::{Backend, ProcessGroup};
use crate::local::Local;
use crate::rendezvous::Rendezvous;
use crate::store::Store;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// The default for rendezvous and collective timeouts: long enough for a slow rank to load a model.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How to join the job.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Gloo or NCCL. `None`: gloo on CPU, bound to loopback when the master is on loopback.
    pub backend: Option<Backend>,
    /// Bounds connecting, the rendezvous and every collective.
    pub timeout: Duration,
    /// What every rank must agree on, e.g. `[("binary", exe bytes), ("recipe", recipe text)]`.
    pub identity: Vec<(String, Vec<u8>)>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            backend: None,
            timeout: DEFAULT_TIMEOUT,
            identity: Vec::new(),
        }
    }
}

/// A joined job: this rank's place, the store and the collectives.
pub struct Dist {
    /// Where this rank sits.
    pub env: DistEnv,
    /// The rendezvous store (absent for one process without a launcher).
    pub store: Option<Arc<Store>>,
    /// The collectives (a [`Local`] world of one without a launcher).
    pub group: Arc<dyn Collectives>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// The gloo device torch would pick, except that a job whose master is on loopback stays on loopback.
pub fn default_gloo(env: &DistEnv) -> Backend {
    let interface = std::env::var("GLOO_SOCKET_IFNAME")
        .ok()
        .and_then(|v| v.split(',').next().map(str::to_string))
        .filter(|v| !v.is_empty());
    let host =
        (interface.is_none() && is_loopback(&env.master_addr)).then(|| "127.0.0.1".to_string());
    Backend::Gloo { interface, host }
}

/// Joins the job `env` describes. One process without a launcher gets a [`Local`] group and no store.
pub fn init(env: &DistEnv, opts: &InitOptions) -> Result<Dist> {
    if env.launcher == Launcher::Single {
        return Ok(Dist {
            env: env.clone(),
            store: None,
            group: Arc::new(Local),
        });
    }
    let (rank, world) = (env.rank, env.world_size);
    let who = format!("rank {rank} of world size {world}");
    let store = if env.agent_store {
        let prefix = format!("/worker/attempt_{}", env.restart_count);
        Store::connect(&env.master_addr, env.master_port, opts.timeout, &prefix)
    } else if rank == 0 {
        Store::serve(&env.master_addr, env.master_port, opts.timeout)
    } else {
        Store::connect(&env.master_addr, env.master_port, opts.timeout, "")
    }
    .with_context(|| who.clone())?;
    let hosts = !env.agent_store && rank == 0;
    let rdv = Rendezvous::new(&store, rank, world, opts.timeout, hosts);
    rdv.arrive().with_context(|| who.clone())?;
    for (what, value) in &opts.identity {
        rdv.agree(what, value).with_context(|| who.clone())?;
    }
    let backend = opts.backend.clone().unwrap_or_else(|| default_gloo(env));
    let group = ProcessGroup::new(&store, rank, world, &backend, opts.timeout)
        .with_context(|| who.clone())?;
    Ok(Dist {
        env: env.clone(),
        store: Some(Arc::new(store)),
        group: Arc::new(group),
    })
}
