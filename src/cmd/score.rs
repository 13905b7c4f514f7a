//! `spar score` (being built; see docs/architecture.md for its owner).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`spar score` is not built yet")
}
