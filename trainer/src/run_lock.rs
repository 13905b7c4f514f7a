//! One run per run folder: `OUT/.lock` holds the pid, host and start time of the process that writes the folder
//! (created with `create_new`, so two processes cannot both take it). A second `spar train` on the same folder is
//! refused, naming the holder; a lock left by a process that died (kill -9, a crash: same host, pid gone) is
//! stale and taken over with a warning, so `--resume` after a crash needs nothing removed by hand. The lock is
//! removed when the run ends (its guard is dropped).
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The lock file's name inside the run folder.
pub const LOCK_FILE: &str = ".lock";

/// Who holds a run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// Unix seconds.
    pub started: u64,
}

/// Holds `OUT/.lock` until dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of run folder `out` (created if missing) for this process, running on `host` (its host
    /// name: a lock of the same host whose pid is gone is stale).
    pub fn acquire(out: &Path, host: &str) -> Result<RunLock> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join(LOCK_FILE);
        let me = LockHolder {
            pid: std::process::id(),
            host: host.to_string(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        // Two attempts: the second after removing a stale lock.
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => {
                    serde_json::to_writer(f, &me)
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = read_holder(&path);
                    match holder {
                        Some(h) if h.host == me.host && !alive(h.pid) => {
                            eprintln!(
                                "[train] warning: {} was left by pid {} on {}, which is gone; taking it over",
                                path.display(),
                                h.pid,
                                h.host
                            );
                        }
                        Some(h) => bail!(
                            "run folder {} is in use by pid {} on {} (since unix time {}): wait for that run, \
                             use another --out, or remove {} if that run is gone",
                            out.display(),
                            h.pid,
                            h.host,
                            h.started,
                            path.display()
                        ),
                        // Unreadable: a writer between create and write, or a damaged file. Refuse rather than
                        // guess; the message says how to clear it.
                        None => bail!(
                            "run folder {} is locked ({} exists but names no holder): if no run is writing there, \
                             remove it",
                            out.display(),
                            path.display()
                        ),
                    }
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing stale {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("{}: could not take the run folder's lock", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only our own lock: a folder taken over after we were presumed dead is not ours to free.
        if read_holder(&self.path).is_some_and(|h| h.pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_holder(path: &Path) -> Option<LockHolder> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether process `pid` of this host is alive (Linux: `/proc/<pid>`; elsewhere assumed alive, so a lock is
/// never taken from a live run).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "this-host";

    #[test]
    fn a_second_holder_is_refused_a_stale_lock_is_taken_over_and_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let lock = RunLock::acquire(&out, HOST).unwrap();
        let err = RunLock::acquire(&out, HOST).unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by pid {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        assert!(!out.join(LOCK_FILE).exists());
        // A lock left by a process of this host that is gone (pid beyond the kernel's limit) is taken over.
        let stale = LockHolder {
            pid: u32::MAX - 1,
            host: HOST.into(),
            started: 1,
        };
        std::fs::write(out.join(LOCK_FILE), serde_json::to_vec(&stale).unwrap()).unwrap();
        let lock = RunLock::acquire(&out, HOST).unwrap();
        assert_eq!(
            read_holder(&out.join(LOCK_FILE)).unwrap().pid,
            std::process::id()
        );
        drop(lock);
        // Another host's lock is never presumed dead.
        let other = LockHolder {
            host: "elsewhere".into(),
            ..stale
        };
        std::fs::write(out.join(LOCK_FILE), serde_json::to_vec(&other).unwrap()).unwrap();
        let err = RunLock::acquire(&out, HOST).unwrap_err().to_string();
        assert!(err.contains("on elsewhere"), "{err}");
        assert!(out.join(LOCK_FILE).exists(), "a foreign lock is left alone");
    }
}
