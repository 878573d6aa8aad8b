//! `warden-sim`: serve the local simulators until interrupted.
//!
//! Used by the README demo (scripts/demo.sh) and handy when writing a plugin.

use clap::Parser;

#[derive(Parser)]
#[command(name = "warden-sim", about = "Local simulators of the APIs warden's plugins speak")]
struct Args {
    /// Test origin (echo, JSON, redirects).
    #[arg(long, default_value = "127.0.0.1:8700")]
    origin: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let origin = warden_sim::serve_on(&args.origin, warden_sim::origin::router(Default::default())).await?;
    println!("origin      http://{}", origin.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
