//! Spawning ranks of `spar-dist-selftest` with the torchrun environment contract.
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};

/// The launcher variables a child must not inherit from the test's own environment.
const CONTRACT: &[&str] = &[
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "GLOO_SOCKET_IFNAME",
];

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The selftest binary with a clean launcher environment.
pub fn selftest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spar-dist-selftest"));
    for v in CONTRACT {
        c.env_remove(v);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// How the ranks meet.
#[derive(Clone, Copy)]
pub enum Meet {
    /// Rank 0 hosts the store on this port.
    RankZero(u16),
    /// The test hosts the store (torchrun's agent store) on this port.
    Agent(u16),
}

/// Starts `rank` of a world of `world` with `args`.
pub fn spawn_rank(rank: usize, world: usize, meet: Meet, args: &[&str]) -> Child {
    let mut c = selftest();
    let (port, agent) = match meet {
        Meet::RankZero(p) => (p, "False"),
        Meet::Agent(p) => (p, "True"),
    };
    c.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("TORCHELASTIC_USE_AGENT_STORE", agent)
        .args(args);
    c.spawn().unwrap()
}

/// Waits for every child; returns (exit code, stdout, stderr) per rank.
pub fn collect(children: Vec<Child>) -> Vec<(i32, String, String)> {
    children
        .into_iter()
        .map(|c| {
            let Output {
                status,
                stdout,
                stderr,
            } = c.wait_with_output().unwrap();
            (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&stdout).to_string(),
                String::from_utf8_lossy(&stderr).to_string(),
            )
        })
        .collect()
}
