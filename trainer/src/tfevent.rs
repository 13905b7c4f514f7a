//! TensorBoard event files written directly: TFRecord framing (length, masked CRC-32C, payload, masked
//! CRC-32C) around hand-encoded `Event` protobufs holding scalar summaries. Enough for TensorBoard's scalar
//! dashboard, with no protobuf or TensorFlow dependency.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli), reflected, as TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u32, out: &mut Vec<u8>) {
    varint(((field << 3) | wire) as u64, out);
}

fn bytes_field(field: u32, b: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut e);
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

/// `Summary { value = 1: Value { tag = 1, simple_value = 2 (float) } }`.
fn scalar_summary(scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, v) in scalars {
        let mut val = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut val);
        key(2, 5, &mut val);
        val.extend_from_slice(&(*v as f32).to_le_bytes());
        bytes_field(1, &val, &mut s);
    }
    s
}

/// The name every event file starts with (TensorBoard reads every such file of a folder).
const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// The event files of `dir` (none when it does not exist).
fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in rd {
        let path = e?.path();
        if path.is_file()
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_PREFIX))
        {
            out.push(path);
        }
    }
    // In the order they were written: names start with the creation time in seconds.
    out.sort();
    Ok(out)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    pub path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Creates a new event file in `dir` (TensorBoard reads every event file of a folder).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Never over an existing file: a writer opened again in the same second by the same process (a resume in
        // one process) would otherwise truncate the events kept so far. A suffix makes the name new.
        let base = format!(
            "{EVENTS_PREFIX}{}.spar.{}",
            now() as u64,
            std::process::id()
        );
        let mut n = 0;
        let (f, path) = loop {
            let path = dir.join(match n {
                0 => base.clone(),
                n => format!("{base}.{n}"),
            });
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        };
        let mut w = EventWriter {
            file: std::io::BufWriter::new(f),
            path,
        };
        let first = event(now(), 0, |e| bytes_field(3, b"brain.Event:2", e));
        w.record(&first)?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        Ok(write_record(&mut self.file, data)?)
    }

    pub fn scalars(&mut self, step: i64, scalars: &[(&str, f64)]) -> Result<()> {
        let summary = scalar_summary(scalars);
        let ev = event(now(), step, |e| bytes_field(5, &summary, e));
        self.record(&ev)?;
        self.file.flush()?;
        Ok(())
    }
}

/// The records of an event file (each record's event bytes), up to the first damaged one: a run killed
/// mid-write leaves a partial record at the end, which is dropped.
fn read_records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let (start, end) = (at + 12, (at + 12).saturating_add(len));
        if masked_crc(len_bytes) != len_crc || end.saturating_add(4) > bytes.len() {
            break;
        }
        let data = &bytes[start..end];
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if masked_crc(data) != crc {
            break;
        }
        out.push(data);
        at = end + 4;
    }
    out
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The `step` of an encoded `Event` (0 when absent, as protobuf defaults it).
fn event_step(e: &[u8]) -> Option<i64> {
    let mut at = 0;
    let mut step = 0i64;
    while at < e.len() {
        let k = read_varint(e, &mut at)?;
        match (k >> 3, k & 7) {
            (2, 0) => step = read_varint(e, &mut at)? as i64,
            (_, 0) => {
                read_varint(e, &mut at)?;
            }
            (_, 1) => at += 8,
            (_, 2) => at += read_varint(e, &mut at)? as usize,
            (_, 5) => at += 4,
            _ => return None,
        }
    }
    (at == e.len()).then_some(step)
}

/// The steps of the events in the event file `path`, in order (the file-version header counts as step 0).
pub fn read_steps(path: &Path) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(read_records(&bytes)
        .into_iter()
        .filter_map(event_step)
        .collect())
}

/// Cuts every event file in `dir` back to the events of steps <= `step` (a resumed run, as `metrics.jsonl` is
/// cut back), rewriting a file atomically only when something goes; damaged tails are dropped too.
pub fn cut_back(dir: &Path, cut: crate::metrics::CutBack) -> Result<()> {
    // The logs of the resume step are counted across the files in order (a resumed run's file comes after the
    // run's first one); at step 0 the files' own version records share the step, so every record is kept there.
    let cut = match cut.step {
        0 => crate::metrics::CutBack {
            at_step: None,
            ..cut
        },
        _ => cut,
    };
    let mut seen = 0;
    for path in event_files(dir)? {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let records = read_records(&bytes);
        let kept: Vec<&[u8]> = records
            .iter()
            .copied()
            .filter(|r| event_step(r).is_some_and(|s| s >= 0 && cut.keeps(s as usize, &mut seen)))
            .collect();
        // Each record is framed by 16 bytes (length 8, its CRC 4, the data's CRC 4).
        let whole: usize = records.iter().map(|r| r.len() + 16).sum();
        if kept.len() == records.len() && whole == bytes.len() {
            continue;
        }
        let mut out = Vec::with_capacity(bytes.len());
        for r in kept {
            write_record(&mut out, r)?;
        }
        spar_core::fsio::write_atomic(&path, &out)?;
    }
    Ok(())
}

/// Removes the event files of `dir` (a fresh run into a used folder starts its curves afresh).
pub fn remove_events(dir: &Path) -> Result<()> {
    for path in event_files(dir)? {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_back_keeps_the_steps_up_to_the_resume_point_and_drops_a_damaged_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = EventWriter::create(dir.path()).unwrap();
        for step in 1..=5 {
            a.scalars(step, &[("rl/loss", step as f64)]).unwrap();
        }
        let path = a.path.clone();
        drop(a);
        // A record cut short by a kill.
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        let mut b = EventWriter::create(&dir.path().join("x")).unwrap();
        b.scalars(6, &[("rl/loss", 6.0)]).unwrap();
        let extra = std::fs::read(&b.path).unwrap();
        bytes.extend_from_slice(&extra[..extra.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        // The header of the second file came along whole (step 0); its step-6 record is cut short.
        assert_eq!(read_steps(&path).unwrap(), [0, 1, 2, 3, 4, 5, 0]);
        cut_back(
            dir.path(),
            crate::metrics::CutBack {
                step: 3,
                at_step: None,
            },
        )
        .unwrap();
        assert_eq!(read_steps(&path).unwrap(), [0, 1, 2, 3, 0]);
        assert!(std::fs::read(&path).unwrap().len() < whole);
        remove_events(dir.path()).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
