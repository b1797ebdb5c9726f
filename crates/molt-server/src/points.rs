//! Telemetry points as the store keeps them: one chunk per message and
//! metric, its points packed into one blob.
//!
//! A telemetry message carries tens to hundreds of points. Stored one row
//! per point (with two indexes), SQLite spent most of each batch's commit
//! on row and index maintenance: about 70k points/s on the bench machine,
//! so 1.4k messages/s of 50 points. Packed per `(device, seq, metric)`,
//! a message costs one row per metric it names, and queries decode the
//! chunks overlapping the asked time range; the same layout that time-series
//! stores use for their compressed chunks.
//!
//! A chunk's blob is `count` records of 20 bytes, little-endian: `sensor`
//! (u32), `t_ms` (i64), `value` (f64, NaN for a missing value: the protocol
//! turns every non-finite value into "missing", so a stored NaN means
//! nothing else).

use std::collections::BTreeMap;

/// Bytes per packed point.
pub const POINT_BYTES: usize = 20;

/// One point of a chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkPoint {
    /// The sensor.
    pub sensor: u32,
    /// Its timestamp (ms since the epoch).
    pub t_ms: i64,
    /// Its value; `None` where the policy produced a non-finite one.
    pub value: Option<f64>,
}

/// A chunk being built: the points of one message for one metric.
#[derive(Debug, Default, Clone)]
pub struct ChunkBuilder {
    /// The packed points.
    pub blob: Vec<u8>,
    /// The earliest timestamp.
    pub t_min: i64,
    /// The latest timestamp.
    pub t_max: i64,
    /// Points in it.
    pub count: i64,
}

impl ChunkBuilder {
    /// Appends a point.
    pub fn push(&mut self, p: ChunkPoint) {
        if self.count == 0 {
            self.t_min = p.t_ms;
            self.t_max = p.t_ms;
        } else {
            self.t_min = self.t_min.min(p.t_ms);
            self.t_max = self.t_max.max(p.t_ms);
        }
        self.count += 1;
        self.blob.extend_from_slice(&p.sensor.to_le_bytes());
        self.blob.extend_from_slice(&p.t_ms.to_le_bytes());
        self.blob.extend_from_slice(&p.value.unwrap_or(f64::NAN).to_le_bytes());
    }
}

/// The points of a stored chunk. A blob whose length is not a multiple of
/// [`POINT_BYTES`] is damaged: its trailing partial record is ignored and
/// the caller is told through `None`.
pub fn decode(blob: &[u8]) -> Option<impl Iterator<Item = ChunkPoint> + '_> {
    if !blob.len().is_multiple_of(POINT_BYTES) {
        return None;
    }
    Some(blob.chunks_exact(POINT_BYTES).map(|r| {
        let mut sensor = [0u8; 4];
        let mut t = [0u8; 8];
        let mut v = [0u8; 8];
        sensor.copy_from_slice(&r[0..4]);
        t.copy_from_slice(&r[4..12]);
        v.copy_from_slice(&r[12..20]);
        let value = f64::from_le_bytes(v);
        ChunkPoint {
            sensor: u32::from_le_bytes(sensor),
            t_ms: i64::from_le_bytes(t),
            value: (!value.is_nan()).then_some(value),
        }
    }))
}

/// One downsampled bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// The bucket's start (ms since the epoch).
    pub t_ms: i64,
    /// Points in it, missing values included.
    pub count: i64,
    /// The mean of its present values.
    pub avg: Option<f64>,
    /// The least present value.
    pub min: Option<f64>,
    /// The greatest present value.
    pub max: Option<f64>,
}

#[derive(Default, Clone, Copy)]
struct Acc {
    count: i64,
    present: i64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Aggregates points falling in `[from, to)` into buckets of `step` ms
/// (SQL's `AVG`, `MIN`, `MAX`, `COUNT(*)` semantics: missing values count
/// but take no part in the others), keeping only the oldest `max` buckets
/// so that memory stays bounded whatever the range and step.
pub struct Downsample {
    from: i64,
    to: i64,
    step: i64,
    max: usize,
    buckets: BTreeMap<i64, Acc>,
}

impl Downsample {
    /// At most `max` buckets of `step` ms (at least 1) over `[from, to)`.
    pub fn new(from: i64, to: i64, step: i64, max: usize) -> Downsample {
        Downsample {
            from,
            to,
            step: step.max(1),
            max,
            buckets: BTreeMap::new(),
        }
    }

    /// Adds a point; one outside the range is ignored.
    pub fn add(&mut self, p: ChunkPoint) {
        if p.t_ms < self.from || p.t_ms >= self.to {
            return;
        }
        let key = p.t_ms.div_euclid(self.step) * self.step;
        let acc = self.buckets.entry(key).or_default();
        acc.count += 1;
        if let Some(v) = p.value {
            if acc.present == 0 {
                acc.min = v;
                acc.max = v;
            } else {
                acc.min = acc.min.min(v);
                acc.max = acc.max.max(v);
            }
            acc.present += 1;
            acc.sum += v;
        }
        // The newest bucket goes: the set of older keys only grows, so a
        // bucket once dropped never belongs to the answer.
        if self.buckets.len() > self.max {
            self.buckets.pop_last();
        }
    }

    /// The buckets, oldest first.
    pub fn finish(self) -> Vec<Bucket> {
        self.buckets
            .into_iter()
            .map(|(t_ms, a)| Bucket {
                t_ms,
                count: a.count,
                avg: (a.present > 0).then(|| a.sum / a.present as f64),
                min: (a.present > 0).then_some(a.min),
                max: (a.present > 0).then_some(a.max),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_including_missing_values() {
        let points = [
            ChunkPoint {
                sensor: 7,
                t_ms: 1_700_000_000_123,
                value: Some(-2.5),
            },
            ChunkPoint {
                sensor: u32::MAX,
                t_ms: -5,
                value: None,
            },
            ChunkPoint {
                sensor: 0,
                t_ms: i64::MAX,
                value: Some(f64::MAX),
            },
        ];
        let mut b = ChunkBuilder::default();
        for p in points {
            b.push(p);
        }
        assert_eq!((b.count, b.t_min, b.t_max), (3, -5, i64::MAX));
        assert_eq!(b.blob.len(), 3 * POINT_BYTES);
        let back: Vec<_> = decode(&b.blob).expect("whole records").collect();
        assert_eq!(back, points);
        assert!(
            decode(&b.blob[..b.blob.len() - 1]).is_none(),
            "a torn record is reported"
        );
    }

    #[test]
    fn downsampling_matches_sql_aggregates() {
        let mut d = Downsample::new(10, 40, 10, 10);
        for (t, v) in [
            (5, Some(100.0)),
            (10, Some(1.0)),
            (15, None),
            (19, Some(3.0)),
            (25, None),
            (39, Some(-1.0)),
            (40, Some(9.0)),
        ] {
            d.add(ChunkPoint {
                sensor: 0,
                t_ms: t,
                value: v,
            });
        }
        let b = d.finish();
        assert_eq!(b.len(), 3);
        assert_eq!(
            b[0],
            Bucket {
                t_ms: 10,
                count: 3,
                avg: Some(2.0),
                min: Some(1.0),
                max: Some(3.0)
            }
        );
        assert_eq!(
            b[1],
            Bucket {
                t_ms: 20,
                count: 1,
                avg: None,
                min: None,
                max: None
            }
        );
        assert_eq!(b[2].t_ms, 30);
        assert_eq!(b[2].avg, Some(-1.0));
        let mut d = Downsample::new(i64::MIN, i64::MAX, 1, 5);
        for t in (0..20).rev().chain(0..20) {
            d.add(ChunkPoint {
                sensor: 0,
                t_ms: t,
                value: Some(1.0),
            });
        }
        let b = d.finish();
        assert_eq!(
            b.iter().map(|b| (b.t_ms, b.count)).collect::<Vec<_>>(),
            [(0, 2), (1, 2), (2, 2), (3, 2), (4, 2)],
            "only the oldest buckets are kept, whole"
        );
    }
}
