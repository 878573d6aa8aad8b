//! The `warden` binary: logging, a tokio runtime, and the command line in [`cli`].

use clap::Parser;
use std::process::ExitCode;

mod cli;

// The server allocates and frees per request on every worker thread; glibc's
// malloc took ~14 % of the workers' time under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let (default_level, json) = match &args.command {
        cli::Command::Serve { log_json, .. } => ("info", *log_json),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| default_level.into());
    // `serve` logs a line or two per run: written by a thread of their own so
    // no run waits on stderr, never dropped (a full buffer makes loggers
    // wait), and flushed when `_flush` goes at exit.
    let (writer, _flush) = match &args.command {
        cli::Command::Serve { .. } => {
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stderr());
            (tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer), Some(guard))
        }
        _ => (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr), None),
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warden: error: {}", cli::one_line(&e));
            ExitCode::from(1)
        }
    }
}
