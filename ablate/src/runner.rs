//! Running an ablation's grid: one `spar train` (or `spar sft`) child process of the same binary per run, `jobs`
//! at once, each with its share of the cores (`OMP_NUM_THREADS` / `MKL_NUM_THREADS`, which libtorch's thread pools
//! take at start; optionally pinned with `taskset` on Linux), its output in `OUT/<run>.log`, a progress bar over
//! the runs. Resumable: a run whose `comparison.json` exists is kept, a run with checkpoints is resumed
//! (`--resume`), and a run whose recorded command (`OUT/<run>.cmd.json`) differs from the spec's is refused
//! rather than mixed into the table. A failed run is reported with its log's tail and the others go on; runs that
//! needed it (its seed's arms, for a shared SFT run) are not started.
use crate::aggregate::RunRef;
use crate::spec::{SFT_RUN, SftSource, Spec};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One child run.
#[derive(Clone, Debug)]
pub struct Job {
    /// `<arm>-s<seed>` (or `sft-s<seed>` for a shared SFT run).
    pub name: String,
    pub dir: PathBuf,
    /// Arguments after the binary (`train --recipe ... --out DIR ...`), without `--resume`.
    pub args: Vec<String>,
    /// Jobs (indices) that must finish first.
    pub deps: Vec<usize>,
}

/// The runs of `spec` under `out` (absolute): the jobs to run, in order, and every (arm, seed) with the folder its
/// results are read from.
pub fn plan(spec: &Spec, out: &Path) -> Result<(Vec<Job>, Vec<RunRef>)> {
    let base = spec.base_arg();
    let mut jobs: Vec<Job> = Vec::new();
    let mut refs = Vec::new();
    for &seed in &spec.seeds {
        let mut common = vec!["--recipe".to_string(), base.display().to_string()];
        for s in &spec.shared.set {
            common.push("--set".into());
            common.push(s.clone());
        }
        common.push("--set".into());
        common.push(format!("seed={seed}"));
        let with_out = |cmd: &str, extra: &[String], dir: &Path| -> Vec<String> {
            let mut a = vec![cmd.to_string()];
            a.extend(common.iter().cloned());
            a.extend(extra.iter().cloned());
            a.push("--out".into());
            a.push(dir.display().to_string());
            a
        };
        let (sft_dir, sft_job) = match &spec.from {
            SftSource::Shared => {
                let dir = out.join(format!("{SFT_RUN}-s{seed}"));
                jobs.push(Job {
                    name: format!("{SFT_RUN}-s{seed}"),
                    dir: dir.clone(),
                    args: with_out("sft", &[], &dir),
                    deps: vec![],
                });
                (Some(dir), Some(jobs.len() - 1))
            }
            SftSource::Path(p) => {
                let dir = std::path::absolute(p.replace("{seed}", &seed.to_string()))?;
                if !dir.join("comparison.json").is_file() {
                    bail!(
                        "ablation spec {}: from = {p:?}: {} is not a finished SFT run (no comparison.json)",
                        spec.file.display(),
                        dir.display()
                    );
                }
                (Some(dir), None)
            }
            SftSource::Own => (None, None),
        };
        for arm in &spec.arms {
            let dir = out.join(format!("{}-s{seed}", arm.name));
            if arm.sft_only {
                let dir = match &sft_dir {
                    Some(d) => d.clone(),
                    None => {
                        jobs.push(Job {
                            name: format!("{}-s{seed}", arm.name),
                            dir: dir.clone(),
                            args: with_out("sft", &[], &dir),
                            deps: vec![],
                        });
                        dir
                    }
                };
                refs.push(RunRef {
                    arm: arm.name.clone(),
                    seed,
                    dir,
                    sft_only: true,
                });
                continue;
            }
            let mut extra = Vec::new();
            for s in &arm.set {
                extra.push("--set".into());
                extra.push(s.clone());
            }
            if let Some(d) = &sft_dir {
                extra.push("--from-sft".into());
                extra.push(d.display().to_string());
            }
            jobs.push(Job {
                name: format!("{}-s{seed}", arm.name),
                dir: dir.clone(),
                args: with_out("train", &extra, &dir),
                deps: sft_job.into_iter().collect(),
            });
            refs.push(RunRef {
                arm: arm.name.clone(),
                seed,
                dir,
                sft_only: false,
            });
        }
    }
    Ok((jobs, refs))
}

/// How the children run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The spar binary (`std::env::current_exe()`).
    pub exe: PathBuf,
    /// Runs at once.
    pub jobs: usize,
    /// Cores to share between them.
    pub cores: usize,
    /// Pin each child to its own cores (`taskset`, Linux only).
    pub pin: bool,
}

impl RunOptions {
    /// Threads per child when every slot is busy: its share of the cores, at least one.
    pub fn threads(&self) -> usize {
        (self.cores / self.jobs.max(1)).max(1)
    }

    /// Threads for a child started while `runnable` runs (running ones, this one and the ones waiting for it to
    /// finish or for a slot) could use the cores: the cores shared among those that run at once. A shared SFT
    /// phase (one run per seed) gets several threads per run and the RL phase after it one per run, where an
    /// even split would leave cores idle during SFT. Pinned runs keep the even split (fixed core ranges).
    pub fn threads_for(&self, runnable: usize) -> usize {
        if self.pin {
            return self.threads();
        }
        (self.cores / runnable.clamp(1, self.jobs.max(1))).max(1)
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Finished before this invocation: kept as it is.
    Kept,
    /// Ran (or resumed) to the end now, in this many seconds.
    Done(f64),
    /// Failed, or not started because a run it needs failed; why (with the log's tail).
    Failed(String),
}

/// Whether `dir` holds a finished run.
pub fn finished(dir: &Path) -> bool {
    dir.join("comparison.json").is_file()
}

fn has_checkpoint(dir: &Path) -> bool {
    let root = dir.join("checkpoints");
    root.join("latest").is_file()
        || std::fs::read_dir(&root).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
}

/// The last `n` lines of `path`.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn cmd_file(out: &Path, job: &Job) -> PathBuf {
    out.join(format!("{}.cmd.json", job.name))
}

/// Checks the run's recorded command against the job's (a run made under other settings is not this spec's).
fn check_recorded(out: &Path, job: &Job) -> std::result::Result<(), String> {
    let p = cmd_file(out, job);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let recorded: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
    if recorded != job.args {
        return Err(format!(
            "{} was started with other arguments ({}):\n  recorded: {}\n  now:      {}\nremove {} and {} to run it \
             again under the spec as it is now",
            job.name,
            p.display(),
            recorded.join(" "),
            job.args.join(" "),
            job.dir.display(),
            p.display()
        ));
    }
    Ok(())
}

struct Running {
    idx: usize,
    child: Child,
    slot: usize,
    start: Instant,
}

/// Runs `jobs` (see the module doc); returns each job's outcome, in order.
pub fn run_all(jobs: &[Job], out: &Path, opts: &RunOptions) -> Result<Vec<Outcome>> {
    if opts.pin && !cfg!(target_os = "linux") {
        bail!("--pin works on Linux only (taskset)");
    }
    if opts.pin
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    {
        bail!("--pin needs taskset (util-linux)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let threads = opts.threads();
    let mut outcome: Vec<Option<Outcome>> = vec![None; jobs.len()];
    for (i, j) in jobs.iter().enumerate() {
        if let Err(m) = check_recorded(out, j) {
            outcome[i] = Some(Outcome::Failed(m));
        } else if finished(&j.dir) {
            outcome[i] = Some(Outcome::Kept);
        }
    }
    let pb = indicatif::ProgressBar::new(jobs.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "ablate [{elapsed_precise}] {bar:30} {pos}/{len} runs {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let say = |m: String| {
        if pb.is_hidden() {
            eprintln!("{m}");
        } else {
            pb.println(m);
        }
    };
    let kept = outcome
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Kept)))
        .count();
    pb.set_position(kept as u64);
    say(format!(
        "[ablate] {} runs ({kept} finished already), {} at once on {} cores, {}",
        jobs.len(),
        opts.jobs,
        opts.cores,
        if opts.pin {
            format!("{threads} thread(s) each, pinned")
        } else {
            "the cores shared among the runs that can run".to_string()
        }
    ));
    for (i, o) in outcome.iter().enumerate() {
        if let Some(Outcome::Failed(m)) = o {
            say(format!("[ablate] {}: refused: {m}", jobs[i].name));
        }
    }
    let mut running: Vec<Running> = Vec::new();
    let mut free_slots: Vec<usize> = (0..opts.jobs.max(1)).rev().collect();
    loop {
        // Runs whose prerequisite failed fail too, without starting.
        for i in 0..jobs.len() {
            if outcome[i].is_none()
                && let Some(d) = jobs[i]
                    .deps
                    .iter()
                    .find(|d| matches!(outcome[**d], Some(Outcome::Failed(_))))
            {
                let m = format!("not started: {} failed", jobs[*d].name);
                say(format!("[ablate] {}: {m}", jobs[i].name));
                outcome[i] = Some(Outcome::Failed(m));
                pb.inc(1);
            }
        }
        while !free_slots.is_empty() {
            // Jobs not started whose prerequisites are done, in plan order.
            let ready: Vec<usize> = (0..jobs.len())
                .filter(|&i| {
                    outcome[i].is_none()
                        && !running.iter().any(|r| r.idx == i)
                        && jobs[i].deps.iter().all(|d| {
                            matches!(outcome[*d], Some(Outcome::Kept) | Some(Outcome::Done(_)))
                        })
                })
                .collect();
            let Some(&i) = ready.first() else { break };
            let slot = free_slots.pop().expect("a free slot");
            // Runs that could use cores now: the running ones and every ready one (this one included).
            let threads = opts.threads_for(running.len() + ready.len());
            match start(&jobs[i], out, opts, threads, slot) {
                Ok(child) => {
                    running.push(Running {
                        idx: i,
                        child,
                        slot,
                        start: Instant::now(),
                    });
                }
                Err(e) => {
                    free_slots.push(slot);
                    let m = format!("could not start: {e:#}");
                    say(format!("[ablate] {}: {m}", jobs[i].name));
                    outcome[i] = Some(Outcome::Failed(m));
                    pb.inc(1);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let names: Vec<&str> = running.iter().map(|r| jobs[r.idx].name.as_str()).collect();
        pb.set_message(format!("running: {}", names.join(", ")));
        std::thread::sleep(Duration::from_millis(200));
        let mut k = 0;
        while k < running.len() {
            let status = running[k].child.try_wait()?;
            let Some(status) = status else {
                k += 1;
                continue;
            };
            let r = running.swap_remove(k);
            free_slots.push(r.slot);
            let job = &jobs[r.idx];
            let log = out.join(format!("{}.log", job.name));
            let secs = r.start.elapsed().as_secs_f64();
            if status.success() && finished(&job.dir) {
                say(format!("[ablate] {} finished ({secs:.0} s)", job.name));
                outcome[r.idx] = Some(Outcome::Done(secs));
            } else {
                let why = if status.success() {
                    "exited 0 without comparison.json".to_string()
                } else {
                    format!("{status}")
                };
                let m = format!(
                    "{why}; last lines of {}:\n{}",
                    log.display(),
                    tail(&log, 15)
                );
                say(format!("[ablate] {} FAILED: {m}", job.name));
                outcome[r.idx] = Some(Outcome::Failed(m));
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(outcome
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("not started".into())))
        .collect())
}

/// Starts one child: `[taskset -c CPUS] exe ARGS [--resume]`, output appended to `OUT/<name>.log`.
fn start(job: &Job, out: &Path, opts: &RunOptions, threads: usize, slot: usize) -> Result<Child> {
    let mut args = job.args.clone();
    if has_checkpoint(&job.dir) {
        args.push("--resume".into());
    } else if std::fs::read_dir(&job.dir).is_ok_and(|mut rd| rd.next().is_some()) {
        // A run of ours stopped before its first checkpoint: nothing to resume, and `spar train` refuses a
        // folder that holds a run unless told to replace it.
        args.push("--overwrite".into());
    }
    spar_core::fsio::write_atomic(
        &cmd_file(out, job),
        serde_json::to_string(&job.args)?.as_bytes(),
    )?;
    let log_path = out.join(format!("{}.log", job.name));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = if opts.pin {
        let first = slot * threads;
        let last = (first + threads - 1).min(opts.cores.max(1) - 1);
        let mut c = Command::new("taskset");
        c.arg("-c").arg(format!("{first}-{last}")).arg(&opts.exe);
        c
    } else {
        Command::new(&opts.exe)
    };
    cmd.args(&args);
    writeln!(
        log,
        "=== spar ablate: {} ({} thread(s)) ===\n{:?}",
        job.name, threads, cmd
    )?;
    cmd.env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn()
        .with_context(|| format!("starting {}", opts.exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(from: &str) -> Spec {
        Spec::parse(
            &format!(
                "base = \"tiny\"\nseeds = [0, 1]\nbaseline = \"sft\"\n{from}\n[shared]\nset = [\"trainer.lr=1\"]\n\
                 [[arm]]\nname = \"sft\"\nsft_only = true\n[[arm]]\nname = \"g\"\nset = [\"rewards.spar.estimator=\\\"grpo\\\"\"]\n"
            ),
            Path::new("/x/spec.toml"),
        )
        .unwrap()
    }

    #[test]
    fn a_shared_sft_plan_runs_sft_first_and_arms_from_it() {
        let (jobs, refs) = plan(&spec(""), Path::new("/o")).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, vec!["sft-s0", "g-s0", "sft-s1", "g-s1"]);
        assert_eq!(jobs[0].args[0], "sft");
        assert!(jobs[0].args.windows(2).any(|w| w == ["--set", "seed=0"]));
        assert!(
            jobs[0]
                .args
                .windows(2)
                .any(|w| w == ["--set", "trainer.lr=1"])
        );
        assert!(
            jobs[1]
                .args
                .windows(2)
                .any(|w| w == ["--from-sft", "/o/sft-s0"])
        );
        assert!(
            jobs[1]
                .args
                .windows(2)
                .any(|w| w == ["--set", "rewards.spar.estimator=\"grpo\""])
        );
        assert_eq!(jobs[1].deps, vec![0]);
        assert_eq!(jobs[3].deps, vec![2]);
        assert_eq!(refs.len(), 4);
        let sft0 = refs.iter().find(|r| r.arm == "sft" && r.seed == 0).unwrap();
        assert!(sft0.sft_only && sft0.dir == Path::new("/o/sft-s0"));
    }

    #[test]
    fn without_sharing_every_arm_trains_its_own_sft() {
        let (jobs, _) = plan(&spec("from = \"none\""), Path::new("/o")).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, vec!["sft-s0", "g-s0", "sft-s1", "g-s1"]);
        assert!(jobs.iter().all(|j| j.deps.is_empty()));
        assert!(!jobs[1].args.iter().any(|a| a == "--from-sft"));
    }

    #[test]
    fn threads_share_the_cores() {
        let o = |jobs, cores| RunOptions {
            exe: "x".into(),
            jobs,
            cores,
            pin: false,
        };
        assert_eq!(o(2, 16).threads(), 8);
        assert_eq!(o(3, 2).threads(), 1);
        // Five SFT runs on 16 cores with 16 slots: three threads each; fifteen RL runs after them: one each.
        assert_eq!(o(16, 16).threads_for(5), 3);
        assert_eq!(o(16, 16).threads_for(15), 1);
        assert_eq!(o(4, 16).threads_for(15), 4);
        assert_eq!(o(4, 16).threads_for(0), 16);
        let pinned = RunOptions {
            pin: true,
            ..o(4, 16)
        };
        assert_eq!(pinned.threads_for(1), 4);
    }

    #[test]
    fn a_failed_child_is_reported_with_its_log_and_its_dependants_are_not_started() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let jobs = vec![
            Job {
                name: "a".into(),
                dir: out.join("a"),
                args: vec!["-c".into(), "echo boom-from-a; exit 3".into()],
                deps: vec![],
            },
            Job {
                name: "b".into(),
                dir: out.join("b"),
                args: vec!["-c".into(), "true".into()],
                deps: vec![0],
            },
            Job {
                name: "c".into(),
                dir: out.join("c"),
                args: vec![
                    "-c".into(),
                    format!(
                        "mkdir -p {0} && echo {{}} > {0}/comparison.json && echo threads=$OMP_NUM_THREADS",
                        out.join("c").display()
                    ),
                ],
                deps: vec![],
            },
        ];
        let opts = RunOptions {
            exe: "/bin/sh".into(),
            jobs: 2,
            cores: 4,
            pin: false,
        };
        let res = run_all(&jobs, out, &opts).unwrap();
        match &res[0] {
            Outcome::Failed(m) => assert!(m.contains("boom-from-a"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(&res[1], Outcome::Failed(m) if m.contains("a failed")));
        assert!(matches!(res[2], Outcome::Done(_)));
        assert!(
            std::fs::read_to_string(out.join("c.log"))
                .unwrap()
                .contains("threads=2")
        );
        // Again: the finished run is kept; a changed command is refused, not rerun.
        let res = run_all(&jobs[2..], out, &opts).unwrap();
        assert_eq!(res, vec![Outcome::Kept]);
        let mut changed = jobs[2].clone();
        changed.args[1].push_str(" # other");
        let res = run_all(&[changed], out, &opts).unwrap();
        assert!(matches!(&res[0], Outcome::Failed(m) if m.contains("other arguments")));
    }
}
