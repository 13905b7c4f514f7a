//! The `spar` command line: argument parsing and wiring only.
fn main() {
    println!("spar {}", env!("CARGO_PKG_VERSION"));
}
