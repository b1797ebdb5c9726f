//! `molt telemetry`: stored points of one device and metric, downsampled.

use reqwest::Method;

use crate::device::Doc;
use crate::fleet_client::Conn;
use crate::output::Output;

/// Query stored telemetry (avg/min/max/count per time bucket).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  molt telemetry gw-17 temp --step-ms 60000")]
pub(crate) struct Args {
    #[command(flatten)]
    conn: Conn,
    /// Device id.
    device: String,
    /// Metric name.
    metric: String,
    /// Start (ms since the epoch, inclusive).
    #[arg(long)]
    from_ms: Option<i64>,
    /// End (ms since the epoch, exclusive).
    #[arg(long)]
    to_ms: Option<i64>,
    /// Bucket width in ms (1 = raw points).
    #[arg(long, default_value_t = 60_000)]
    step_ms: i64,
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let mut q = vec![
        ("device", args.device),
        ("metric", args.metric),
        ("step_ms", args.step_ms.to_string()),
    ];
    if let Some(f) = args.from_ms {
        q.push(("from_ms", f.to_string()));
    }
    if let Some(t) = args.to_ms {
        q.push(("to_ms", t.to_string()));
    }
    let value = c.call(Method::GET, "/api/v1/telemetry", None, &q).await?;
    output.report(&Doc(value))
}
