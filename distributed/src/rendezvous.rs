//! The start-up checks of a job, through the store, each with a timeout and an error that names the ranks at
//! fault: every rank arrives (and no rank twice), all agree on the world size, and all run the same binary and
//! recipe (compared as hashes).
use crate::store::Store;
use anyhow::{Result, bail, ensure};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// One rank's view of the rendezvous.
pub struct Rendezvous<'a> {
    store: &'a Store,
    rank: usize,
    world: usize,
    timeout: Duration,
    hosts: bool,
}

/// Where the first rank to give up writes why, and how many ranks have read it.
const VERDICT: &str = "spar/rendezvous_failed";
const VERDICT_READ: &str = "spar/rendezvous_failed_read";
/// How long a rank hosting the store waits for the others to read its verdict before it exits.
const VERDICT_GRACE: Duration = Duration::from_secs(5);

impl<'a> Rendezvous<'a> {
    /// `timeout` bounds each step (arrival, each agreement). `hosts`: this process hosts the store (it then
    /// lingers after a failed arrival until the others have read the verdict).
    pub fn new(
        store: &'a Store,
        rank: usize,
        world: usize,
        timeout: Duration,
        hosts: bool,
    ) -> Self {
        Self {
            store,
            rank,
            world,
            timeout,
            hosts,
        }
    }

    /// Registers this rank and waits for all `world` ranks. Errors: another rank was started with a different
    /// world size; this rank number was started twice; ranks missing when the timeout passes (named).
    pub fn arrive(&self) -> Result<()> {
        let ours = self.world.to_string();
        let theirs = self
            .store
            .compare_set("spar/world_size", b"", ours.as_bytes())?;
        let theirs = String::from_utf8_lossy(&theirs).to_string();
        ensure!(
            theirs == ours,
            "rank {} was started with world size {} but an earlier rank uses world size {} (WORLD_SIZE / \
             SLURM_NTASKS differ between ranks)",
            self.rank,
            ours,
            theirs
        );
        let times = self.store.add(&format!("spar/rank/{}", self.rank), 1)?;
        ensure!(
            times == 1,
            "rank {} of world size {} was started {times} times",
            self.rank,
            self.world
        );
        self.store.add("spar/arrived", 1)?;
        let start = Instant::now();
        loop {
            let n = self.store.add("spar/arrived", 0)?;
            if n as usize >= self.world {
                return Ok(());
            }
            // Another rank already gave up (the store's host may be about to exit): report its verdict.
            if self.store.check(VERDICT)? {
                let v = self.store.get(VERDICT, self.timeout)?;
                self.store.add(VERDICT_READ, 1)?;
                bail!("{}", String::from_utf8_lossy(&v));
            }
            if start.elapsed() > self.timeout {
                return Err(self.give_up(n));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Names the missing ranks, publishes the verdict for the ranks that did arrive and, when this rank hosts
    /// the store, keeps it up a little while so that they can read it (else they would only see the store go).
    fn give_up(&self, arrived: i64) -> anyhow::Error {
        let mut missing = Vec::new();
        for r in 0..self.world {
            match self.store.check(&format!("spar/rank/{r}")) {
                Ok(false) => missing.push(r),
                Ok(true) => {}
                Err(e) => return e,
            }
        }
        let msg = format!(
            "rendezvous at {} timed out after {:.1}s: rank(s) {missing:?} of world size {} never arrived ({arrived} \
             of {} did)",
            self.store.address(),
            self.timeout.as_secs_f64(),
            self.world,
            self.world
        );
        if self.store.compare_set(VERDICT, b"", msg.as_bytes()).is_ok() && self.hosts {
            let others = arrived - 1;
            let until = Instant::now() + VERDICT_GRACE;
            while Instant::now() < until
                && self.store.add(VERDICT_READ, 0).is_ok_and(|n| n < others)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        anyhow::anyhow!(msg)
    }

    /// Checks that every rank passes the same `value` for `what` (e.g. "binary", "recipe"); the values are
    /// compared as SHA-256 hashes. On a mismatch every rank fails with the same message naming the ranks that
    /// differ from rank 0.
    pub fn agree(&self, what: &str, value: &[u8]) -> Result<()> {
        let ours = hex::encode(Sha256::digest(value));
        self.store
            .set(&format!("spar/agree/{what}/{}", self.rank), ours.as_bytes())?;
        let mut hashes = Vec::with_capacity(self.world);
        for r in 0..self.world {
            let v = self
                .store
                .get(&format!("spar/agree/{what}/{r}"), self.timeout)
                .map_err(|e| {
                    e.context(format!(
                        "rank {r} did not publish its {what} hash within {:?}",
                        self.timeout
                    ))
                })?;
            hashes.push(String::from_utf8_lossy(&v).to_string());
        }
        let differ: Vec<usize> = (1..self.world)
            .filter(|&r| hashes[r] != hashes[0])
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        bail!(
            "rank(s) {differ:?} run a different {what} than rank 0 (sha256 {} vs {}): start every rank with the \
             same binary and recipe",
            &hashes[differ[0]][..12],
            &hashes[0][..12]
        )
    }
}
