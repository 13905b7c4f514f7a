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
    /// The backend and timeout the group was created with (subgroups use the same).
    backend: Option<(Backend, Duration)>,
}

impl Dist {
    /// A process group over the ranks `members` (global ranks, this one among them), for collectives among
    /// them only, e.g. an expert-parallel group. Only the members call this, each with the same `members` and
    /// `name`; the group rendezvouses under its own key prefix `name/` of the job's store. `members` equal to
    /// the whole world gives the job's group itself.
    pub fn subgroup(&self, name: &str, members: &[usize]) -> Result<Arc<dyn Collectives>> {
        let (rank, world) = (self.env.rank, self.env.world_size);
        anyhow::ensure!(
            members.iter().all(|&m| m < world),
            "subgroup {name}: members {members:?} outside world size {world}"
        );
        let Some(me) = members.iter().position(|&m| m == rank) else {
            anyhow::bail!("subgroup {name}: rank {rank} is not among its members {members:?}");
        };
        if members.len() == world && members.iter().enumerate().all(|(i, &m)| i == m) {
            return Ok(self.group.clone());
        }
        let (Some(store), Some((backend, timeout))) = (&self.store, &self.backend) else {
            anyhow::bail!("subgroup {name}: a world of one has no subgroups");
        };
        let store = store.prefixed(&format!("{name}/"))?;
        let group = ProcessGroup::new(&store, me, members.len(), backend, *timeout)
            .with_context(|| format!("subgroup {name} (rank {rank}, members {members:?})"))?;
        Ok(Arc::new(group))
    }

    /// This rank's expert-parallel group: consecutive blocks of `size` ranks (ranks 0..size, size..2*size, ...),
    /// so that a block sits on one node when `size` divides the ranks per node. `size` must divide the world.
    pub fn expert_group(&self, size: usize) -> Result<Arc<dyn Collectives>> {
        let world = self.env.world_size;
        anyhow::ensure!(
            size >= 1 && world.is_multiple_of(size),
            "expert parallel {size} does not divide the world size {world}"
        );
        if size == 1 {
            return Ok(Arc::new(Local));
        }
        let block = self.env.rank / size;
        let members: Vec<usize> = (block * size..(block + 1) * size).collect();
        self.subgroup(&format!("expert{block}"), &members)
    }
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
            backend: None,
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
        backend: Some((backend, opts.timeout)),
    })
}
