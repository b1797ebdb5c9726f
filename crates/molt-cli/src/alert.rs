//! `molt alert list|ack|resolve|reopen`: alerts devices raised, over the
//! server's REST API.

use reqwest::Method;

use crate::device::Doc;
use crate::fleet_client::Conn;
use crate::output::Output;

/// Alerts from devices' policies: open until acknowledged or resolved.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  molt alert list --state open\n  molt alert ack 42\n  molt alert resolve 42")]
pub(crate) struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Alerts, newest first (at most 1000).
    List {
        /// Only alerts in this state: open, acknowledged or resolved.
        #[arg(long)]
        state: Option<String>,
        /// Only alerts from this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Acknowledge an alert: someone is on it.
    Ack { id: i64 },
    /// Resolve an alert.
    Resolve { id: i64 },
    /// Open an alert again.
    Reopen { id: i64 },
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let set = |id: i64, state: &'static str| {
        let c = &c;
        async move {
            c.call(
                Method::PUT,
                &format!("/api/v1/alerts/{id}/state"),
                Some(serde_json::json!({ "state": state })),
                &[],
            )
            .await
        }
    };
    let value = match args.command {
        Sub::List { state, device } => {
            let mut q = Vec::new();
            if let Some(s) = state {
                q.push(("state", s));
            }
            if let Some(d) = device {
                q.push(("device", d));
            }
            c.call(Method::GET, "/api/v1/alerts", None, &q).await?
        }
        Sub::Ack { id } => set(id, "acknowledged").await?,
        Sub::Resolve { id } => set(id, "resolved").await?,
        Sub::Reopen { id } => set(id, "open").await?,
    };
    output.report(&Doc(value))
}
