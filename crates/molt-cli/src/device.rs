//! `molt device list|show|enroll|revoke|tag|desire`: the registry, over the
//! server's REST API.

use reqwest::Method;
use serde::Serialize;

use crate::fleet_client::Conn;
use crate::output::{Output, Report};

/// Devices in the fleet server's registry.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  export MOLT_SERVER=https://localhost:8443 MOLT_TOKEN=$(cat fleet/admin.token) MOLT_CA=fleet/device-ca.pem\n  molt device enroll --ttl 3600 --uses 10 --hardware-class rpi4 --tag site=berlin\n  molt device list\n  molt device revoke gw-17"
)]
pub(crate) struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Every enrolled device.
    List,
    /// One device: state, reported state, health, desired release.
    Show { id: String },
    /// Issue an enrollment token devices present once with their CSR.
    Enroll {
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Hardware class given to devices enrolled with it.
        #[arg(long)]
        hardware_class: Option<String>,
        /// Tags given to devices enrolled with it (KEY=VALUE, repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Disconnect a device at once and refuse it from now on.
    Revoke { id: String },
    /// Replace a device's tags (KEY=VALUE, repeatable).
    Tag { id: String, tags: Vec<String> },
    /// Director: set the release set a device should run.
    Desire {
        id: String,
        /// Release set version.
        #[arg(long)]
        release: u64,
    },
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Doc(pub(crate) serde_json::Value);

impl Report for Doc {
    fn human(&self) -> String {
        match &self.0 {
            serde_json::Value::Array(items) if items.iter().all(|d| d.get("id").is_some()) => {
                let mut out = format!(
                    "{:<24} {:<8} {:<10} {:>14} {}\n",
                    "ID", "ONLINE", "REVOKED", "STORED-THROUGH", "HARDWARE"
                );
                for d in items {
                    out.push_str(&format!(
                        "{:<24} {:<8} {:<10} {:>14} {}\n",
                        d["id"].as_str().unwrap_or(""),
                        d["online"].as_bool().unwrap_or(false),
                        d["revoked_ms"].is_number(),
                        d["stored_through"],
                        d["hardware_class"].as_str().unwrap_or("")
                    ));
                }
                out
            }
            other => format!("{}\n", serde_json::to_string_pretty(other).unwrap_or_default()),
        }
    }
}

pub(crate) fn parse_tags(tags: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for t in tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| crate::output::UsageError(format!("tag {t:?} is not KEY=VALUE")))?;
        map.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
    }
    Ok(serde_json::Value::Object(map))
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let value = match args.command {
        Sub::List => c.call(Method::GET, "/api/v1/devices", None, &[]).await?,
        Sub::Show { id } => c.call(Method::GET, &format!("/api/v1/devices/{id}"), None, &[]).await?,
        Sub::Enroll {
            ttl,
            uses,
            hardware_class,
            tags,
        } => {
            let body = serde_json::json!({ "ttl_s": ttl, "uses": uses, "hardware_class": hardware_class, "tags": parse_tags(&tags)? });
            c.call(Method::POST, "/api/v1/enrollment-tokens", Some(body), &[])
                .await?
        }
        Sub::Revoke { id } => {
            c.call(Method::POST, &format!("/api/v1/devices/{id}/revoke"), None, &[])
                .await?
        }
        Sub::Tag { id, tags } => {
            c.call(
                Method::PUT,
                &format!("/api/v1/devices/{id}/tags"),
                Some(parse_tags(&tags)?),
                &[],
            )
            .await?
        }
        Sub::Desire { id, release } => {
            c.call(
                Method::PUT,
                &format!("/api/v1/devices/{id}/desired"),
                Some(serde_json::json!({ "release": release })),
                &[],
            )
            .await?
        }
    };
    output.report(&Doc(value))
}
