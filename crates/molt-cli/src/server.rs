//! `molt server init|run`: the fleet server (crate molt-server).

use std::path::PathBuf;

use serde::Serialize;

use crate::output::{Output, Report};

/// Create or run a fleet server.
#[derive(Debug, clap::Args)]
#[command(after_help = "First time:\n  molt server init ./fleet\n  molt server run --config ./fleet/molt-server.toml")]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Write a commented config, the database, the device CA and an admin
    /// API token into DIR.
    Init {
        /// Data directory (created).
        dir: PathBuf,
        /// Extra DNS names or IPs for the server's TLS certificate
        /// (localhost and 127.0.0.1 are always in).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Run the server until Ctrl-C or SIGTERM (then it commits and
    /// acknowledges what it received, and stops).
    Run {
        /// The config file `molt server init` wrote.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Serialize)]
struct Initialized {
    config: PathBuf,
    admin_token_file: PathBuf,
    next: String,
}

impl Report for Initialized {
    fn human(&self) -> String {
        format!(
            "config: {}\nadmin token: {} (keep it secret; `export MOLT_TOKEN=$(cat {})`)\nnext: {}\n",
            self.config.display(),
            self.admin_token_file.display(),
            self.admin_token_file.display(),
            self.next
        )
    }
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    match args.command {
        Sub::Init { dir, names } => {
            let done = molt_server::init(&dir, &names).await?;
            output.report(&Initialized {
                next: format!("molt server run --config {}", done.config_path.display()),
                config: done.config_path,
                admin_token_file: dir.join(molt_server::ADMIN_TOKEN_FILE),
            })
        }
        Sub::Run { config } => {
            let config = molt_server::Config::load(&config)?;
            let https = tokio::net::TcpListener::bind(config.listen.https).await.map_err(|e| {
                anyhow::anyhow!(
                    "binding listen.https = {}: {e} (pick another port, or 0 for any free one)",
                    config.listen.https
                )
            })?;
            let running = molt_server::start(config, https).await?;
            // One line a supervisor (or a test) can parse, as `molt-server run` prints.
            let a = running.addrs;
            if output.is_json() {
                println!(
                    "{}",
                    serde_json::json!({ "mqtt": a.mqtt, "https": a.https, "mqtt_local": a.mqtt_local })
                );
            } else {
                println!(
                    "molt-server listening mqtt={} https={} mqtt_local={}",
                    a.mqtt, a.https, a.mqtt_local
                );
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            eprintln!("Ctrl-C or SIGTERM stops it, after committing and acknowledging what it received");
            molt_server::shutdown_signal().await;
            running.stop().await;
            Ok(())
        }
    }
}
