//! `molt`: keys, release sets, publishing and verification for molt fleets.
//!
//! This file is only the dispatcher: each command group is one module with
//! an `Args` type (clap) and `run(args, &Output)`. Adding a group is one
//! `mod` line and one line in the `commands!` list below.

use std::process::ExitCode;

use clap::Parser;

use crate::output::Output;

mod alert;
mod demo;
mod device;
mod fleet_client;
mod fleet_sim;
mod group;
mod keys;
mod lifetime;
mod output;
mod policy;
mod preflight;
mod release;
mod repo;
mod server;
mod telemetry;
mod tuf_client;
mod verify;

const AFTER_HELP: &str = "\
New here? See all of it on one simulated device, in about ten seconds:
  molt demo

Release for real devices:
  molt keys init ./keys
  molt keys root ./keys --output root.json
  molt release create --repo ./repo --keys ./keys --version 1 --security-counter 1 \\
      --min-agent-version 1.0.0 --agent rpi4=./agent.img@1.0.0 \\
      --policy threshold=./threshold.wasm@0.1.0:./threshold.json
  molt release sign --repo ./repo --keys ./keys 1
  molt repo publish --repo ./repo --keys ./keys 1
  molt verify --root root.json --hardware-class rpi4 ./repo/public

Run a fleet server and enroll a device:
  molt server init ./fleet
  molt server run --config ./fleet/molt-server.toml
  export MOLT_SERVER=https://localhost:8443 MOLT_CA=./fleet/device-ca.pem
  export MOLT_TOKEN=$(cat ./fleet/admin.token)
  molt device enroll --hardware-class rpi4 --uses 10

Every command takes --json for one machine-readable document on stdout.
Exit codes: 0 success, 1 failure, 2 usage error.";

/// molt updates fleets of IoT devices without bricking them: A/B slots that
/// survive power cuts, WebAssembly policies swapped live, TUF-signed
/// releases.
#[derive(Debug, Parser)]
#[command(name = "molt", version, after_help = AFTER_HELP)]
struct Cli {
    /// Print one JSON document on stdout instead of human text (errors
    /// too), and no progress bars.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Declares the command groups: the clap enum and its dispatch, from one
/// list, so the two can never disagree.
macro_rules! commands {
    ($($variant:ident($module:ident)),* $(,)?) => {
        #[derive(Debug, clap::Subcommand)]
        enum Command {
            $($variant($module::Args),)*
        }

        async fn dispatch(command: Command, output: &Output) -> anyhow::Result<()> {
            match command {
                $(Command::$variant(args) => $module::run(args, output).await,)*
            }
        }
    };
}

commands! {
    Demo(demo),
    Server(server),
    Device(device),
    Group(group),
    Telemetry(telemetry),
    Alert(alert),
    FleetSim(fleet_sim),
    Keys(keys),
    Policy(policy),
    Release(release),
    Repo(repo),
    Verify(verify),
    TufClient(tuf_client),
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = Cli::parse();
    let output = Output::new(cli.json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(dispatch(cli.command, &output)),
        Err(error) => Err(anyhow::Error::new(error).context("could not start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::from(output::EXIT_OK),
        Err(error) => ExitCode::from(output.error(&error)),
    }
}
