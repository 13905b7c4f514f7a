//! `spar redact FILE|-`: prints the text with PHI replaced by typed placeholders (`[NAME]`, `[DATE]` ...), with
//! the same patterns `[data] redact_on_ingest` applies to imported cases (`spar_core::phi`). For text spar does
//! not import itself: notes to share, a log to attach to a bug report. See docs/privacy.md.
use anyhow::Context;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Text file to redact, or `-` for standard input.
    pub input: PathBuf,
    /// Also print, on standard error, how many identifiers of each kind were replaced.
    #[arg(long)]
    pub stats: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = read_input(&args.input)?;
    let out = spar_core::phi::Redactor::default().redact(&text);
    std::io::stdout()
        .lock()
        .write_all(out.text.as_bytes())
        .context("writing to standard output")?;
    if args.stats {
        let mut counts = std::collections::BTreeMap::new();
        for s in &out.spans {
            *counts.entry(s.kind.placeholder()).or_insert(0usize) += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "redacted {} identifiers{}{}",
            out.spans.len(),
            if parts.is_empty() { "" } else { ": " },
            parts.join(", ")
        );
    }
    Ok(())
}

/// The whole input as UTF-8; a file that is not text is an error naming it (redacting bytes as lossy text would
/// print something other than the file).
fn read_input(input: &std::path::Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let name = if input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        "standard input".to_string()
    } else {
        // A missing file is "not found: PATH" (spar_core::Error::io), any other failure names the file.
        bytes = std::fs::read(input).map_err(|e| spar_core::Error::io(input, e))?;
        input.display().to_string()
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: not UTF-8 text (invalid byte at offset {}); spar redact reads text files",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is read whole and redacted with core's patterns; a missing or binary file is an error naming it.
    #[test]
    fn reads_text_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("note.txt");
        std::fs::write(&f, "Patient: Jane Roe, MRN: A-7782341\n").unwrap();
        let text = read_input(&f).unwrap();
        assert_eq!(
            spar_core::phi::redact(&text),
            "Patient: [NAME], MRN: [MRN]\n"
        );
        let bin = d.path().join("x.bin");
        std::fs::write(&bin, [0x66, 0xff, 0xfe]).unwrap();
        let e = read_input(&bin).unwrap_err().to_string();
        assert!(e.contains("x.bin") && e.contains("UTF-8"), "{e}");
        let e = read_input(&d.path().join("nope.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.txt"), "{e}");
    }
}
