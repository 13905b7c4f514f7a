//! `spar launch`: torchrun's job without Python. The launcher of node 0 hosts the rendezvous store (as
//! torchrun's agent does); every launcher spawns its node's ranks with the torchrun environment contract
//! (plus NCCL_NVLS_ENABLE=0), prefixes their output with `[rank k]`, forwards SIGINT/SIGTERM, and when one rank
//! fails stops the others and reports that rank's error. With `max_restarts` (torchrun's `--max-restarts`) a
//! failed job is started again, every rank at once, with TORCHELASTIC_RESTART_COUNT counting the attempts (the
//! ranks rendezvous under a fresh store prefix); `spar train --resume` then goes on from its last checkpoint.
mod logs;
mod signals;

use crate::store::Store;
use anyhow::{Context, Result, bail, ensure};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to launch and where.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// Ranks on this node.
    pub nproc_per_node: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node, `0..nnodes`.
    pub node_rank: usize,
    /// Host of node 0 (where its launcher hosts the store).
    pub master_addr: String,
    /// Port of the store; 0 on a single node: any free port.
    pub master_port: u16,
    /// The program each rank runs and its arguments.
    pub program: PathBuf,
    /// Arguments of `program`.
    pub args: Vec<String>,
    /// How long ranks get to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// How many times a failed job is started again (single node only).
    pub max_restarts: usize,
}

/// How the job ended when it did not succeed.
#[derive(Debug)]
pub struct RankFailure {
    /// The first rank seen failing.
    pub rank: usize,
    /// Its exit code, or the signal that ended it.
    pub status: String,
    /// The last lines it wrote to stderr.
    pub tail: Vec<String>,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} failed ({})", self.rank, self.status)?;
        if !self.tail.is_empty() {
            write!(f, "; its last stderr lines:\n  {}", self.tail.join("\n  "))?;
        }
        Ok(())
    }
}

impl std::error::Error for RankFailure {}

struct Rank {
    global: usize,
    child: Child,
    logs: logs::Pipes,
}

/// Runs the job to its end: `Ok` when every local rank exits 0; a [`RankFailure`] error naming the first rank
/// that failed otherwise; an error naming the signal when the launcher was interrupted.
pub fn launch(spec: &LaunchSpec) -> Result<()> {
    ensure!(
        spec.nproc_per_node >= 1,
        "--nproc-per-node must be at least 1"
    );
    ensure!(
        spec.nnodes >= 1 && spec.node_rank < spec.nnodes,
        "--node-rank {} is outside --nnodes {}",
        spec.node_rank,
        spec.nnodes
    );
    ensure!(
        spec.nnodes == 1 || spec.master_port != 0,
        "--master-port is required with several nodes"
    );
    ensure!(
        spec.nnodes == 1 || spec.max_restarts == 0,
        "--max-restarts restarts one node's ranks; across nodes the launchers would have to agree on the restart, \
         which is not built: run under torchrun (its agents coordinate restarts) or restart the job yourself"
    );
    let world = spec.nnodes * spec.nproc_per_node;
    // Node 0's launcher hosts the store for the whole job, like torchrun's agent: it outlives every rank, so a
    // rank that dies does not take the rendezvous down with it.
    let store = if spec.node_rank == 0 {
        Some(Store::serve(
            &spec.master_addr,
            spec.master_port,
            Duration::from_secs(60),
        )?)
    } else {
        None
    };
    let port = store.as_ref().map_or(spec.master_port, Store::port);
    signals::install();
    let run_id = format!("spar-{}", std::process::id());
    let mut attempt = 0;
    let result = loop {
        let mut ranks = spawn(spec, world, port, &run_id, attempt)?;
        match watch(&mut ranks, spec.grace) {
            Err(e) if attempt < spec.max_restarts && e.downcast_ref::<RankFailure>().is_some() => {
                attempt += 1;
                eprintln!(
                    "[launch] {e:#}\n[launch] restarting every rank (attempt {attempt} of --max-restarts {})",
                    spec.max_restarts
                );
            }
            done => break done,
        }
    };
    drop(store);
    result
}

/// Starts this node's ranks for attempt `attempt` (TORCHELASTIC_RESTART_COUNT).
fn spawn(
    spec: &LaunchSpec,
    world: usize,
    port: u16,
    run_id: &str,
    attempt: usize,
) -> Result<Vec<Rank>> {
    let mut ranks = Vec::with_capacity(spec.nproc_per_node);
    for local in 0..spec.nproc_per_node {
        let global = spec.node_rank * spec.nproc_per_node + local;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env("RANK", global.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", spec.nproc_per_node.to_string())
            .env("GROUP_RANK", spec.node_rank.to_string())
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("TORCHELASTIC_USE_AGENT_STORE", "True")
            .env("TORCHELASTIC_RESTART_COUNT", attempt.to_string())
            .env("TORCHELASTIC_RUN_ID", run_id)
            // NVLink multicast stays off in everything spar launches.
            .env("NCCL_NVLS_ENABLE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Ranks sharing the node's cores: one OpenMP thread each unless the user chose (torchrun does the same).
        if spec.nproc_per_node > 1 && std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", "1");
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&mut ranks, libc::SIGTERM, spec.grace);
                bail!(
                    "could not start rank {global} ({}): {e}",
                    spec.program.display()
                );
            }
        };
        let logs = logs::Pipes::start(global, &mut child);
        ranks.push(Rank {
            global,
            child,
            logs,
        });
    }
    Ok(ranks)
}

/// Polls the ranks until all exit 0, one fails, or a signal arrives.
fn watch(ranks: &mut [Rank], grace: Duration) -> Result<()> {
    let mut done = vec![false; ranks.len()];
    loop {
        if let Some(sig) = signals::received() {
            stop(ranks, sig, grace);
            bail!("interrupted by signal {sig}: forwarded to every rank");
        }
        // Every rank that ended since the last poll; of several failures, one killed by a signal comes first:
        // a rank killed (kill -9, the OOM killer) makes its peers fail in their next collective within
        // milliseconds, and the killed one is the cause to report.
        let mut failed: Vec<(usize, std::process::ExitStatus)> = Vec::new();
        for (i, r) in ranks.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            let Some(status) = r.child.try_wait().context("waiting for a rank")? else {
                continue;
            };
            done[i] = true;
            if !status.success() {
                failed.push((i, status));
            }
        }
        if !failed.is_empty() {
            use std::os::unix::process::ExitStatusExt;
            let (i, status) = failed
                .iter()
                .find(|(_, s)| s.signal().is_some())
                .copied()
                .unwrap_or(failed[0]);
            let failure = RankFailure {
                rank: ranks[i].global,
                status: describe(status),
                tail: Vec::new(),
            };
            stop(ranks, libc::SIGTERM, grace);
            let tail = ranks[i].logs.finish_tail();
            return Err(RankFailure { tail, ..failure }.into());
        }
        if done.iter().all(|d| *d) {
            for r in ranks.iter_mut() {
                r.logs.finish_tail();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Sends `sig` to every rank still running, then SIGKILL to those still there after `grace`.
fn stop(ranks: &mut [Rank], sig: i32, grace: Duration) {
    for r in ranks.iter_mut() {
        if matches!(r.child.try_wait(), Ok(None)) {
            // The pid is our child's and has not been reaped (try_wait said it runs), so it names that process.
            unsafe { libc::kill(r.child.id() as i32, sig) };
        }
    }
    let until = Instant::now() + grace;
    while Instant::now() < until
        && ranks
            .iter_mut()
            .any(|r| matches!(r.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in ranks.iter_mut() {
        if matches!(r.child.try_wait(), Ok(None)) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}
