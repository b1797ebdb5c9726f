//! Per-sensor state that DAG-CBOR can encode.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// A map from sensor id to `T`, for per-sensor state.
///
/// DAG-CBOR only allows text keys in maps, so a `BTreeMap<u32, T>` cannot be snapshotted;
/// a `SensorMap` encodes as a list of `[sensor, value]` pairs in ascending sensor order instead,
/// which keeps snapshots canonical: the same state always gives the same bytes.
///
/// ```
/// use molt_policy_sdk::SensorMap;
///
/// let mut last_seen: SensorMap<u64> = SensorMap::default();
/// *last_seen.get_or_insert_with(7, || 0) = 1_700_000_000_000;
/// assert_eq!(last_seen.get(7), Some(&1_700_000_000_000));
/// assert_eq!(last_seen.get(8), None);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SensorMap<T> {
    entries: BTreeMap<u32, T>,
}

impl<T> Default for SensorMap<T> {
    fn default() -> Self {
        SensorMap {
            entries: BTreeMap::new(),
        }
    }
}

impl<T> SensorMap<T> {
    /// The state of `sensor`, if it has any.
    pub fn get(&self, sensor: u32) -> Option<&T> {
        self.entries.get(&sensor)
    }

    /// The state of `sensor`, mutably, if it has any.
    pub fn get_mut(&mut self, sensor: u32) -> Option<&mut T> {
        self.entries.get_mut(&sensor)
    }

    /// The state of `sensor`, created by `make` on first use.
    pub fn get_or_insert_with(&mut self, sensor: u32, make: impl FnOnce() -> T) -> &mut T {
        self.entries.entry(sensor).or_insert_with(make)
    }

    /// Sets the state of `sensor`, returning the previous one.
    pub fn insert(&mut self, sensor: u32, value: T) -> Option<T> {
        self.entries.insert(sensor, value)
    }

    /// Forgets `sensor`, returning its state.
    pub fn remove(&mut self, sensor: u32) -> Option<T> {
        self.entries.remove(&sensor)
    }

    /// How many sensors have state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no sensor has state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All sensors and their state, in ascending sensor order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries.iter().map(|(sensor, value)| (*sensor, value))
    }

    /// All sensors' state, mutably, in ascending sensor order.
    pub fn values_mut(&mut self) -> btree_map::ValuesMut<'_, u32, T> {
        self.entries.values_mut()
    }
}

impl<T: Serialize> Serialize for SensorMap<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.entries.len()))?;
        for entry in &self.entries {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SensorMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(SensorMapVisitor(PhantomData))
    }
}

struct SensorMapVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for SensorMapVisitor<T> {
    type Value = SensorMap<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of [sensor, state] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some((sensor, value)) = seq.next_element::<(u32, T)>()? {
            if entries.insert(sensor, value).is_some() {
                return Err(serde::de::Error::custom(format_args!("sensor {sensor} appears twice")));
            }
        }
        Ok(SensorMap { entries })
    }
}
