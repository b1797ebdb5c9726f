//! A loopback HTTP/1.1 server for transfer tests and benchmarks: it serves
//! the files under a directory and misbehaves on request.
//!
//! It listens on `127.0.0.1:0` (never a fixed port) and answers one request
//! per connection (`Connection: close`), which keeps each misbehaviour tied
//! to exactly one request. `GET` with an optional `Range: bytes=N-` is
//! understood; anything else gets `405`, a missing file `404`.
//!
//! ```ignore
//! let server = TestServer::start(dir.path(), Mode::Normal).await;
//! server.set_path_mode("/targets/big.bin", Mode::DropAfter { bytes: 1024, requests: 1 });
//! let url = server.url(); // http://127.0.0.1:PORT/
//! // ... download ...
//! assert_eq!(server.requests_for("/targets/big.bin").len(), 2);
//! ```
//!
//! The server stops (and every connection it holds open is closed) when
//! the `TestServer` is dropped.

// The benchmark includes this file too and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use url::Url;

/// How the server answers a `GET` for an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A well-behaved server: `200` with the whole file, or `206` for
    /// `Range: bytes=N-` (`416` when `N` is at or past the end).
    Normal,
    /// Ignores `Range` and always answers `200` with the whole file.
    NoRange,
    /// Answers like `Normal` (full `Content-Length`), sends `after_bytes`
    /// body bytes, then holds the connection open and silent until the
    /// server is dropped.
    Stall {
        /// Body bytes sent before going silent.
        after_bytes: u64,
    },
    /// Answers `200` without `Content-Length` (the body ends when the
    /// connection closes) and sends the file followed by filler bytes, up
    /// to `ENDLESS_BYTES_MAX` in all, as fast as the client reads them.
    Endless,
    /// Like `Normal`, but for the first `requests` requests to a path the
    /// connection is closed after `bytes` body bytes; later requests are
    /// served normally, so a resume can succeed.
    DropAfter {
        /// Body bytes sent before the connection is closed.
        bytes: u64,
        /// How many requests (per path, counted from the first) are cut.
        requests: u32,
    },
    /// Like `Normal`, but the body is paced to about `bytes_per_sec`.
    Slow {
        /// Body bytes per second.
        bytes_per_sec: u64,
    },
    /// Always answers with this status code and an empty body (e.g. `503`).
    Status {
        /// The HTTP status code.
        code: u16,
    },
}

/// `Mode::Endless` sends at most this many bytes, so a broken client
/// cannot keep a test running forever.
pub(crate) const ENDLESS_BYTES_MAX: u64 = 1 << 30;

/// Request heads longer than this are refused.
const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Body bytes are written in chunks of this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestRecord {
    /// The request path, e.g. `/targets/a.bin` (not percent-decoded).
    pub(crate) path: String,
    /// The raw value of the `Range` header, if one was sent.
    pub(crate) range: Option<String>,
    /// The status code answered.
    pub(crate) status: u16,
    /// Body bytes written to the socket (whether or not the client read
    /// them all).
    pub(crate) body_bytes_sent: u64,
}

/// A running loopback test server.
#[derive(Debug)]
pub(crate) struct TestServer {
    url: Url,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    default_mode: Mode,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    path_modes: HashMap<String, Mode>,
    /// Requests per path so far, including the one being answered.
    path_request_counts: HashMap<String, u32>,
    requests: Vec<RequestRecord>,
    /// File contents by path, reused while size and mtime are unchanged so
    /// benchmarks measure the transfer, not the server's reads.
    file_cache: HashMap<PathBuf, (SystemTime, u64, Arc<Vec<u8>>)>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    /// Starts a server for the files under `root` (request path `/a/b` is
    /// `root/a/b`) that behaves as `mode` unless a path has its own mode.
    /// Must be called inside a tokio runtime; the server runs on it.
    pub(crate) async fn start(root: &Path, mode: Mode) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback test server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address of the test server");
        let url = Url::parse(&format!("http://{addr}/")).expect("loopback URL parses");
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            default_mode: mode,
            state: Mutex::new(State::default()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown.clone()));
        TestServer { url, shared, shutdown }
    }

    /// The base URL, `http://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> Url {
        self.url.clone()
    }

    /// Makes requests for `path` (e.g. `/targets/a.bin`) behave as `mode`
    /// from now on, overriding the server's mode.
    pub(crate) fn set_path_mode(&self, path: &str, mode: Mode) {
        self.state().path_modes.insert(path.to_owned(), mode);
    }

    /// Every request received so far, in order of arrival.
    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Requests received for `path` so far.
    pub(crate) fn requests_for(&self, path: &str) -> Vec<RequestRecord> {
        self.state()
            .requests
            .iter()
            .filter(|record| record.path == path)
            .cloned()
            .collect()
    }

    /// How many requests were received so far.
    pub(crate) fn request_count(&self) -> usize {
        self.state().requests.len()
    }

    /// The `Range` header of each request for `path`, in order (`None`
    /// where none was sent).
    pub(crate) fn ranges_seen(&self, path: &str) -> Vec<Option<String>> {
        self.requests_for(path).into_iter().map(|record| record.range).collect()
    }

    /// Body bytes written for `path` over all requests.
    pub(crate) fn body_bytes_sent(&self, path: &str) -> u64 {
        self.requests_for(path)
            .iter()
            .map(|record| record.body_bytes_sent)
            .sum()
    }

    /// Forgets the requests recorded so far and the per-path request counts
    /// (so `DropAfter` cuts its first requests again).
    pub(crate) fn reset_counters(&self) {
        let mut state = self.state();
        state.requests.clear();
        state.path_request_counts.clear();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("test server state lock")
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = serve_connection(stream, &shared, &shutdown) => {}
            }
        });
    }
}

struct Head {
    method: String,
    path: String,
    range: Option<String>,
}

/// Reads the request head; `None` if the client went away or sent garbage.
async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut byte_chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > REQUEST_HEAD_BYTES_MAX {
            return None;
        }
        let n = stream.read(&mut byte_chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte_chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let range = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("range")
            .then(|| value.trim().to_owned())
    });
    Some(Head { method, path, range })
}

async fn serve_connection(mut stream: TcpStream, shared: &Shared, shutdown: &CancellationToken) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let (mode, request_idx) = {
        let mut state = shared.state.lock().expect("test server state lock");
        let count = state.path_request_counts.entry(head.path.clone()).or_insert(0);
        *count += 1;
        let request_idx = *count;
        let mode = state.path_modes.get(&head.path).copied().unwrap_or(shared.default_mode);
        (mode, request_idx)
    };
    let record_idx = {
        let mut state = shared.state.lock().expect("test server state lock");
        state.requests.push(RequestRecord {
            path: head.path.clone(),
            range: head.range.clone(),
            status: 0,
            body_bytes_sent: 0,
        });
        state.requests.len() - 1
    };
    let mut response = Response {
        stream: &mut stream,
        shared,
        record_idx,
    };
    response.answer(&head, mode, request_idx, shutdown).await;
}

struct Response<'a> {
    stream: &'a mut TcpStream,
    shared: &'a Shared,
    record_idx: usize,
}

/// The socket went away; stop answering.
struct Gone;

impl Response<'_> {
    async fn answer(&mut self, head: &Head, mode: Mode, request_idx: u32, shutdown: &CancellationToken) {
        if head.method != "GET" {
            let _ = self.status_only(405, "Method Not Allowed").await;
            return;
        }
        if let Mode::Status { code } = mode {
            let _ = self.status_only(code, "Test Status").await;
            return;
        }
        let Some(file) = self.load(&head.path).await else {
            let _ = self.status_only(404, "Not Found").await;
            return;
        };
        let len = file.len() as u64;

        if mode == Mode::Endless {
            let _ = self.endless(&file).await;
            return;
        }

        let honour_range = mode != Mode::NoRange;
        let start = match head.range.as_deref().filter(|_| honour_range) {
            None => 0,
            Some(range) => {
                let Some(start) = range
                    .strip_prefix("bytes=")
                    .and_then(|rest| rest.strip_suffix('-'))
                    .and_then(|start| start.parse::<u64>().ok())
                else {
                    let _ = self.status_only(400, "Bad Request").await;
                    return;
                };
                if start >= len {
                    let extra = format!("Content-Range: bytes */{len}\r\n");
                    let _ = self.head(416, "Range Not Satisfiable", Some(0), &extra).await;
                    return;
                }
                start
            }
        };
        let body = &file[usize::try_from(start).expect("start < len fits usize")..];
        let sent = if start > 0 {
            let extra = format!(
                "Content-Range: bytes {start}-{}/{len}\r\nAccept-Ranges: bytes\r\n",
                len - 1
            );
            self.head(206, "Partial Content", Some(body.len() as u64), &extra).await
        } else {
            let extra = if honour_range { "Accept-Ranges: bytes\r\n" } else { "" };
            self.head(200, "OK", Some(len), extra).await
        };
        if sent.is_err() {
            return;
        }

        let _ = match mode {
            Mode::Normal | Mode::NoRange | Mode::Endless | Mode::Status { .. } => self.body(body, None).await,
            Mode::Stall { after_bytes } => {
                if self.body(body, Some(after_bytes)).await.is_ok() {
                    // Hold the connection open, sending nothing, until the
                    // server is dropped (the caller's select ends us).
                    shutdown.cancelled().await;
                }
                Ok(())
            }
            Mode::DropAfter { bytes, requests } => {
                let limit = (request_idx <= requests).then_some(bytes);
                // Returning drops the socket: the connection closes.
                self.body(body, limit).await
            }
            Mode::Slow { bytes_per_sec } => self.slow_body(body, bytes_per_sec).await,
        };
    }

    async fn load(&self, request_path: &str) -> Option<Arc<Vec<u8>>> {
        let mut path = self.shared.root.clone();
        let relative = request_path.split('?').next()?;
        for segment in relative.split('/').filter(|segment| !segment.is_empty()) {
            let segment = percent_decode(segment)?;
            if segment == "." || segment == ".." || segment.contains('/') {
                return None;
            }
            path.push(segment);
        }
        let metadata = tokio::fs::metadata(&path).await.ok()?;
        if !metadata.is_file() {
            return None;
        }
        let modified = metadata.modified().ok()?;
        {
            let state = self.shared.state.lock().expect("test server state lock");
            if let Some((cached_modified, cached_len, bytes)) = state.file_cache.get(&path)
                && *cached_modified == modified
                && *cached_len == metadata.len()
            {
                return Some(Arc::clone(bytes));
            }
        }
        let bytes = Arc::new(tokio::fs::read(&path).await.ok()?);
        let mut state = self.shared.state.lock().expect("test server state lock");
        state
            .file_cache
            .insert(path, (modified, bytes.len() as u64, Arc::clone(&bytes)));
        Some(bytes)
    }

    fn record(&self, update: impl FnOnce(&mut RequestRecord)) {
        let mut state = self.shared.state.lock().expect("test server state lock");
        if let Some(record) = state.requests.get_mut(self.record_idx) {
            update(record);
        }
    }

    async fn head(
        &mut self,
        status: u16,
        reason: &str,
        content_length: Option<u64>,
        extra_headers: &str,
    ) -> Result<(), Gone> {
        self.record(|record| record.status = status);
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra_headers}");
        if let Some(content_length) = content_length {
            head.push_str(&format!("Content-Length: {content_length}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await.map_err(|_| Gone)
    }

    async fn status_only(&mut self, status: u16, reason: &str) -> Result<(), Gone> {
        self.head(status, reason, Some(0), "").await?;
        self.stream.flush().await.map_err(|_| Gone)
    }

    /// Writes `body`, or only its first `limit` bytes.
    async fn body(&mut self, body: &[u8], limit: Option<u64>) -> Result<(), Gone> {
        let limit = limit.map_or(body.len(), |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX).min(body.len())
        });
        for chunk in body[..limit].chunks(CHUNK_BYTES) {
            self.write_body(chunk).await?;
        }
        self.stream.flush().await.map_err(|_| Gone)
    }

    async fn write_body(&mut self, chunk: &[u8]) -> Result<(), Gone> {
        self.stream.write_all(chunk).await.map_err(|_| Gone)?;
        self.record(|record| record.body_bytes_sent += chunk.len() as u64);
        Ok(())
    }

    async fn slow_body(&mut self, body: &[u8], bytes_per_sec: u64) -> Result<(), Gone> {
        const TICK: Duration = Duration::from_millis(50);
        let per_tick = usize::try_from((bytes_per_sec / 20).max(1)).unwrap_or(usize::MAX);
        let mut interval = tokio::time::interval(TICK);
        for chunk in body.chunks(per_tick) {
            interval.tick().await;
            self.write_body(chunk).await?;
            self.stream.flush().await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    async fn endless(&mut self, file: &[u8]) -> Result<(), Gone> {
        self.head(200, "OK", None, "").await?;
        self.body(file, None).await?;
        let filler = vec![0x5a_u8; CHUNK_BYTES];
        let mut sent = file.len() as u64;
        while sent < ENDLESS_BYTES_MAX {
            self.write_body(&filler).await?;
            sent += filler.len() as u64;
        }
        Ok(())
    }
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%' {
            let hex = std::str::from_utf8(bytes.get(idx + 1..idx + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            idx += 3;
        } else {
            decoded.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8(decoded).ok()
}
