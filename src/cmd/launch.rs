//! `spar launch --nproc-per-node N [--nnodes M --node-rank K --master-addr A --master-port P] -- train --recipe R`:
//! runs N ranks of `spar` (or of `--program`) on this node with torchrun's environment contract, without Python.
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Ranks on this node (one per GPU on a GPU node).
    #[arg(long = "nproc-per-node", alias = "nproc_per_node")]
    pub nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index, 0..nnodes (node 0 hosts the rendezvous store).
    #[arg(long = "node-rank", alias = "node_rank", default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0.
    #[arg(
        long = "master-addr",
        alias = "master_addr",
        default_value = "127.0.0.1"
    )]
    pub master_addr: String,
    /// Port of the rendezvous store on node 0 (0 on one node: any free port; required with several nodes).
    #[arg(long = "master-port", alias = "master_port", default_value_t = 0)]
    pub master_port: u16,
    /// Program each rank runs (default: this spar binary).
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// Seconds ranks get to exit after SIGTERM before SIGKILL.
    #[arg(long = "grace-secs", default_value_t = 10.0)]
    pub grace_secs: f64,
    /// Start every rank again, up to this many times, when one fails (torchrun's --max-restarts; one node). The
    /// rank command must continue from its checkpoints: `train ... --resume`.
    #[arg(long = "max-restarts", alias = "max_restarts", default_value_t = 0)]
    pub max_restarts: usize,
    /// The rank's command line, after `--` (e.g. `train --recipe R.toml`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let own = args.program.is_none();
    let program = match args.program {
        Some(p) => p,
        None => std::env::current_exe()?,
    };
    anyhow::ensure!(
        args.grace_secs.is_finite() && args.grace_secs >= 0.0,
        "--grace-secs must be a non-negative number of seconds"
    );
    // A restarted `spar train` without --resume would refuse its own run folder (or, with --overwrite, wipe it).
    if own
        && args.max_restarts > 0
        && args.command.first().is_some_and(|c| c == "train")
        && !args.command.iter().any(|a| a == "--resume")
    {
        anyhow::bail!(
            "--max-restarts {} starts the job again after a failure: give `train` --resume so that it goes on \
             from its last checkpoint (a fresh folder starts fresh with --resume too)",
            args.max_restarts
        );
    }
    spar_dist::launch::launch(&spar_dist::launch::LaunchSpec {
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
        program,
        args: args.command,
        grace: Duration::from_secs_f64(args.grace_secs),
        max_restarts: args.max_restarts,
    })
}
