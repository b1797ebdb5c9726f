//! `molt group list|show|create|set|delete`: device groups, over the
//! server's REST API.

use reqwest::Method;

use crate::device::Doc;
use crate::fleet_client::Conn;
use crate::output::{Output, UsageError};

/// Device groups: static (a member list) or dynamic (a query over tags).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  molt group create berlin-pis --query hardware_class=rpi4,site=berlin\n  molt group create pilot --device gw-1 --device gw-2\n  molt group set pilot gw-1 gw-2 gw-3\n  molt group show berlin-pis\n\nA query is KEY=VALUE terms joined by commas, all of which must hold;\nhardware_class and online (true/false) are the device's own fields, any\nother key is a tag (`molt device tag`)."
)]
pub(crate) struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Every group, with its members.
    List,
    /// One group and its members (a dynamic group's, evaluated now).
    Show { name: String },
    /// Create a static group (--device ...) or a dynamic one (--query ...).
    Create {
        name: String,
        /// Dynamic: KEY=VALUE[,KEY=VALUE]...
        #[arg(long, conflicts_with = "devices")]
        query: Option<String>,
        /// Static: a member device id (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
    },
    /// Replace a static group's members.
    Set { name: String, devices: Vec<String> },
    /// Delete a group (its devices stay enrolled).
    Delete { name: String },
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let value = match args.command {
        Sub::List => c.call(Method::GET, "/api/v1/groups", None, &[]).await?,
        Sub::Show { name } => {
            c.call(Method::GET, &format!("/api/v1/groups/{name}"), None, &[])
                .await?
        }
        Sub::Create { name, query, devices } => {
            if query.is_none() && devices.is_empty() {
                return Err(UsageError(format!(
                    "group {name}: give --query KEY=VALUE,... (dynamic) or --device ID ... (static)"
                ))
                .into());
            }
            let body = serde_json::json!({ "name": name, "query": query, "devices": devices });
            c.call(Method::POST, "/api/v1/groups", Some(body), &[]).await?
        }
        Sub::Set { name, devices } => {
            c.call(
                Method::PUT,
                &format!("/api/v1/groups/{name}/devices"),
                Some(serde_json::json!(devices)),
                &[],
            )
            .await?
        }
        Sub::Delete { name } => {
            c.call(Method::DELETE, &format!("/api/v1/groups/{name}"), None, &[])
                .await?
        }
    };
    output.report(&Doc(value))
}
