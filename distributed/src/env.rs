//! Where a rank learns its place: torchrun's environment contract, Slurm's, or neither (one process).
use anyhow::{Context, Result, bail, ensure};
use std::str::FromStr;

/// Which launcher set the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun or `spar launch` (RANK, WORLD_SIZE, ...).
    Torchrun,
    /// `srun` (SLURM_PROCID, SLURM_NTASKS, ...).
    Slurm,
    /// No launcher: one process.
    Single,
}

/// A rank's place in the job and where the job meets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks in the job.
    pub world_size: usize,
    /// Rank on this node (picks the GPU).
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// Host of the rendezvous store.
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the store; every rank connects as a client.
    pub agent_store: bool,
    /// TORCHELASTIC_RESTART_COUNT (the agent store's key prefix is `/worker/attempt_<n>`).
    pub restart_count: u32,
    /// TORCHELASTIC_RUN_ID, when set.
    pub run_id: Option<String>,
    /// Who set the environment.
    pub launcher: Launcher,
}

/// Port used under Slurm when MASTER_PORT is unset: derived from the job id so that two jobs sharing a node do
/// not collide (the same rule on every rank of the job).
fn slurm_port(job_id: Option<&str>) -> u16 {
    let id: u64 = job_id.and_then(|j| j.parse().ok()).unwrap_or(0);
    20000 + (id % 10000) as u16
}

impl DistEnv {
    /// One process, no launcher.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            agent_store: false,
            restart_count: 0,
            run_id: None,
            launcher: Launcher::Single,
        }
    }

    /// Reads the process environment (see [`DistEnv::from_vars`]).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// torchrun's contract when RANK is set, else Slurm's when SLURM_PROCID is set, else one process. Missing or
    /// malformed variables are errors naming the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let env = if var("RANK").is_some() {
            Self::torchrun(&var)?
        } else if var("SLURM_PROCID").is_some() {
            Self::slurm(&var)?
        } else {
            return Ok(Self::single());
        };
        env.validate()?;
        Ok(env)
    }

    fn torchrun(var: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let rank = parse(var, "RANK")?;
        let world_size = parse(var, "WORLD_SIZE")?;
        let local_rank = parse_or(var, "LOCAL_RANK", rank)?;
        let local_world_size = parse_or(var, "LOCAL_WORLD_SIZE", world_size)?;
        let (master_addr, master_port) = if world_size > 1 {
            (required(var, "MASTER_ADDR")?, parse(var, "MASTER_PORT")?)
        } else {
            (
                var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                parse_or(var, "MASTER_PORT", 0)?,
            )
        };
        let agent_store = match var("TORCHELASTIC_USE_AGENT_STORE").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => false,
            Some(v) => bail!("TORCHELASTIC_USE_AGENT_STORE={v:?}: expected True or False"),
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count: parse_or(var, "TORCHELASTIC_RESTART_COUNT", 0)?,
            run_id: var("TORCHELASTIC_RUN_ID"),
            launcher: Launcher::Torchrun,
        })
    }

    fn slurm(var: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let rank = parse(var, "SLURM_PROCID")?;
        let world_size = parse(var, "SLURM_NTASKS")?;
        let local_rank = parse_or(var, "SLURM_LOCALID", 0)?;
        // SLURM_TASKS_PER_NODE looks like "4(x2),3": the first node's count is this layout's local world size.
        let local_world_size =
            match var("SLURM_NTASKS_PER_NODE").or_else(|| var("SLURM_TASKS_PER_NODE")) {
                Some(v) => {
                    let first = v.split([',', '(']).next().unwrap_or_default();
                    first
                        .parse()
                        .with_context(|| format!("SLURM_TASKS_PER_NODE={v:?}: not a task count"))?
                }
                None => 1,
            };
        let master_addr = match var("MASTER_ADDR") {
            Some(a) => a,
            None => {
                let list = required(var, "SLURM_JOB_NODELIST")?;
                first_host(&list)?
            }
        };
        let master_port = match var("MASTER_PORT") {
            Some(_) => parse(var, "MASTER_PORT")?,
            None => slurm_port(var("SLURM_JOB_ID").as_deref()),
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store: false,
            restart_count: 0,
            run_id: var("SLURM_JOB_ID"),
            launcher: Launcher::Slurm,
        })
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.world_size >= 1,
            "world size must be at least 1, got {}",
            self.world_size
        );
        ensure!(
            self.rank < self.world_size,
            "rank {} is outside world size {}",
            self.rank,
            self.world_size
        );
        ensure!(
            self.local_rank < self.local_world_size.max(1),
            "local rank {} is outside local world size {}",
            self.local_rank,
            self.local_world_size
        );
        Ok(())
    }

    /// Whether this is rank 0 (the rank that writes metrics, checkpoints and evaluations).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

fn required(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String> {
    var(name).with_context(|| format!("{name} is not set (needed for a multi-process run)"))
}

fn parse<T: FromStr>(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<T> {
    let v = required(var, name)?;
    v.trim()
        .parse()
        .ok()
        .with_context(|| format!("{name}={v:?} is not a valid number"))
}

fn parse_or<T: FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T> {
    match var(name) {
        None => Ok(default),
        Some(_) => parse(var, name),
    }
}

/// The first host of a Slurm node list: `node[003-005,9],gpu1` -> `node003`, `a,b` -> `a`, `x[1-2]-ib` -> `x1-ib`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    ensure!(
        !entry.is_empty(),
        "SLURM_JOB_NODELIST={list:?} names no host"
    );
    let Some(open) = entry.find('[') else {
        return Ok(entry.to_string());
    };
    let close = entry[open..]
        .find(']')
        .map(|i| open + i)
        .with_context(|| format!("SLURM_JOB_NODELIST={list:?}: unclosed '['"))?;
    let inner = &entry[open + 1..close];
    let first = inner.split(',').next().unwrap_or_default();
    let start = first.split('-').next().unwrap_or_default();
    ensure!(
        !start.is_empty() && start.chars().all(|c| c.is_ascii_digit()),
        "SLURM_JOB_NODELIST={list:?}: cannot read the range {inner:?}"
    );
    Ok(format!(
        "{}{}{}",
        &entry[..open],
        start,
        &entry[close + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<DistEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_launcher_is_one_process() {
        assert_eq!(env(&[]).unwrap(), DistEnv::single());
    }

    #[test]
    fn torchrun_contract() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("TORCHELASTIC_RUN_ID", "job9"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 4, 1, 2)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node7", 29400));
        assert!(e.agent_store);
        assert_eq!((e.restart_count, e.run_id.as_deref()), (2, Some("job9")));
        assert_eq!(e.launcher, Launcher::Torchrun);
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
        let e = env(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("rank 2 is outside world size 2"),
            "{e}"
        );
        let e = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "maybe"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("TORCHELASTIC_USE_AGENT_STORE"),
            "{e}"
        );
    }

    #[test]
    fn slurm_contract() {
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[012-013]"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (5, 8, 1, 4)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("gpu012", 23456));
        assert_eq!(e.launcher, Launcher::Slurm);
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "7"),
        ]);
        assert_eq!(e.unwrap().master_port, 7);
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("node[003-005,9],gpu1").unwrap(), "node003");
        assert_eq!(first_host("a,b").unwrap(), "a");
        assert_eq!(first_host("x[1-2]-ib,y").unwrap(), "x1-ib");
        assert_eq!(first_host("solo").unwrap(), "solo");
        assert!(first_host("n[1-2").is_err());
        assert!(first_host("").is_err());
    }
}
