//! Where the time went, read from a torch profiler Chrome trace (what `prof.key_averages().table()` prints in
//! Python, plus the two questions a slow step raises on a GPU: did the GPU work, and what held the host).
//!
//! Tables: the named spans (`user_annotation`: spar's phases) with the GPU kernel time launched inside each;
//! the host ops by self time; the GPU kernels; the CUDA runtime calls (launches, `cudaMalloc` / `cudaFree`,
//! synchronisations); and the GPU's busy time (union of kernel, memcpy and memset intervals) against the
//! trace's wall time. Reads the trace as torch writes it (`traceEvents` of complete events, times in µs).

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// The fields of a trace event this summary reads (the rest of each event is skipped while parsing).
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(default)]
    ph: String,
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    pid: serde_json::Value,
    #[serde(default)]
    tid: serde_json::Value,
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    args: Args,
}

#[derive(Debug, Default, Deserialize)]
struct Args {
    correlation: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Trace {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<Event>,
}

/// One row of a table: calls and milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub name: String,
    pub calls: u64,
    /// Total (for host ops: self) milliseconds.
    pub ms: f64,
    /// Spans: GPU milliseconds of the kernels launched inside. Host ops: total milliseconds, children included.
    pub other_ms: f64,
    /// Spans: milliseconds in no torch op (spar's own host code, waits outside torch).
    pub outside_ms: f64,
    /// Spans: torch ops called directly inside (not counting the ops those call): the host's dispatches.
    pub top_ops: u64,
}

/// The tables of one trace.
#[derive(Clone, Debug, Default)]
pub struct TraceSummary {
    /// From the first event's start to the last event's end, milliseconds.
    pub wall_ms: f64,
    /// Union of the GPU's kernel, memcpy and memset intervals, milliseconds (0 on a CPU trace).
    pub gpu_busy_ms: f64,
    pub events: usize,
    /// Named spans, in order of first appearance.
    pub spans: Vec<Row>,
    /// Host ops (`cpu_op`) by self time, longest first.
    pub host_ops: Vec<Row>,
    /// GPU kernels, memcpys and memsets by total time, longest first.
    pub kernels: Vec<Row>,
    /// CUDA runtime and driver calls by total time, longest first.
    pub runtime: Vec<Row>,
    /// Per span name (in `spans` order): what its calls held.
    pub inside: Vec<(String, SpanTables)>,
}

fn is_gpu(cat: &str) -> bool {
    matches!(cat, "kernel" | "gpu_memcpy" | "gpu_memset")
}

fn is_runtime(cat: &str) -> bool {
    matches!(cat, "cuda_runtime" | "cuda_driver")
}

/// Rows by name, in first-seen order.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    at: HashMap<String, usize>,
}

impl Table {
    /// The index of `name`'s row, a new row at the end the first time.
    fn index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.at.get(name) {
            return i;
        }
        self.rows.push(Row {
            name: name.to_string(),
            ..Row::default()
        });
        self.at.insert(name.to_string(), self.rows.len() - 1);
        self.rows.len() - 1
    }

    fn add(&mut self, name: &str, ms: f64, other_ms: f64) -> &mut Row {
        let i = self.index(name);
        let r = &mut self.rows[i];
        r.calls += 1;
        r.ms += ms;
        r.other_ms += other_ms;
        r
    }

    fn longest_first(mut self) -> Vec<Row> {
        self.rows
            .sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.name.cmp(&b.name)));
        self.rows
    }
}

/// What one span holds while the trace is read.
#[derive(Default)]
struct SpanDetail {
    host_ops: Table,
    runtime: Table,
    kernels: Table,
}

/// What the calls of one span name held, summed over its calls: host ops by self time, CUDA runtime calls, and
/// the GPU work those calls launched, each longest first.
#[derive(Clone, Debug, Default)]
pub struct SpanTables {
    pub host_ops: Vec<Row>,
    pub runtime: Vec<Row>,
    pub kernels: Vec<Row>,
}

impl TraceSummary {
    /// Reads and summarises the Chrome trace at `path` (gzipped when it ends in `.gz`).
    pub fn from_file(path: &Path) -> Result<TraceSummary> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening the profiler trace {}", path.display()))?;
        let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let trace: Trace = serde_json::from_reader(std::io::BufReader::new(reader))
            .with_context(|| format!("{}: not a Chrome trace (traceEvents)", path.display()))?;
        Ok(Self::from_events(trace.trace_events))
    }

    /// Summarises a Chrome trace held in memory.
    pub fn from_json(text: &str) -> Result<TraceSummary> {
        let trace: Trace =
            serde_json::from_str(text).context("not a Chrome trace (traceEvents)")?;
        Ok(Self::from_events(trace.trace_events))
    }

    fn from_events(events: Vec<Event>) -> TraceSummary {
        let complete: Vec<&Event> = events.iter().filter(|e| e.ph == "X").collect();
        let start = complete.iter().map(|e| e.ts).fold(f64::INFINITY, f64::min);
        let end = complete
            .iter()
            .map(|e| e.ts + e.dur)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut s = TraceSummary {
            wall_ms: if complete.is_empty() {
                0.0
            } else {
                (end - start) / 1e3
            },
            events: complete.len(),
            ..TraceSummary::default()
        };
        // GPU work of each launch, by correlation id (a runtime call and the work it launched share one).
        let mut gpu_of: HashMap<i64, Vec<(&str, f64)>> = HashMap::new();
        let mut gpu_intervals = Vec::new();
        let mut kernels = Table::default();
        for e in complete.iter().filter(|e| is_gpu(&e.cat)) {
            if let Some(c) = e.args.correlation {
                gpu_of.entry(c).or_default().push((&e.name, e.dur));
            }
            gpu_intervals.push((e.ts, e.ts + e.dur));
            kernels.add(&e.name, e.dur / 1e3, 0.0);
        }
        s.gpu_busy_ms = union_length(gpu_intervals) / 1e3;
        s.kernels = kernels.longest_first();
        let mut runtime = Table::default();
        for e in complete.iter().filter(|e| is_runtime(&e.cat)) {
            runtime.add(&e.name, e.dur / 1e3, 0.0);
        }
        s.runtime = runtime.longest_first();

        // Host ops with their self time (nesting by time within each thread), then each span's contents: every
        // op and runtime call that starts while it is open, on any thread (autograd runs a CUDA backward on a
        // thread of its own), and the GPU work those calls launched. A span's time in no torch op is its own
        // thread's.
        let thread = |e: &Event| format!("{}/{}", e.pid, e.tid);
        let mut by_thread: HashMap<String, Vec<&Event>> = HashMap::new();
        for e in complete.iter().filter(|e| e.cat == "cpu_op") {
            by_thread.entry(thread(e)).or_default().push(e);
        }
        let mut ops = Table::default();
        // (op, self µs, called directly by spar rather than by another op)
        let mut host: Vec<(&Event, f64, bool)> = Vec::new();
        for list in by_thread.values_mut() {
            list.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.dur.total_cmp(&a.dur)));
            let mut own: Vec<f64> = list.iter().map(|e| e.dur).collect();
            let mut top_level = vec![false; list.len()];
            let mut stack: Vec<usize> = Vec::new();
            for (i, e) in list.iter().enumerate() {
                while stack
                    .last()
                    .is_some_and(|&top| e.ts >= list[top].ts + list[top].dur)
                {
                    stack.pop();
                }
                match stack.last() {
                    Some(&parent) => own[parent] -= e.dur,
                    None => top_level[i] = true,
                }
                stack.push(i);
            }
            for (i, e) in list.iter().enumerate() {
                ops.add(&e.name, own[i].max(0.0) / 1e3, e.dur / 1e3);
                host.push((e, own[i].max(0.0), top_level[i]));
            }
        }
        host.sort_by(|a, b| a.0.ts.total_cmp(&b.0.ts));
        let mut calls: Vec<&Event> = complete
            .iter()
            .filter(|e| is_runtime(&e.cat))
            .copied()
            .collect();
        calls.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        let launched = |e: &Event| e.args.correlation.and_then(|c| gpu_of.get(&c));
        // In order of start, so that the span table's rows (first seen first) are in order of first appearance.
        let mut annotations: Vec<&Event> = complete
            .iter()
            .filter(|e| e.cat == "user_annotation")
            .copied()
            .collect();
        annotations.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        let mut spans = Table::default();
        // Row i of `spans` holds what `inside[i]` saw.
        let mut inside: Vec<SpanDetail> = Vec::new();
        for span in annotations {
            let (from, to) = (span.ts, span.ts + span.dur);
            let i = spans.index(&span.name);
            if i == inside.len() {
                inside.push(SpanDetail::default());
            }
            let detail = &mut inside[i];
            let mut gpu = 0.0;
            let lo = calls.partition_point(|e| e.ts < from);
            let hi = calls.partition_point(|e| e.ts <= to);
            for c in &calls[lo..hi] {
                detail.runtime.add(&c.name, c.dur / 1e3, 0.0);
                for (name, dur) in launched(c).into_iter().flatten() {
                    detail.kernels.add(name, dur / 1e3, 0.0);
                    gpu += dur;
                }
            }
            let lo = host.partition_point(|h| h.0.ts < from);
            let hi = host.partition_point(|h| h.0.ts <= to);
            let (mut in_own_ops, mut top_ops) = (0.0, 0);
            let span_thread = thread(span);
            for (e, own, top) in &host[lo..hi] {
                detail.host_ops.add(&e.name, own / 1e3, e.dur / 1e3);
                if *top {
                    top_ops += 1;
                    if thread(e) == span_thread {
                        in_own_ops += e.dur;
                    }
                }
            }
            let row = spans.add(&span.name, span.dur / 1e3, gpu / 1e3);
            row.outside_ms += (span.dur - in_own_ops).max(0.0) / 1e3;
            row.top_ops += top_ops;
        }
        s.inside = spans
            .rows
            .iter()
            .zip(inside)
            .map(|(row, d)| {
                let tables = SpanTables {
                    host_ops: d.host_ops.longest_first(),
                    runtime: d.runtime.longest_first(),
                    kernels: d.kernels.longest_first(),
                };
                (row.name.clone(), tables)
            })
            .collect();
        s.spans = spans.rows;
        s.host_ops = ops.longest_first();
        s
    }

    /// The summary as Markdown, each table cut to its `top` longest rows.
    pub fn to_markdown(&self, title: &str, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {title}\n");
        let _ = writeln!(
            out,
            "{} events over {:.1} ms of wall time.",
            self.events, self.wall_ms
        );
        if self.gpu_busy_ms > 0.0 {
            let _ = writeln!(
                out,
                "GPU busy {:.1} ms ({:.1}% of the wall time): the union of kernel, memcpy and memset intervals.",
                self.gpu_busy_ms,
                100.0 * self.gpu_busy_ms / self.wall_ms.max(1e-9)
            );
        }
        let wall = self.wall_ms.max(1e-9);
        let on_gpu = self.gpu_busy_ms > 0.0;
        let calls = |r: &Row| r.calls.to_string();
        let ms = |r: &Row| format!("{:.2}", r.ms);
        let per_call = |r: &Row| format!("{:.3}", r.ms / r.calls.max(1) as f64);
        let share = |r: &Row| format!("{:.1}%", 100.0 * r.ms / wall);
        let other = |r: &Row| format!("{:.2}", r.other_ms);
        let outside = |r: &Row| format!("{:.2}", r.outside_ms);
        let ops_per_call = |r: &Row| format!("{:.0}", r.top_ops as f64 / r.calls.max(1) as f64);
        type Col<'a> = (&'a str, &'a dyn Fn(&Row) -> String);
        let table = |out: &mut String, head: &str, cols: &[Col<'_>], rows: &[Row], cut: usize| {
            if rows.is_empty() {
                return;
            }
            let _ = writeln!(out, "\n{head}\n");
            let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
            let _ = writeln!(out, "| name | {} |", names.join(" | "));
            let _ = writeln!(out, "|---|{}", "---:|".repeat(cols.len()));
            let shown = cut.min(rows.len());
            for r in &rows[..shown] {
                let name: String = r.name.chars().take(100).collect();
                let cells: Vec<String> = cols.iter().map(|c| (c.1)(r)).collect();
                let _ = writeln!(
                    out,
                    "| `{}` | {} |",
                    name.replace('|', "\\|"),
                    cells.join(" | ")
                );
            }
            if shown < rows.len() {
                let rest = Row {
                    name: String::new(),
                    calls: rows[shown..].iter().map(|r| r.calls).sum(),
                    ms: rows[shown..].iter().map(|r| r.ms).sum(),
                    ..Row::default()
                };
                let _ = writeln!(
                    out,
                    "| ({} more) | {} | {} |{}",
                    rows.len() - shown,
                    rest.calls,
                    ms(&rest),
                    " |".repeat(cols.len() - 2)
                );
            }
        };
        let mut span_cols: Vec<Col<'_>> = vec![
            ("calls", &calls),
            ("ms", &ms),
            ("ms / call", &per_call),
            ("% of wall", &share),
            ("ms in no torch op", &outside),
            ("torch ops / call", &ops_per_call),
        ];
        if on_gpu {
            span_cols.push(("GPU ms launched inside", &other));
        }
        let host_cols: [Col<'_>; 4] = [
            ("calls", &calls),
            ("self ms", &ms),
            ("self ms / call", &per_call),
            ("total ms", &other),
        ];
        let timed: [Col<'_>; 4] = [
            ("calls", &calls),
            ("ms", &ms),
            ("ms / call", &per_call),
            ("% of wall", &share),
        ];
        let inner: [Col<'_>; 3] = [("calls", &calls), ("ms", &ms), ("ms / call", &per_call)];
        let spans_head = "## Spans (spar's phases; nested spans count in their parents too)";
        table(&mut out, spans_head, &span_cols, &self.spans, usize::MAX);
        table(
            &mut out,
            "## Host ops by self time",
            &host_cols,
            &self.host_ops,
            top,
        );
        let gpu_head = "## GPU kernels, memcpys, memsets";
        table(&mut out, gpu_head, &timed, &self.kernels, top);
        table(
            &mut out,
            "## CUDA runtime calls",
            &timed,
            &self.runtime,
            top,
        );
        let few = top.div_ceil(3);
        if !self.inside.is_empty() {
            let _ = writeln!(
                out,
                "\n## Inside each span\n\nSummed over the span's calls: host ops by self time, CUDA runtime \
                 calls, and the GPU work those calls launched ({few} longest of each)."
            );
        }
        for (name, t) in &self.inside {
            let _ = writeln!(out, "\n### `{name}`");
            table(&mut out, "Host ops:", &host_cols, &t.host_ops, few);
            table(&mut out, "CUDA runtime calls:", &inner, &t.runtime, few);
            table(&mut out, "GPU work launched:", &inner, &t.kernels, few);
        }
        out
    }
}

/// Total length covered by possibly overlapping intervals.
fn union_length(mut iv: Vec<(f64, f64)>) -> f64 {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in iv {
        cur = match cur {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = cur {
        total += e - s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made GPU trace: one span holding two ops, one of which launches a kernel through the runtime, and a
    /// backward op on autograd's thread launching another while the span is open.
    const TRACE: &str = r#"{"traceEvents": [
      {"ph": "X", "cat": "user_annotation", "name": "engine/prefill", "pid": 1, "tid": 1, "ts": 0, "dur": 100},
      {"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 1, "tid": 1, "ts": 10, "dur": 50},
      {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 20, "dur": 30},
      {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 25, "dur": 5,
       "args": {"correlation": 7}},
      {"ph": "X", "cat": "cpu_op", "name": "aten::item", "pid": 1, "tid": 1, "ts": 70, "dur": 25},
      {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "pid": 1, "tid": 1, "ts": 72, "dur": 20},
      {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 30, "dur": 40,
       "args": {"correlation": 7}},
      {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "pid": 0, "tid": 7, "ts": 60, "dur": 20},
      {"ph": "X", "cat": "cpu_op", "name": "autograd::engine::evaluate_function: MmBackward0", "pid": 1, "tid": 2,
       "ts": 80, "dur": 10},
      {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 2, "ts": 82, "dur": 3,
       "args": {"correlation": 8}},
      {"ph": "X", "cat": "kernel", "name": "gemm_backward", "pid": 0, "tid": 7, "ts": 90, "dur": 5,
       "args": {"correlation": 8}},
      {"ph": "i", "cat": "marker", "name": "ignored", "pid": 1, "tid": 1, "ts": 500}
    ]}"#;

    #[test]
    fn spans_ops_kernels_and_runtime_calls_are_accounted() {
        let s = TraceSummary::from_json(TRACE).unwrap();
        assert_eq!(s.events, 11);
        assert!((s.wall_ms - 0.1).abs() < 1e-9, "{}", s.wall_ms);
        // Kernel 30..70 and memcpy 60..80 overlap (50 µs busy), then the backward's 5 µs.
        assert!((s.gpu_busy_ms - 0.055).abs() < 1e-9, "{}", s.gpu_busy_ms);
        assert_eq!(s.spans.len(), 1);
        assert_eq!(s.spans[0].name, "engine/prefill");
        assert!((s.spans[0].ms - 0.1).abs() < 1e-9);
        assert!(
            (s.spans[0].other_ms - 0.045).abs() < 1e-9,
            "GPU time launched inside the span, the other thread's included: {}",
            s.spans[0].other_ms
        );
        assert_eq!(s.spans[0].top_ops, 3, "linear, item, and the backward op");
        assert!(
            (s.spans[0].outside_ms - 0.025).abs() < 1e-9,
            "100 µs less its own thread's two top-level ops' 50 + 25: {}",
            s.spans[0].outside_ms
        );
        let op = |n: &str| s.host_ops.iter().find(|r| r.name == n).unwrap().clone();
        assert!(
            (op("aten::linear").ms - 0.02).abs() < 1e-9,
            "self = 50 - 30"
        );
        assert!((op("aten::linear").other_ms - 0.05).abs() < 1e-9);
        assert!((op("aten::mm").ms - 0.03).abs() < 1e-9);
        assert_eq!(s.host_ops[0].name, "aten::mm", "longest self time first");
        assert_eq!(s.kernels[0].name, "gemm");
        assert_eq!(s.runtime[0].name, "cudaStreamSynchronize");
        let md = s.to_markdown("round 2", 10);
        assert!(
            md.contains("GPU busy 0.1 ms (55.0% of the wall time)"),
            "{md}"
        );
        assert!(
            md.contains("| `engine/prefill` | 1 | 0.10 | 0.100 | 100.0% | 0.03 | 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| `cudaStreamSynchronize` | 1 | 0.02 | 0.020 | 20.0% |"),
            "{md}"
        );
        let (name, inside) = &s.inside[0];
        assert_eq!(name, "engine/prefill");
        assert_eq!(
            inside.kernels[0].name, "gemm",
            "launched from inside the span"
        );
        assert_eq!(
            inside.kernels.len(),
            2,
            "the backward's kernel too; the memcpy has no launch in the trace"
        );
        assert_eq!(inside.runtime[0].name, "cudaStreamSynchronize");
        assert_eq!(inside.host_ops.len(), 4);
        assert!(md.contains("### `engine/prefill`"), "{md}");
        let cut = s.to_markdown("round 2", 1);
        assert!(cut.contains("| (2 more) | 2 | "), "{cut}");
    }

    #[test]
    fn a_file_that_is_not_a_trace_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        std::fs::write(&p, "{\"nope\": 1}").unwrap();
        let e = TraceSummary::from_file(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("t.json: not a Chrome trace"),
            "{e:#}"
        );
    }
}
