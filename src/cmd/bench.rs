//! `spar bench <what>`: each benchmark lives in its own module `bench_<what>.rs`.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {}
}
