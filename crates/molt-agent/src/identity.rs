//! The device's identity with the fleet server, and `molt-agent enroll`,
//! which gets it.
//!
//! Enrollment makes an ECDSA P-256 key and a CSR whose common name is the
//! device id, and presents them with an enrollment token at the server's
//! `POST /api/v1/enroll` over HTTPS. The answer (a certificate signed by the
//! server's device CA, the CA chain, the broker's address and, when the
//! server hosts releases, the TUF root to pin and the repository's URL) is
//! written into `identity/` in the state directory, all or nothing: the
//! files go into a temporary directory that is synced and then renamed. An
//! existing identity is never overwritten.
//!
//! Nothing is written before the server said yes: a refused token, an
//! unreachable server or an untrusted certificate leave the state directory
//! as they found it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_protocol::DeviceId;
use serde::{Deserialize, Serialize};

/// The directory in the state directory that holds the identity.
pub const IDENTITY_DIR: &str = "identity";
/// The device's private key, PEM (mode 0600).
pub const KEY_FILE: &str = "device.key";
/// The device's certificate, PEM.
pub const CERT_FILE: &str = "device.crt";
/// The CA chain to trust for the broker and the server's HTTPS, PEM.
pub const CA_FILE: &str = "ca.pem";
/// Device id, broker, repository and pinned TUF root, JSON.
pub const IDENTITY_FILE: &str = "identity.json";

/// Largest enrollment answer read, in bytes (`enroll_response_bytes_max`).
pub const ENROLL_RESPONSE_BYTES_MAX: usize = 1 << 20;
/// Longest an enrollment request may take, in milliseconds
/// (`enroll_timeout_ms`).
pub const ENROLL_TIMEOUT_MS: u64 = 30_000;
/// Largest identity file read back, in bytes (`identity_bytes_max`).
pub const IDENTITY_BYTES_MAX: u64 = 1 << 20;

/// `POST /api/v1/enroll`'s body. It matches molt-server's `EnrollRequest`
/// field for field; `tests/fleet.rs` checks the two against each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The device id asked for (the certificate's CN).
    pub device_id: String,
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
}

/// What the server answers an enrollment with. It matches molt-server's
/// `EnrollResponse`; `tests/fleet.rs` checks the two against each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device id (CN).
    pub device_id: String,
    /// The device's certificate, PEM.
    pub certificate_pem: String,
    /// The CA chain to trust for the broker and HTTPS, PEM.
    pub ca_chain_pem: String,
    /// Where to connect (`mqtts://host:port`).
    pub broker: String,
    /// The TUF root to pin (JSON), when the server hosts releases.
    #[serde(default)]
    pub tuf_root: Option<serde_json::Value>,
    /// The TUF repository (`https://HOST:PORT/repo/`).
    #[serde(default)]
    pub repository: Option<String>,
}

/// What `identity/identity.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The device id: MQTT client id and certificate CN.
    pub device_id: String,
    /// The broker, `mqtts://host:port`.
    pub broker: String,
    /// The server enrolled with, `https://host:port`.
    pub server: String,
    /// The TUF repository, when the server hosts releases.
    #[serde(default)]
    pub repository: Option<String>,
    /// The pinned TUF root metadata, when the server hosts releases.
    #[serde(default)]
    pub tuf_root: Option<serde_json::Value>,
    /// When the device enrolled, milliseconds since the Unix epoch.
    pub enrolled_ms: u64,
}

/// A device's identity, read back from the state directory.
#[derive(Clone)]
pub struct Identity {
    /// What `identity.json` holds.
    pub record: IdentityRecord,
    /// The device id, checked.
    pub device: DeviceId,
    /// The private key, PEM.
    pub key_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The CA chain, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Why enrollment or reading the identity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The state directory already holds an identity.
    #[error(
        "{path} already holds the identity of device `{device}`; enrollment never overwrites one. \
         To enroll again, stop the agent and move {path} away (a different device id also needs a fresh state directory, \
         since the outbox's sequence numbers continue)"
    )]
    AlreadyEnrolled {
        /// The identity directory.
        path: PathBuf,
        /// The device it belongs to, as far as it could be read.
        device: String,
    },
    /// No identity in the state directory.
    #[error(
        "no device identity in {path}: run `molt-agent enroll --server https://HOST:PORT --token T --device-id ID --state-dir DIR` first"
    )]
    NotEnrolled {
        /// The identity directory.
        path: PathBuf,
    },
    /// The device id breaks the protocol's rules.
    #[error("device id `{id}`: {source}")]
    DeviceId {
        /// What was given.
        id: String,
        /// Why it was refused.
        source: molt_protocol::TopicError,
    },
    /// The server URL is not `https://host:port`.
    #[error("server URL `{url}`: {why}")]
    ServerUrl {
        /// What was given.
        url: String,
        /// Why it was refused.
        why: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable {
        /// The enrollment URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The server's HTTPS certificate is not trusted.
    #[error(
        "the server's certificate at {url} is not trusted ({detail}); pass the server's CA with --ca FILE \
         (the server's device-ca.pem)"
    )]
    UntrustedCertificate {
        /// The enrollment URL.
        url: String,
        /// What the TLS layer said.
        detail: String,
    },
    /// The server refused the enrollment.
    #[error("the server refused the enrollment (HTTP {status}, {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's stable error code, e.g. `enrollment_token_used_up`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server's answer is not what the protocol says.
    #[error("the server's answer is not usable: {0}")]
    BadResponse(String),
    /// A key or CSR could not be made.
    #[error("making the device key and CSR: {0}")]
    Key(String),
    /// A file could not be read or written.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file of the identity is corrupt or over its limit.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

/// What `molt-agent enroll` is given.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// `https://host:port` of the server.
    pub server: String,
    /// The enrollment token.
    pub token: String,
    /// The device id to ask for.
    pub device_id: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// PEM CA to trust for the server's HTTPS certificate; without it the
    /// system's roots are used.
    pub ca: Option<PathBuf>,
}

/// Reads a file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64, limit_name: &str) -> Result<Vec<u8>, IdentityError> {
    use std::io::Read;
    let file = File::open(path).map_err(io("reading", path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    if bytes.len() as u64 > limit {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            why: format!("over {limit} bytes ({limit_name})"),
        });
    }
    Ok(bytes)
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    String::from_utf8(read_bounded(path, IDENTITY_BYTES_MAX, "identity_bytes_max")?).map_err(|_| {
        IdentityError::Corrupt {
            path: path.to_owned(),
            why: "not UTF-8".into(),
        }
    })
}

impl Identity {
    /// Reads the identity in `dir` (the state directory's `identity/`).
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let record_path = dir.join(IDENTITY_FILE);
        if !record_path.exists() {
            return Err(IdentityError::NotEnrolled { path: dir.to_owned() });
        }
        let record: IdentityRecord =
            serde_json::from_str(&read_text(&record_path)?).map_err(|error| IdentityError::Corrupt {
                path: record_path.clone(),
                why: error.to_string(),
            })?;
        let device = DeviceId::parse(&record.device_id).map_err(|error| IdentityError::Corrupt {
            path: record_path.clone(),
            why: format!("device id: {error}"),
        })?;
        Ok(Identity {
            device,
            key_pem: read_text(&dir.join(KEY_FILE))?,
            cert_pem: read_text(&dir.join(CERT_FILE))?,
            ca_pem: read_text(&dir.join(CA_FILE))?,
            record,
        })
    }
}

/// A broker address, `mqtts://host:port`, split.
pub fn parse_broker(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| format!("broker `{url}` is not mqtts://host:port"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("broker `{url}` has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("broker `{url}`: `{port}` is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("broker `{url}` has no host"));
    }
    Ok((host.to_owned(), port))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Enrolls the device with the server and writes its identity into the
/// state directory; see the module docs. Returns the identity written.
pub fn enroll(options: &EnrollOptions) -> Result<Identity, IdentityError> {
    let identity_dir = options.state_dir.join(IDENTITY_DIR);
    refuse_existing(&identity_dir)?;
    let device = DeviceId::parse(&options.device_id).map_err(|source| IdentityError::DeviceId {
        id: options.device_id.clone(),
        source,
    })?;
    let server = options.server.trim_end_matches('/').to_owned();
    if !server.starts_with("https://") || server.len() <= "https://".len() {
        return Err(IdentityError::ServerUrl {
            url: options.server.clone(),
            why: "expected https://HOST:PORT (enrollment is only done over HTTPS)".into(),
        });
    }
    let ca = match &options.ca {
        Some(path) => Some(read_bounded(path, IDENTITY_BYTES_MAX, "identity_bytes_max")?),
        None => None,
    };

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|error| IdentityError::Key(error.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|error| IdentityError::Key(error.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device.as_str());
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|error| IdentityError::Key(error.to_string()))?;
    let request = EnrollRequest {
        token: options.token.clone(),
        device_id: device.as_str().to_owned(),
        csr_pem,
    };
    let url = format!("{server}/api/v1/enroll");
    let answer = post_enroll(&url, ca.as_deref(), &request)?;

    if answer.device_id != device.as_str() {
        return Err(IdentityError::BadResponse(format!(
            "certificate issued for `{}`, not `{device}`",
            answer.device_id
        )));
    }
    if !answer.certificate_pem.contains("-----BEGIN CERTIFICATE-----")
        || !answer.ca_chain_pem.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(IdentityError::BadResponse(
            "the certificate or the CA chain is not PEM".into(),
        ));
    }
    parse_broker(&answer.broker).map_err(IdentityError::BadResponse)?;
    let record = IdentityRecord {
        device_id: device.as_str().to_owned(),
        broker: answer.broker,
        server,
        repository: answer.repository,
        tuf_root: answer.tuf_root,
        enrolled_ms: now_ms(),
    };
    let identity = Identity {
        record,
        device,
        key_pem: key.serialize_pem(),
        cert_pem: answer.certificate_pem,
        ca_pem: answer.ca_chain_pem,
    };
    write_identity(&options.state_dir, &identity)?;
    Ok(identity)
}

fn refuse_existing(identity_dir: &Path) -> Result<(), IdentityError> {
    if identity_dir.exists() {
        let device = read_text(&identity_dir.join(IDENTITY_FILE))
            .ok()
            .and_then(|text| serde_json::from_str::<IdentityRecord>(&text).ok())
            .map_or_else(|| "?".to_owned(), |record| record.device_id);
        return Err(IdentityError::AlreadyEnrolled {
            path: identity_dir.to_owned(),
            device,
        });
    }
    Ok(())
}

fn post_enroll(url: &str, ca: Option<&[u8]>, request: &EnrollRequest) -> Result<EnrollResponse, IdentityError> {
    crate::link::choose_tls_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| IdentityError::Unreachable {
            url: url.to_owned(),
            detail: format!("starting the I/O runtime: {error}"),
        })?;
    runtime.block_on(async {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(ENROLL_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca {
            let certificates = reqwest::Certificate::from_pem_bundle(ca).map_err(|error| IdentityError::Corrupt {
                path: PathBuf::from("--ca"),
                why: format!("not a PEM CA certificate: {error}"),
            })?;
            if certificates.is_empty() {
                return Err(IdentityError::Corrupt {
                    path: PathBuf::from("--ca"),
                    why: "holds no PEM certificate".into(),
                });
            }
            builder = builder.tls_certs_only(certificates);
        }
        let client = builder.build().map_err(|error| IdentityError::Unreachable {
            url: url.to_owned(),
            detail: format!("building the HTTPS client: {error}"),
        })?;
        let response = client
            .post(url)
            .json(request)
            .send()
            .await
            .map_err(|error| classify(url, &error))?;
        let status = response.status().as_u16();
        let body = read_body(url, response).await?;
        if status != 200 {
            #[derive(Deserialize)]
            struct ErrorBody {
                error: ErrorDetail,
            }
            #[derive(Deserialize)]
            struct ErrorDetail {
                code: String,
                message: String,
            }
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(ErrorBody { error }) => IdentityError::Refused {
                    status,
                    code: error.code,
                    message: error.message,
                },
                Err(_) => IdentityError::Refused {
                    status,
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                },
            });
        }
        serde_json::from_slice::<EnrollResponse>(&body).map_err(|error| IdentityError::BadResponse(error.to_string()))
    })
}

async fn read_body(url: &str, mut response: reqwest::Response) -> Result<Vec<u8>, IdentityError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| IdentityError::Unreachable {
        url: url.to_owned(),
        detail: format!("reading the answer: {}", chain(&error)),
    })? {
        if body.len() + chunk.len() > ENROLL_RESPONSE_BYTES_MAX {
            return Err(IdentityError::BadResponse(format!(
                "the answer is over {ENROLL_RESPONSE_BYTES_MAX} bytes (enroll_response_bytes_max)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its sources, joined.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

fn classify(url: &str, error: &reqwest::Error) -> IdentityError {
    let detail = chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(inner) = source {
        let tls = inner.downcast_ref::<rustls::Error>().or_else(|| {
            inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(_)) = tls {
            return IdentityError::UntrustedCertificate {
                url: url.to_owned(),
                detail,
            };
        }
        source = inner.source();
    }
    if detail.contains("invalid peer certificate") || detail.contains("UnknownIssuer") {
        return IdentityError::UntrustedCertificate {
            url: url.to_owned(),
            detail,
        };
    }
    IdentityError::Unreachable {
        url: url.to_owned(),
        detail,
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8], private: bool) -> Result<(), IdentityError> {
    let path = dir.join(name);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&path).map_err(io("creating", &path))?;
    file.write_all(bytes).map_err(io("writing", &path))?;
    file.sync_all().map_err(io("syncing", &path))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io("syncing", dir))
}

/// Writes `identity` as `state_dir/identity/`, all or nothing.
fn write_identity(state_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
    let target = state_dir.join(IDENTITY_DIR);
    let staging = state_dir.join(format!("{IDENTITY_DIR}.tmp-{}", std::process::id()));
    // A staging directory left by an interrupted enrollment is incomplete.
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io("removing", &staging))?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&staging).map_err(io("creating", &staging))?;
    let result = (|| {
        let record = serde_json::to_vec_pretty(&identity.record)
            .map_err(|error| IdentityError::BadResponse(error.to_string()))?;
        write_file(&staging, KEY_FILE, identity.key_pem.as_bytes(), true)?;
        write_file(&staging, CERT_FILE, identity.cert_pem.as_bytes(), false)?;
        write_file(&staging, CA_FILE, identity.ca_pem.as_bytes(), false)?;
        write_file(&staging, IDENTITY_FILE, &record, false)?;
        sync_dir(&staging)?;
        // Checked again: another enrollment may have finished meanwhile.
        refuse_existing(&target)?;
        fs::rename(&staging, &target).map_err(io("renaming into place", &target))?;
        sync_dir(state_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Writes `bytes` to `path` atomically: a synced temporary file renamed
/// over it, then the directory synced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}
