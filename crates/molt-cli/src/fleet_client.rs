//! The REST client behind `molt device`, `molt telemetry` and friends:
//! `--server URL`, a token from `MOLT_TOKEN` or `--token-file`, the
//! server's CA from `--ca` (the `device-ca.pem` of `molt server init`).

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Connection options shared by every fleet command.
#[derive(Debug, clap::Args)]
pub(crate) struct Conn {
    /// The server's HTTPS address, e.g. `https://fleet.example.com:8443`.
    #[arg(long, env = "MOLT_SERVER")]
    pub(crate) server: String,
    /// API token (better: the MOLT_TOKEN environment variable or --token-file).
    #[arg(long, env = "MOLT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the API token (`admin.token` from `molt server init`).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// CA certificate the server's TLS certificate chains to (PEM); the
    /// `device-ca.pem` in the server's data directory.
    #[arg(long, env = "MOLT_CA")]
    pub(crate) ca: Option<PathBuf>,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Conn {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_owned(),
            (None, None) => bail!(
                "no API token: set MOLT_TOKEN or pass --token-file (the admin token is in the server's admin.token)"
            ),
        };
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading the CA {}", ca.display()))?;
            builder = builder.tls_certs_only([
                reqwest::Certificate::from_pem(&pem).context("the --ca file is not a PEM certificate")?
            ]);
        }
        Ok(Client {
            http: builder.build()?,
            base: self.server.trim_end_matches('/').to_owned(),
            token,
        })
    }
}

impl Client {
    /// Sends a request; a server error becomes its code and message.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        query: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "could not reach {} (is `molt server run` up, and is --ca its device-ca.pem?)",
                self.base
            )
        })?;
        answer(response).await
    }

    /// Uploads raw bytes with `PUT`.
    pub(crate) async fn put_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .with_context(|| format!("could not reach {}", self.base))?;
        answer(response).await
    }

    /// The length of a file the server serves at `path`, or `None` if it serves none.
    pub(crate) async fn served_length(&self, path: &str) -> anyhow::Result<Option<u64>> {
        let response = self
            .http
            .head(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("could not reach {}", self.base))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        Ok(response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok()))
    }
}

/// A response's JSON; a refusal becomes the server's code and message.
async fn answer(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let value: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = value["error"]["code"].as_str().unwrap_or("unknown");
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        bail!("server refused ({status}, {code}): {message}");
    }
    Ok(value)
}
