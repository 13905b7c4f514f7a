//! Property test over the readers of user files: a good recipe, case file and sample file, each mutated at
//! random (bytes flipped, inserted, deleted, cut short, lines duplicated) a few hundred times with a fixed seed,
//! are read without a panic, and every error names the file. Complements the fixed corpus (`bad_inputs.rs`).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::recipe::Recipe;
use std::path::Path;

const ROUNDS: usize = 300;

/// A reader under test: the error's text, or None when the input read.
type Reader = fn(&Path) -> Option<String>;

fn mutate(rng: &mut ChaCha8Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            b.push(b'{');
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b.insert(
                at,
                *b"{}[]\":,0-9en\n\\"
                    .get(rng.random_range(0..16))
                    .unwrap_or(&b'x'),
            ),
            2 => {
                b.remove(at);
            }
            3 => b.truncate(at),
            4 => b[at] = rng.random(),
            _ => {
                let copy = b.clone();
                b.extend_from_slice(&copy[at..]);
            }
        }
    }
    b
}

/// Writes `bytes` to `dir/name`, reads it with `read`, and checks: no panic; an error names the file.
fn check(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    read: fn(&Path) -> Option<String>,
) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    match std::panic::catch_unwind(|| read(&path)) {
        Err(_) => Err(format!(
            "{name}: panicked on {:?}",
            String::from_utf8_lossy(bytes)
        )),
        Ok(Some(e)) if !e.contains(name) => {
            Err(format!("{name}: the error does not name the file: {e}"))
        }
        Ok(_) => Ok(()),
    }
}

#[test]
fn mutated_recipes_cases_and_samples_never_panic_and_errors_name_the_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let recipe = std::fs::read(root.join("recipes/tiny-cpu.toml")).unwrap();
    let cases = std::fs::read_to_string(root.join("data/cases/cases.jsonl")).unwrap();
    let two_cases: String = cases.lines().take(2).map(|l| format!("{l}\n")).collect();
    let sample = std::fs::read(root.join("tests/bad_inputs/samples/not-json.jsonl")).unwrap();
    let good_sample: Vec<u8> = sample.split(|&c| c == b'\n').next().unwrap().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let mut failures = Vec::new();
    let mut errors = 0;
    for round in 0..ROUNDS {
        let inputs: [(&str, Vec<u8>, Reader); 3] = [
            ("recipe.toml", mutate(&mut rng, &recipe), |p| {
                Recipe::load(p, &[]).err().map(|e| e.to_string())
            }),
            ("cases.jsonl", mutate(&mut rng, two_cases.as_bytes()), |p| {
                spar_data::cases::read_cases(p).err().map(|e| e.to_string())
            }),
            ("samples.jsonl", mutate(&mut rng, &good_sample), |p| {
                spar_data::wire::read_samples(p)
                    .err()
                    .map(|e| e.to_string())
            }),
        ];
        for (name, bytes, read) in inputs {
            match check(dir.path(), name, &bytes, read) {
                Ok(()) => {}
                Err(m) => failures.push(format!("round {round}: {m}")),
            }
            errors += usize::from(read(&dir.path().join(name)).is_some());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Most mutations break the input: the readers did read and refuse them.
    assert!(
        errors > ROUNDS,
        "only {errors} of {} mutated inputs refused",
        3 * ROUNDS
    );
}
