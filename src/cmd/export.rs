//! `spar export --checkpoint C --out DIR`: a checkpoint's policy as an HF folder (safetensors + config.json,
//! plus the run's tokenizer files when there are any) that transformers loads directly.
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint folder (`RUN/checkpoints/step-N`), a run folder (its latest checkpoint) or an HF folder.
    #[arg(long, alias = "in")]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut ckpt = args.checkpoint.clone();
    if !ckpt.exists() {
        anyhow::bail!("--checkpoint: not found: {}", ckpt.display());
    }
    // A run folder: its newest intact checkpoint (a damaged newer one is named and passed over). A checkpoint
    // folder: checked against its checksums, so what is exported is what the run wrote.
    if ckpt.join("checkpoints").is_dir() {
        let (dir, st) = spar_trainer::resume_point::newest_intact(&ckpt.join("checkpoints"))
            .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?
            .with_context(|| format!("{}: no checkpoint in this run", args.checkpoint.display()))?;
        eprintln!(
            "[export] {}: checkpoint {} (phase {}, step {})",
            args.checkpoint.display(),
            dir.display(),
            st.phase,
            st.step
        );
        ckpt = dir;
    } else if ckpt.join("trainer_state.json").exists() {
        spar_trainer::resume_point::check(&ckpt)
            .with_context(|| format!("--checkpoint {}", ckpt.display()))?;
    }
    let model_dir = if ckpt.join("model").join("config.json").exists() {
        ckpt.join("model")
    } else {
        ckpt.clone()
    };
    let spec =
        spar_data::audit::AuditSpec::for_dir("spar export", &args.out).with_model(&model_dir);
    super::audit::run_audited(spec, || export(&args, &ckpt, &model_dir))
}

fn export(args: &Args, ckpt: &std::path::Path, model_dir: &std::path::Path) -> anyhow::Result<()> {
    // Checked as a load would check it, then copied file by file in its own dtype: no whole model in memory
    // (a 235B checkpoint exports on a machine with less memory than its weights).
    spar_model::weights::copy_hf_folder(model_dir, &args.out)
        .with_context(|| format!("exporting {}", model_dir.display()))?;
    // Tokenizer: next to the weights, or the run's trained tokenizer (RUN/tokenizer) for a checkpoint.
    let run_dir = ckpt
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf());
    let candidates = [
        Some(model_dir.to_path_buf()),
        run_dir.map(|r| r.join("tokenizer")),
    ];
    for dir in candidates.into_iter().flatten() {
        if dir.join("tokenizer.json").exists() {
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
            ] {
                if dir.join(f).exists() {
                    std::fs::copy(dir.join(f), args.out.join(f))
                        .with_context(|| format!("copying {f}"))?;
                }
            }
            break;
        }
    }
    eprintln!("exported {} -> {}", ckpt.display(), args.out.display());
    Ok(())
}
