//! `warden-sim`: serve the local simulators until interrupted.
//!
//! Used by the README demo (scripts/demo.sh) and handy when writing a plugin.

use clap::Parser;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "warden-sim", about = "Local simulators of the APIs warden's plugins speak")]
struct Args {
    /// Test origin (echo, JSON, redirects).
    #[arg(long, default_value = "127.0.0.1:8700")]
    origin: String,
    /// SentinelOne console (Deep Visibility).
    #[arg(long, default_value = "127.0.0.1:8701")]
    s1: String,
    /// API token the SentinelOne simulator accepts.
    #[arg(long, env = "S1_API_TOKEN", default_value = "s1-demo-token")]
    s1_token: String,
    /// Jira site (REST v2/v3 and Service Management).
    #[arg(long, default_value = "127.0.0.1:8702")]
    jira: String,
    /// API token the Jira simulator accepts (with the email below).
    #[arg(long, env = "JIRA_API_TOKEN", default_value = "jira-demo-token")]
    jira_token: String,
    #[arg(long, default_value = "warden-bot@corp.example")]
    jira_email: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let origin = warden_sim::serve_on(&args.origin, warden_sim::origin::router(Default::default())).await?;
    println!("origin      http://{}", origin.addr);

    let s1 = warden_sim::sentinelone::Sim::new(warden_sim::sentinelone::Config {
        token: args.s1_token,
        ..Default::default()
    });
    let s1_srv = warden_sim::serve_on(&args.s1, warden_sim::sentinelone::router(s1)).await?;
    println!("sentinelone http://{}", s1_srv.addr);

    let jira = warden_sim::jira::Sim::new(warden_sim::jira::Config {
        token: args.jira_token,
        email: args.jira_email,
        site: format!("http://{}", args.jira),
        ..Default::default()
    });
    let jira_srv = warden_sim::serve_on(&args.jira, warden_sim::jira::router(Arc::clone(&jira))).await?;
    println!("jira        http://{}", jira_srv.addr);

    tokio::signal::ctrl_c().await?;
    Ok(())
}
