//! The store: every SQL statement of molt lives in this crate, most here.
//!
//! SQLite through sqlx, WAL journal, `synchronous = FULL`: a transaction
//! that returned from commit survives a power cut, which is what the
//! store acknowledgement promises. Queries use `$N` placeholders and
//! `ON CONFLICT` so that a PostgreSQL backend can follow.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use molt_protocol::AnyMessage;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::Error;
use crate::points::{self, Bucket, ChunkBuilder, ChunkPoint, Downsample};

/// Chunk rows in one INSERT (7 parameters each, far below SQLite's 32766
/// and PostgreSQL's 65535).
const CHUNK_ROWS_PER_INSERT: usize = 500;

/// Rows of `uplink` in one INSERT (4 parameters each).
const UPLINK_ROWS_PER_INSERT: usize = 500;

/// Legacy `points` rows moved into chunks per transaction at open.
const LEGACY_POINTS_PER_TX: i64 = 50_000;

/// One message's points for one metric, on its way into `point_chunks`.
struct ChunkRow<'a> {
    device: &'a str,
    seq: i64,
    metric: &'a str,
    chunk: ChunkBuilder,
}

/// The database file in the data directory.
pub const DB_FILE: &str = "molt.db";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The database handle.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// One uplink message ready to store.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The sender (certificate CN, checked by the broker).
    pub device: String,
    /// Its decoded body.
    pub message: AnyMessage,
}

/// What [`Store::store_batch`] committed.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Per message of the batch, whether it was new (not a resend).
    pub fresh: Vec<bool>,
    /// The alerts the batch inserted, in order; a resent message adds none.
    pub alerts: Vec<StoredAlert>,
    /// Devices whose newest state report does not show their desired
    /// generation, with that desired state: the director sends it again
    /// (docs/protocol.md, "Desired state").
    pub desired_again: Vec<(String, molt_protocol::Desired)>,
}

/// An alert as it was inserted, the body of its webhook notification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredAlert {
    /// The alert's id (`/api/v1/alerts/{id}/state`).
    pub id: i64,
    /// The device that raised it.
    pub device: String,
    /// The sequence number of the uplink message that carried it.
    pub seq: i64,
    /// The policy that raised it (`name@version`).
    pub policy: String,
    /// The sensor it is about.
    pub sensor: i64,
    /// When the device raised it (ms since the Unix epoch).
    pub t_ms: i64,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The policy's text.
    pub message: String,
    /// `open` when inserted; operators acknowledge and resolve it later.
    pub state: String,
}

/// A registered device as the registry shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceRow {
    /// Device id (= certificate CN = MQTT client id).
    pub id: String,
    /// Hardware class given at enrollment.
    pub hardware_class: String,
    /// Tags and attributes.
    #[schema(value_type = Object)]
    pub tags: serde_json::Value,
    /// Enrolled at (ms).
    pub created_ms: i64,
    /// Last message or connection (ms).
    pub last_seen_ms: Option<i64>,
    /// Connected to the broker now.
    pub online: bool,
    /// Revoked at (ms); a revoked device is refused.
    pub revoked_ms: Option<i64>,
    /// Every uplink message up to this sequence number is stored.
    pub stored_through: i64,
    /// Last reported state (the protocol's `Reported`, as JSON).
    pub reported: Option<serde_json::Value>,
    /// Last health report, as JSON.
    pub health: Option<serde_json::Value>,
    /// Director: the desired state's generation (0: none yet).
    pub desired_generation: i64,
    /// Director: the release set the device should run.
    pub desired_release: Option<i64>,
    /// Director: the rollout that set it.
    pub desired_rollout: Option<String>,
}

/// A device's access state, as the broker's hooks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Enrolled and not revoked.
    Allowed,
    /// Revoked.
    Revoked,
    /// Not in the registry.
    Unknown,
}

fn json_or_null(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Store {
    /// Opens (creating if needed) the database in `dir` and migrates it.
    pub async fn open(dir: &Path) -> Result<Store, Error> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let store = Store { pool };
        store.move_legacy_points().await?;
        Ok(store)
    }

    /// Moves rows of the legacy one-row-per-point table into chunks, a
    /// bounded number per transaction, so that a store written before
    /// migration 0002 keeps every point it acknowledged.
    async fn move_legacy_points(&self) -> Result<(), Error> {
        loop {
            let mut tx = self.write_tx().await?;
            let rows = sqlx::query(
                "SELECT rowid, device, seq, metric, sensor, t_ms, value FROM points ORDER BY device, seq, metric LIMIT $1",
            )
            .bind(LEGACY_POINTS_PER_TX)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(());
            }
            // Each chunk with the rowids it takes from `points`.
            let mut chunks: Vec<(String, i64, String, ChunkBuilder, Vec<i64>)> = Vec::new();
            for r in &rows {
                let device: String = r.try_get(1)?;
                let seq: i64 = r.try_get(2)?;
                let metric: String = r.try_get(3)?;
                let point = ChunkPoint {
                    sensor: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(u32::MAX),
                    t_ms: r.try_get(5)?,
                    value: r.try_get(6)?,
                };
                let rowid: i64 = r.try_get(0)?;
                match chunks.last_mut() {
                    Some((d, s, m, c, ids)) if *d == device && *s == seq && *m == metric => {
                        c.push(point);
                        ids.push(rowid);
                    }
                    _ => {
                        let mut c = ChunkBuilder::default();
                        c.push(point);
                        chunks.push((device, seq, metric, c, vec![rowid]));
                    }
                }
            }
            // The LIMIT may have cut the last message's points in two; that
            // one waits for the next round, which starts with all of it (a
            // message holds far fewer points than a round).
            if rows.len() as i64 == LEGACY_POINTS_PER_TX && chunks.len() > 1 {
                chunks.pop();
            }
            for (device, seq, metric, c, ids) in chunks {
                insert_chunks(
                    &mut tx,
                    &[ChunkRow {
                        device: &device,
                        seq,
                        metric: &metric,
                        chunk: c,
                    }],
                )
                .await?;
                for id in ids {
                    sqlx::query("DELETE FROM points WHERE rowid = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
    }

    /// One metric of one device over `[from, to)`, downsampled into
    /// buckets of `step` ms, oldest first, at most `buckets_max`.
    pub async fn telemetry(
        &self,
        device: &str,
        metric: &str,
        from: i64,
        to: i64,
        step: i64,
        buckets_max: usize,
    ) -> Result<Vec<Bucket>, Error> {
        use futures_util::TryStreamExt;
        let mut down = Downsample::new(from, to, step, buckets_max);
        let mut rows = sqlx::query(
            "SELECT points FROM point_chunks WHERE device = $1 AND metric = $2 AND t_max >= $3 AND t_min < $4",
        )
        .bind(device)
        .bind(metric)
        .bind(from)
        .bind(to)
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let blob: Vec<u8> = row.try_get(0)?;
            match points::decode(&blob) {
                Some(points) => points.for_each(|p| down.add(p)),
                None => tracing::error!(device, metric, bytes = blob.len(), "a damaged point chunk was skipped"),
            }
        }
        Ok(down.finish())
    }

    /// The pool, for the modules of this crate.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that writes. SQLite's default, deferred transaction
    /// that reads before it writes fails at once with `SQLITE_BUSY` when
    /// another connection committed in between (WAL cannot move a read
    /// snapshot forward, and the busy timeout does not apply);
    /// `BEGIN IMMEDIATE` takes the write lock first and waits up to the busy
    /// timeout for it. Every write transaction starts here, so this is the
    /// one place PostgreSQL will change.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Closes the pool (waits for running statements).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The access state of `device` (broker hooks).
    pub async fn access(&self, device: &str) -> Result<Access, Error> {
        let row = sqlx::query("SELECT revoked_ms FROM devices WHERE id = $1")
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => Access::Unknown,
            Some(row) => match row.try_get::<Option<i64>, _>(0)? {
                Some(_) => Access::Revoked,
                None => Access::Allowed,
            },
        })
    }

    /// Every device's access state, to fill the broker's cache at start.
    pub async fn all_access(&self) -> Result<HashMap<String, Access>, Error> {
        let rows = sqlx::query("SELECT id, revoked_ms FROM devices")
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let revoked: Option<i64> = row.try_get(1)?;
            out.insert(
                row.try_get(0)?,
                if revoked.is_some() {
                    Access::Revoked
                } else {
                    Access::Allowed
                },
            );
        }
        Ok(out)
    }

    /// Registers a device with its certificate; refuses an id or a key that
    /// is already registered (a replayed CSR).
    pub async fn insert_device(
        &self,
        id: &str,
        hardware_class: &str,
        tags: &serde_json::Value,
        cert_serial: &str,
        key_fingerprint: &str,
    ) -> Result<(), Error> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT id FROM devices WHERE id = $1 OR key_fingerprint = $2")
            .bind(id)
            .bind(key_fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = exists {
            let existing: String = row.try_get(0)?;
            return Err(if existing == id {
                Error::refused(
                    "device_exists",
                    format!("device {id} is already enrolled; pick another id"),
                )
            } else {
                Error::refused(
                    "csr_replayed",
                    "this CSR's key is already enrolled; generate a new key for each enrollment",
                )
            });
        }
        sqlx::query(
            "INSERT INTO devices (id, hardware_class, tags, created_ms, cert_serial, key_fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(hardware_class)
        .bind(tags.to_string())
        .bind(now_ms())
        .bind(cert_serial)
        .bind(key_fingerprint)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<DeviceRow, Error> {
        let row = sqlx::query(&format!("{DEVICE_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no device {id}; `molt device list` shows the enrolled ones")))?;
        device_row(&row)
    }

    /// Every device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRow>, Error> {
        let rows = sqlx::query(&format!("{DEVICE_COLUMNS} ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_row).collect()
    }

    /// Marks a device revoked; returns it as it was before.
    pub async fn revoke(&self, id: &str) -> Result<DeviceRow, Error> {
        let before = self.device(id).await?;
        sqlx::query("UPDATE devices SET revoked_ms = $1, online = 0 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(before)
    }

    /// Replaces a device's tags; returns the row before.
    pub async fn set_tags(&self, id: &str, tags: &serde_json::Value) -> Result<DeviceRow, Error> {
        let before = self.device(id).await?;
        sqlx::query("UPDATE devices SET tags = $1 WHERE id = $2")
            .bind(tags.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(before)
    }

    /// Sets the director's desired release for a device; returns the new
    /// generation.
    pub async fn set_desired(&self, id: &str, release: u64, rollout: Option<&str>) -> Result<i64, Error> {
        let row = sqlx::query(
            "UPDATE devices SET desired_generation = desired_generation + 1, desired_release = $1, desired_rollout = $2 \
             WHERE id = $3 RETURNING desired_generation",
        )
        .bind(release as i64)
        .bind(rollout)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no device {id}")))?;
        Ok(row.try_get(0)?)
    }

    /// Records a connection state change.
    pub async fn set_online(&self, id: &str, online: bool) -> Result<(), Error> {
        sqlx::query("UPDATE devices SET online = $1, last_seen_ms = $2 WHERE id = $3")
            .bind(i64::from(online))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Per device, the stored-through frontier and the stored sequence
    /// numbers above it (out-of-order arrivals), for the ingest's state.
    pub async fn frontier(&self, device: &str) -> Result<(u64, Vec<u64>), Error> {
        let Some(row) = sqlx::query("SELECT stored_through FROM devices WHERE id = $1")
            .bind(device)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok((0, Vec::new()));
        };
        let through: i64 = row.try_get(0)?;
        let above = sqlx::query("SELECT seq FROM uplink WHERE device = $1 AND seq > $2 ORDER BY seq")
            .bind(device)
            .bind(through)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0).map(|s| s as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((through as u64, above))
    }

    /// Stores a batch in one transaction, each message at most once by
    /// `(device, seq)`, and moves the frontiers given in `frontiers`.
    /// Returns, per message, whether it was new, and the alerts inserted:
    /// only a message new in the `uplink` ledger inserts its alerts, so a
    /// resend reports none. Nothing is returned unless the commit succeeded.
    pub async fn store_batch(&self, batch: &[Uplink], frontiers: &HashMap<String, u64>) -> Result<Stored, Error> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let mut fresh = Vec::with_capacity(batch.len());
        let mut alerts = Vec::new();
        let mut desired_again: Vec<(String, molt_protocol::Desired)> = Vec::new();
        let mut chunks: Vec<ChunkRow<'_>> = Vec::new();
        // The ledger rows go in first, many per statement; what comes back
        // is the keys that were new. A key twice in one batch (a resend
        // racing its original) is fresh only the first time.
        let mut new_keys = insert_uplinks(&mut tx, batch, now).await?;
        for up in batch {
            let Some(seq) = up.message.seq() else {
                fresh.push(false);
                continue;
            };
            let inserted = new_keys
                .get_mut(up.device.as_str())
                .is_some_and(|seqs| seqs.remove(&(seq as i64)));
            fresh.push(inserted);
            if !inserted {
                continue;
            }
            match &up.message {
                AnyMessage::Telemetry(t) => {
                    let first = chunks.len();
                    for p in t.points() {
                        let point = ChunkPoint {
                            sensor: p.sensor,
                            t_ms: i64::try_from(p.timestamp_ms).unwrap_or(i64::MAX),
                            value: p.value,
                        };
                        // A message names few metrics: a linear search
                        // over its own chunks beats hashing.
                        match chunks[first..].iter_mut().find(|c| c.metric == p.metric) {
                            Some(c) => c.chunk.push(point),
                            None => {
                                let mut chunk = ChunkBuilder::default();
                                chunk.push(point);
                                chunks.push(ChunkRow {
                                    device: &up.device,
                                    seq: seq as i64,
                                    metric: p.metric,
                                    chunk,
                                });
                            }
                        }
                    }
                }
                AnyMessage::Alerts(a) => {
                    for alert in &a.alerts {
                        let severity = serde_json::to_value(alert.severity)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        let id: i64 = sqlx::query(
                            "INSERT INTO alerts (device, seq, policy, sensor, t_ms, severity, message, state, updated_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8) RETURNING id",
                        )
                        .bind(&up.device)
                        .bind(seq as i64)
                        .bind(&a.policy)
                        .bind(i64::from(alert.sensor))
                        .bind(alert.t as i64)
                        .bind(&severity)
                        .bind(&alert.message)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                        alerts.push(StoredAlert {
                            id,
                            device: up.device.clone(),
                            seq: seq as i64,
                            policy: a.policy.clone(),
                            sensor: i64::from(alert.sensor),
                            t_ms: alert.t as i64,
                            severity,
                            message: alert.message.clone(),
                            state: "open".to_owned(),
                        });
                    }
                }
                AnyMessage::Event(e) => {
                    sqlx::query("INSERT INTO events (device, seq, t_ms, kind, body) VALUES ($1, $2, $3, $4, $5)")
                        .bind(&up.device)
                        .bind(seq as i64)
                        .bind(e.t as i64)
                        .bind(
                            serde_json::to_value(e.kind)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                        )
                        .bind(serde_json::to_string(e).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
                AnyMessage::Reported(r) => {
                    // Only a newer report replaces the one kept: a resend
                    // or a report overtaken on another topic comes late.
                    let newest = sqlx::query(
                        "UPDATE devices SET reported = $1, reported_ms = $2, reported_seq = $3 \
                         WHERE id = $4 AND reported_seq < $3 \
                         RETURNING desired_generation, desired_release, desired_rollout",
                    )
                    .bind(serde_json::to_string(r).unwrap_or_default())
                    .bind(now)
                    .bind(seq as i64)
                    .bind(&up.device)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = newest
                        && let Some(release) = row.try_get::<Option<i64>, _>(1)?
                    {
                        let generation = row.try_get::<i64, _>(0)? as u64;
                        if r.update.as_ref().map(|u| u.generation) != Some(generation) {
                            desired_again.retain(|(d, _)| d != &up.device);
                            desired_again.push((
                                up.device.clone(),
                                molt_protocol::Desired {
                                    v: molt_protocol::PROTOCOL_VERSION,
                                    generation,
                                    release: release as u64,
                                    rollout: row.try_get(2)?,
                                },
                            ));
                        }
                    }
                }
                AnyMessage::Health(h) => {
                    sqlx::query(
                        "UPDATE devices SET health = $1, health_ms = $2, health_seq = $3 \
                         WHERE id = $4 AND health_seq < $3",
                    )
                    .bind(serde_json::to_string(h).unwrap_or_default())
                    .bind(now)
                    .bind(seq as i64)
                    .bind(&up.device)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
        }
        insert_chunks(&mut tx, &chunks).await?;
        for (device, through) in frontiers {
            sqlx::query(
                "UPDATE devices SET stored_through = $1, last_seen_ms = $2 WHERE id = $3 AND stored_through < $1",
            )
            .bind(*through as i64)
            .bind(now)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Stored {
            fresh,
            alerts,
            desired_again,
        })
    }

    /// Writes one audit record.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit (t_ms, actor, action, target, before_json, after_json) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(before.map(|v| v.to_string()))
        .bind(after.map(|v| v.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Counts rows of a table (tests and metrics).
    pub async fn count(&self, table: Table) -> Result<i64, Error> {
        let sql = match table {
            Table::Points => "SELECT COALESCE(SUM(n), 0) FROM point_chunks",
            Table::Uplink => "SELECT COUNT(*) FROM uplink",
            Table::Alerts => "SELECT COUNT(*) FROM alerts",
            Table::Events => "SELECT COUNT(*) FROM events",
            Table::Devices => "SELECT COUNT(*) FROM devices",
            Table::Audit => "SELECT COUNT(*) FROM audit",
        };
        Ok(sqlx::query(sql).fetch_one(&self.pool).await?.try_get(0)?)
    }

    /// Messages whose points for a metric were stored more than once (two
    /// chunks for the same `(device, seq, metric)`): always 0 unless dedupe
    /// is broken.
    pub async fn duplicate_points(&self) -> Result<i64, Error> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM (SELECT 1 FROM point_chunks GROUP BY device, seq, metric HAVING COUNT(*) > 1) d",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    /// Deletes telemetry older than `days`; returns points removed. A
    /// message's chunk goes once its newest point is older than that.
    pub async fn apply_retention(&self, days: u32) -> Result<u64, Error> {
        let cutoff = now_ms() - i64::from(days) * 86_400_000;
        let removed = sqlx::query("DELETE FROM point_chunks WHERE t_max < $1 RETURNING n")
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
        let mut points = 0u64;
        for r in removed {
            points += r.try_get::<i64, _>(0)?.max(0) as u64;
        }
        Ok(points)
    }
}

/// Adds the batch's messages to the `uplink` ledger, many rows per
/// statement; returns, per device, the sequence numbers that were not
/// there before.
async fn insert_uplinks(
    tx: &mut sqlx::SqliteConnection,
    batch: &[Uplink],
    now: i64,
) -> Result<HashMap<String, HashSet<i64>>, Error> {
    let rows: Vec<(&str, i64, &str)> = batch
        .iter()
        .filter_map(|up| Some((up.device.as_str(), up.message.seq()? as i64, kind_name(&up.message))))
        .collect();
    let mut new: HashMap<String, HashSet<i64>> = HashMap::new();
    for part in rows.chunks(UPLINK_ROWS_PER_INSERT) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO uplink (device, seq, kind, received_ms) ");
        insert.push_values(part, |mut row, (device, seq, kind)| {
            row.push_bind(*device).push_bind(*seq).push_bind(*kind).push_bind(now);
        });
        insert.push(" ON CONFLICT DO NOTHING RETURNING device, seq");
        for r in insert.build().fetch_all(&mut *tx).await? {
            let device: String = r.try_get(0)?;
            new.entry(device).or_default().insert(r.try_get(1)?);
        }
    }
    Ok(new)
}

/// Writes chunks as multi-row INSERTs: one statement per row cost more than
/// the rows themselves.
async fn insert_chunks(tx: &mut sqlx::SqliteConnection, chunks: &[ChunkRow<'_>]) -> Result<(), Error> {
    for rows in chunks.chunks(CHUNK_ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO point_chunks (device, seq, metric, t_min, t_max, n, points) ",
        );
        insert.push_values(rows, |mut row, c| {
            row.push_bind(c.device)
                .push_bind(c.seq)
                .push_bind(c.metric)
                .push_bind(c.chunk.t_min)
                .push_bind(c.chunk.t_max)
                .push_bind(c.chunk.count)
                .push_bind(c.chunk.blob.as_slice());
        });
        insert.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// Tables [`Store::count`] can count (`Points` counts points, not rows).
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum Table {
    Points,
    Uplink,
    Alerts,
    Events,
    Devices,
    Audit,
}

const DEVICE_COLUMNS: &str = "SELECT id, hardware_class, tags, created_ms, last_seen_ms, online, revoked_ms, \
    stored_through, reported, health, desired_generation, desired_release, desired_rollout FROM devices";

fn device_row(row: &sqlx::sqlite::SqliteRow) -> Result<DeviceRow, Error> {
    Ok(DeviceRow {
        id: row.try_get(0)?,
        hardware_class: row.try_get(1)?,
        tags: json_or_null(row.try_get(2)?).unwrap_or(serde_json::Value::Null),
        created_ms: row.try_get(3)?,
        last_seen_ms: row.try_get(4)?,
        online: row.try_get::<i64, _>(5)? != 0,
        revoked_ms: row.try_get(6)?,
        stored_through: row.try_get(7)?,
        reported: json_or_null(row.try_get(8)?),
        health: json_or_null(row.try_get(9)?),
        desired_generation: row.try_get(10)?,
        desired_release: row.try_get(11)?,
        desired_rollout: row.try_get(12)?,
    })
}

fn kind_name(message: &AnyMessage) -> &'static str {
    match message {
        AnyMessage::Telemetry(_) => "telemetry",
        AnyMessage::Alerts(_) => "alerts",
        AnyMessage::Event(_) => "events",
        AnyMessage::Reported(_) => "state",
        AnyMessage::Health(_) => "health",
        _ => "other",
    }
}
