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
    /// Slack Web API (chat.postMessage).
    #[arg(long, default_value = "127.0.0.1:8703")]
    slack: String,
    #[arg(long, env = "SLACK_BOT_TOKEN", default_value = "xoxb-demo-token")]
    slack_token: String,
    /// VirusTotal API v3.
    #[arg(long, default_value = "127.0.0.1:8704")]
    virustotal: String,
    #[arg(long, env = "VT_API_KEY", default_value = "vt-demo-key")]
    vt_key: String,
    /// ServiceNow instance (Table API).
    #[arg(long, default_value = "127.0.0.1:8705")]
    servicenow: String,
    #[arg(long, default_value = "warden.integration")]
    servicenow_user: String,
    #[arg(long, env = "SERVICENOW_PASSWORD", default_value = "snow-demo-password")]
    servicenow_password: String,
    /// CrowdStrike Falcon API (OAuth2 token and device actions).
    #[arg(long, default_value = "127.0.0.1:8706")]
    crowdstrike: String,
    #[arg(long, env = "CS_CLIENT_ID", default_value = "cs-demo-client")]
    cs_client_id: String,
    #[arg(long, env = "CS_CLIENT_SECRET", default_value = "cs-demo-secret")]
    cs_client_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let origin = warden_sim::serve_on(&args.origin, warden_sim::origin::router(Default::default())).await?;
    println!("origin      http://{}", origin.addr);

    let s1 = warden_sim::sentinelone::Sim::new(warden_sim::sentinelone::Config { token: args.s1_token, ..Default::default() });
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

    use warden_sim::{crowdstrike, servicenow, slack, virustotal};
    let slack_sim = slack::Sim::new(slack::Config { token: args.slack_token, ..Default::default() });
    let slack_srv = warden_sim::serve_on(&args.slack, slack::router(slack_sim.clone())).await?;
    *slack_sim.base_url.lock().unwrap() = format!("http://{}", slack_srv.addr);
    println!("slack       http://{}", slack_srv.addr);
    let vt_srv =
        warden_sim::serve_on(&args.virustotal, virustotal::router(virustotal::Sim::new(virustotal::Config { api_key: args.vt_key, ..Default::default() })))
            .await?;
    println!("virustotal  http://{}", vt_srv.addr);
    let snow = servicenow::Config { user: args.servicenow_user, password: args.servicenow_password, ..Default::default() };
    let snow_srv = warden_sim::serve_on(&args.servicenow, servicenow::router(servicenow::Sim::new(snow))).await?;
    println!("servicenow  http://{}", snow_srv.addr);
    let cs = crowdstrike::Config { client_id: args.cs_client_id, client_secret: args.cs_client_secret, ..Default::default() };
    let cs_srv = warden_sim::serve_on(&args.crowdstrike, crowdstrike::router(crowdstrike::Sim::new(cs))).await?;
    println!("crowdstrike http://{}", cs_srv.addr);

    tokio::signal::ctrl_c().await?;
    Ok(())
}
