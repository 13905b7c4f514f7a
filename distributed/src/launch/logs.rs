//! A rank's stdout and stderr, copied line by line to the launcher's with a `[rank k]` prefix; the last stderr
//! lines are kept for the failure report.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How many stderr lines a failure report quotes.
const TAIL: usize = 20;

/// The copying threads of one rank.
pub(super) struct Pipes {
    threads: Vec<JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Pipes {
    /// Takes the child's piped stdout and stderr.
    pub(super) fn start(rank: usize, child: &mut Child) -> Self {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut threads = Vec::new();
        if let Some(out) = child.stdout.take() {
            threads.push(std::thread::spawn(move || copy(rank, out, false, None)));
        }
        if let Some(err) = child.stderr.take() {
            let t = tail.clone();
            threads.push(std::thread::spawn(move || copy(rank, err, true, Some(t))));
        }
        Self { threads, tail }
    }

    /// Waits for the pipes to close (the rank has exited) and returns the last stderr lines.
    pub(super) fn finish_tail(&mut self) -> Vec<String> {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn copy(rank: usize, from: impl Read, stderr: bool, tail: Option<Arc<Mutex<VecDeque<String>>>>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        // One write per line so that lines of different ranks never interleave mid-line.
        let text = format!("[rank {rank}] {line}\n");
        if stderr {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        } else {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        if let Some(t) = &tail
            && let Ok(mut t) = t.lock()
        {
            if t.len() == TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}
