//! Runs the context log benchmark once and prints its report as JSON:
//! `cargo run -p hiber-context --release --example bench [DIR]`
//! (DIR defaults to a temporary directory under the current one).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir_in(".")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report =
        runtime.block_on(hiber_context::bench::run(dir.path(), &hiber_context::bench::BenchConfig::default()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
