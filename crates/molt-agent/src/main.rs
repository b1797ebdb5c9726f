//! `molt-agent`: the device daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use molt_agent::daemon::{self, AgentConfig};
use molt_agent::outbox::{Journal, Outbox};

/// The molt device daemon: reads sensors, runs policies, keeps a durable outbox.
///
/// Every limit is named in the TOML configuration; see docs/agent.md for
/// the file and `packaging/molt-agent.service` for the systemd unit.
#[derive(Parser)]
#[command(name = "molt-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device: sources in, policies, outbox and actuator sinks out.
    ///
    /// Example: molt-agent run --config /etc/molt/agent.toml
    Run {
        /// The configuration file.
        #[arg(long, default_value = "/etc/molt/agent.toml")]
        config: PathBuf,
    },
    /// Print what the state directory holds, without starting anything.
    Status {
        /// The configuration file.
        #[arg(long, default_value = "/etc/molt/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => AgentConfig::load(&config).and_then(|config| {
            let summary = daemon::run(&config)?;
            eprintln!(
                "molt-agent: stopped: {} readings in {} batches, {} inputs refused, {} commands delivered, {} dropped",
                summary.readings, summary.batches, summary.refused_inputs, summary.commands, summary.commands_dropped
            );
            Ok(())
        }),
        Command::Status { config } => AgentConfig::load(&config).and_then(|config| status(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("molt-agent: error: {error}");
            eprintln!("molt-agent: check the file with `molt-agent status --config <file>`");
            ExitCode::FAILURE
        }
    }
}

fn status(config: &AgentConfig) -> Result<(), String> {
    let pipeline = config.pipeline();
    let dir = &config.state_dir;
    let (journal, journal_recovery) = Journal::open(
        &dir.join("journal"),
        pipeline.journal,
        molt_agent::log::SyncPolicy::EveryBatch,
    )
    .map_err(|error| error.to_string())?;
    let (outbox, outbox_recovery) = Outbox::open(
        &dir.join("outbox"),
        pipeline.outbox,
        pipeline.outbox_sync,
        pipeline.overflow,
    )
    .map_err(|error| error.to_string())?;
    println!("state_dir: {}", dir.display());
    println!(
        "journal: next reading sequence {}, {} bytes, {} records",
        journal.next_seq(),
        journal.bytes(),
        journal_recovery.records
    );
    println!(
        "outbox: next uplink sequence {}, {} bytes of bytes_max={}, {} records, newest origin {}",
        outbox.next_seq(),
        outbox.bytes(),
        pipeline.outbox.bytes_max,
        outbox_recovery.records,
        outbox.origin()
    );
    for (name, recovery) in [("journal", &journal_recovery), ("outbox", &outbox_recovery)] {
        if recovery.torn_tail_bytes > 0 {
            println!(
                "{name}: {} bytes of an interrupted append at the end",
                recovery.torn_tail_bytes
            );
        }
        for (path, offset, bytes) in &recovery.corrupt {
            println!(
                "{name}: {} corrupt at byte {offset}: {bytes} bytes not trusted",
                path.display()
            );
        }
    }
    Ok(())
}
