//! `molt-agent`: the device daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use molt_agent::daemon::{self, AgentConfig};
use molt_agent::identity::{self, EnrollOptions, Identity};
use molt_agent::link;
use molt_agent::outbox::{Journal, Outbox};
use molt_agent::report;

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
    /// Enroll this device with a fleet server: make its key and CSR, present
    /// the enrollment token, and write the identity into the state directory.
    ///
    /// Example: molt-agent enroll --server https://fleet.example:8443 --token T
    ///   --device-id gw-0001 --state-dir /var/lib/molt-agent --ca device-ca.pem
    Enroll {
        /// The server, https://HOST:PORT.
        #[arg(long)]
        server: String,
        /// The enrollment token (`molt device enroll` makes one).
        #[arg(long)]
        token: String,
        /// The device id to enroll as (lowercase letters, digits, '-', '_', '.').
        #[arg(long)]
        device_id: String,
        /// The agent's state directory (`state_dir` in its configuration).
        #[arg(long)]
        state_dir: PathBuf,
        /// The PEM CA to trust for the server's HTTPS certificate (the
        /// server's device-ca.pem); without it the system's roots are used.
        #[arg(long)]
        ca: Option<PathBuf>,
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
            if let Some(link) = &summary.link {
                eprintln!(
                    "molt-agent: link: {} published, acked through {}, {} reconnects, {} acknowledgement timeouts, {} resent, {}",
                    link.published,
                    link.acked_through,
                    link.reconnects,
                    link.ack_timeouts,
                    link.resends,
                    match summary.drained {
                        Some(true) => "everything acknowledged by the server",
                        _ => "not everything acknowledged yet (server.drain_timeout_ms passed); the outbox keeps the rest",
                    }
                );
            }
            Ok(())
        }),
        Command::Status { config } => AgentConfig::load(&config).and_then(|config| status(&config)),
        Command::Enroll {
            server,
            token,
            device_id,
            state_dir,
            ca,
        } => {
            let options = EnrollOptions {
                server,
                token,
                device_id,
                state_dir,
                ca,
            };
            match identity::enroll(&options) {
                Ok(identity) => {
                    println!(
                        "enrolled as {} with {}; identity in {}",
                        identity.record.device_id,
                        identity.record.server,
                        options.state_dir.join(identity::IDENTITY_DIR).display()
                    );
                    println!("broker: {}", identity.record.broker);
                    if let Some(repository) = &identity.record.repository {
                        println!("repository: {repository}");
                    }
                    println!("add a [server] section to the agent's configuration to connect");
                    return ExitCode::SUCCESS;
                }
                Err(error) => {
                    eprintln!("molt-agent: enroll: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
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
    match report::read_counters(dir) {
        Ok(Some(counters)) => println!(
            "counters: {} agent starts, {} messages dropped by the outbox's overflow policy",
            counters.starts, counters.outbox_dropped
        ),
        Ok(None) => println!("counters: none yet (the agent has not run)"),
        Err(error) => println!("counters: {error}"),
    }
    match config.metrics.listen {
        Some(listen) => println!("metrics: http://{listen}/metrics"),
        None => println!("metrics: off ([metrics] listen is not set)"),
    }
    if let Some(server) = &config.server {
        let identity_dir = server
            .identity_dir
            .clone()
            .unwrap_or_else(|| dir.join(identity::IDENTITY_DIR));
        match Identity::load(&identity_dir) {
            Ok(identity) => {
                println!(
                    "identity: device {} enrolled with {}, broker {}{}",
                    identity.record.device_id,
                    identity.record.server,
                    server.broker.as_deref().unwrap_or(&identity.record.broker),
                    if identity.record.tuf_root.is_some() {
                        ", TUF root pinned"
                    } else {
                        ""
                    }
                );
                // What a restart resends from: the persisted acknowledgement,
                // never beyond what the outbox holds.
                let newest = outbox.next_seq().saturating_sub(1);
                match link::read_acked(dir, &identity.record.device_id) {
                    Some(acked) => println!(
                        "acknowledged: the server stored through {} ({}); {} messages left to send",
                        acked.min(newest),
                        link::ACKED_FILE,
                        newest.saturating_sub(acked)
                    ),
                    None => println!("acknowledged: nothing kept; the link sends everything the outbox holds"),
                }
            }
            Err(error) => println!("identity: {error}"),
        }
        println!(
            "reports: health every {} ms, hardware class {}, at most {} events a minute",
            config.health.interval_ms, server.hardware_class, config.health.events_per_minute_max
        );
        // The running agent's own report, read up to 64 KiB.
        let report = std::fs::File::open(dir.join(link::LINK_STATUS_FILE))
            .ok()
            .and_then(|file| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 << 10), &mut bytes).ok()?;
                serde_json::from_slice::<link::LinkSummary>(&bytes).ok()
            });
        match report {
            Some(link) => println!(
                "link (as of {} ms since the epoch): {}, {} published, acked through {}, {} connects, {} reconnects, \
                 {} acknowledgement timeouts, {} resent, offline {} ms{}",
                link.at_ms,
                if link.connected { "connected" } else { "not connected" },
                link.published,
                link.acked_through,
                link.connects,
                link.reconnects,
                link.ack_timeouts,
                link.resends,
                link.offline_ms,
                link.last_error
                    .map(|error| format!(", last error: {error}"))
                    .unwrap_or_default()
            ),
            None => println!("link: no report yet (the agent has not run with [server])"),
        }
        match link::read_desired(dir, server.desired_bytes_max) {
            Ok(Some(desired)) => println!(
                "desired: generation {}, release set {}{}",
                desired.generation,
                desired.release,
                desired
                    .rollout
                    .map(|rollout| format!(", rollout {rollout}"))
                    .unwrap_or_default()
            ),
            Ok(None) => println!("desired: none received"),
            Err(error) => println!("desired: {error}"),
        }
    } else {
        println!("link: none ([server] is not configured; the agent runs offline)");
    }
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
