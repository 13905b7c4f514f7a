//! The crate map of `docs/architecture.md` (and `/work/shared/design.md`), enforced: every workspace crate's
//! `[dependencies]` (and build-dependencies; dev-dependencies are free) on other workspace crates must follow
//! the map, and the crates whose tests must build in seconds never link libtorch.
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Which workspace crates each workspace crate may depend on. `None`: anything (the binary and its builder).
const MAP: &[(&str, Option<&[&str]>)] = &[
    ("spar-core", Some(&[])),
    // Chart text from a compiled-in font, for every crate that draws charts.
    ("spar-plot-text", Some(&[])),
    ("spar-clients", Some(&["spar-core"])),
    ("spar-data", Some(&["spar-core"])),
    ("spar-rewards", Some(&["spar-core", "spar-data"])),
    ("spar-kernels", Some(&[])),
    ("spar-model", Some(&["spar-core", "spar-kernels"])),
    (
        "spar-rollout",
        Some(&["spar-core", "spar-data", "spar-model", "spar-rewards"]),
    ),
    ("spar-dist", Some(&["spar-core", "spar-kernels"])),
    (
        "spar-trainer",
        Some(&[
            "spar-core",
            "spar-model",
            "spar-rollout",
            "spar-rewards",
            "spar-dist",
            "spar-plot-text",
        ]),
    ),
    (
        "spar-eval",
        Some(&[
            "spar-core",
            "spar-data",
            "spar-rewards",
            "spar-rollout",
            "spar-plot-text",
        ]),
    ),
    // Test support (the fake OpenAI server): a dev-dependency of the others, an optional one of the binary.
    ("spar-testkit", Some(&["spar-core", "spar-clients"])),
    // `spar ablate`: specs, child `spar train` runs, statistics and plots over their result files.
    ("spar-ablate", Some(&["spar-core", "spar-plot-text"])),
    // `spar review`: a run folder's consultations on a local page; claim overrides into the claim cache.
    (
        "spar-review",
        Some(&["spar-core", "spar-data", "spar-rewards"]),
    ),
    ("spar-app", None),
    ("spar", None),
];

/// Edges of the map being removed: empty now that rewards builds no HTTP client, the trainer reads no data file and
/// eval loads no model. Kept (empty) so that an edge under removal can be named here while it goes.
const PENDING: &[(&str, &str)] = &[];

/// Crates that must never link libtorch (their tests build in seconds).
const NO_TORCH: &[&str] = &[
    "spar-core",
    "spar-clients",
    "spar-data",
    "spar-rewards",
    "spar-ablate",
    "spar-plot-text",
    "spar-review",
];

/// Every workspace crate and the names of its non-dev dependencies.
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut crates = BTreeMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let deps = pkg["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .map(|d| d["name"].as_str().expect("dependency name").to_string())
            .collect();
        crates.insert(pkg["name"].as_str().expect("name").to_string(), deps);
    }
    crates
}

#[test]
fn workspace_crates_follow_the_crate_map() {
    let crates = workspace_dependencies();
    let map: BTreeMap<&str, Option<&[&str]>> = MAP.iter().copied().collect();
    let mut problems = Vec::new();
    let mut pending_seen = BTreeSet::new();
    for (name, deps) in &crates {
        let Some(allowed) = map.get(name.as_str()) else {
            problems.push(format!(
                "{name} is not in the crate map: add it to tests/crate_map.rs and docs/architecture.md"
            ));
            continue;
        };
        for dep in deps.iter().filter(|d| crates.contains_key(*d)) {
            if allowed.is_some_and(|ok| !ok.contains(&dep.as_str())) {
                if PENDING.contains(&(name.as_str(), dep.as_str())) {
                    pending_seen.insert((name.as_str(), dep.as_str()));
                } else {
                    problems.push(format!(
                        "{name} depends on {dep}, which the crate map forbids"
                    ));
                }
            }
        }
        if NO_TORCH.contains(&name.as_str()) && deps.contains("tch") {
            problems.push(format!(
                "{name} depends on tch: it must never link libtorch"
            ));
        }
    }
    for edge in PENDING {
        if !pending_seen.contains(edge) {
            problems.push(format!(
                "{} no longer depends on {}: take the edge off PENDING in tests/crate_map.rs",
                edge.0, edge.1
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_map_names_only_known_rules() {
    // A crate the map allows must itself be in the map (a typo there would allow nothing).
    let names: BTreeSet<&str> = MAP.iter().map(|(n, _)| *n).collect();
    for (name, allowed) in MAP {
        for dep in allowed.unwrap_or(&[]) {
            assert!(names.contains(dep), "{name} may depend on unknown {dep}");
        }
    }
    for (a, b) in PENDING {
        assert!(names.contains(a) && names.contains(b), "{a} -> {b}");
    }
}
