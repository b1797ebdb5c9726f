//! Turning a group and a [`PlanSpec`] into waves: seeded ranks, strata,
//! cumulative wave sizes, and the per-class canary minimum.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{Canary, PlanSpec, Ramp};

/// A device's place in the seeded random order: a 64-bit mix of the seed and
/// the device id (FNV-1a over the bytes, then the SplitMix64 finaliser). It
/// depends on nothing else, so the order of the input list, and devices
/// joining later, never move anyone else.
pub(crate) fn rank(seed: u64, device_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in device_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash ^ seed.rotate_left(32))
}

pub(crate) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cumulative device counts at the end of each wave, for `eligible` devices.
/// The last is always `eligible`; every wave adds at least one device.
pub(crate) fn cumulative_sizes(plan: &PlanSpec, eligible: u64) -> Vec<u64> {
    if eligible == 0 {
        return Vec::new();
    }
    let canary = match plan.canary {
        Canary::Count(count) => u64::from(count),
        Canary::Percent { percent, min } => ((eligible as f64 * percent / 100.0).ceil() as u64).max(u64::from(min)),
    }
    .clamp(1, eligible);
    let mut sizes = vec![canary];
    match &plan.ramp {
        Ramp::Percents(percents) => {
            for percent in percents {
                let size = ((eligible as f64 * percent / 100.0).ceil() as u64).min(eligible);
                if size > *sizes.last().unwrap_or(&0) {
                    sizes.push(size);
                }
            }
        }
        Ramp::Exponential { factor } => {
            let mut size = canary as f64;
            while (size as u64) < eligible {
                size *= factor;
                let next = (size.ceil() as u64).min(eligible);
                if next > *sizes.last().unwrap_or(&0) {
                    sizes.push(next);
                }
            }
        }
    }
    if *sizes.last().unwrap_or(&0) < eligible {
        sizes.push(eligible);
    }
    sizes
}

/// Assigns each eligible device (given as `(device index, stratum, class,
/// rank)`) a wave: every stratum gets its share of every cumulative size,
/// lowest ranks first; then the canary is topped up to
/// `canary_per_class_min` devices of each class. Returns the wave of each
/// entry, in input order.
pub(crate) fn assign_waves(plan: &PlanSpec, cumulative: &[u64], entries: &[(u32, u32, u16, u64)]) -> Vec<u16> {
    let total = entries.len() as u64;
    let mut waves = vec![0u16; entries.len()];
    let mut by_stratum: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (position, entry) in entries.iter().enumerate() {
        by_stratum.entry(entry.1).or_default().push(position);
    }
    for members in by_stratum.values_mut() {
        members.sort_unstable_by_key(|position| (entries[*position].3, entries[*position].0));
    }
    let strata: Vec<&Vec<usize>> = by_stratum.values().collect();
    let mut ends = vec![0usize; strata.len()];
    for (wave, cumulative_size) in cumulative.iter().enumerate() {
        // Each stratum's proportional share of the cumulative size, by the
        // largest-remainder method, so the shares add up to it exactly.
        let quotas: Vec<(u64, u64)> = strata
            .iter()
            .map(|members| {
                let product = cumulative_size * members.len() as u64;
                (product / total, product % total)
            })
            .collect();
        let mut shares: Vec<u64> = quotas.iter().map(|quota| quota.0).collect();
        let mut left = cumulative_size - shares.iter().sum::<u64>();
        let mut by_remainder: Vec<usize> = (0..strata.len()).collect();
        by_remainder.sort_by_key(|stratum| (std::cmp::Reverse(quotas[*stratum].1), *stratum));
        for stratum in by_remainder {
            if left == 0 {
                break;
            }
            if shares[stratum] < strata[stratum].len() as u64 {
                shares[stratum] += 1;
                left -= 1;
            }
        }
        for (stratum, members) in strata.iter().enumerate() {
            let end = (shares[stratum] as usize).clamp(ends[stratum], members.len());
            for position in &members[ends[stratum]..end] {
                waves[*position] = wave as u16;
            }
            ends[stratum] = end;
        }
    }
    // The canary's per-class minimum.
    let mut by_class: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (position, entry) in entries.iter().enumerate() {
        by_class.entry(entry.2).or_default().push(position);
    }
    for members in by_class.values_mut() {
        let wanted = (plan.canary_per_class_min as usize).min(members.len());
        let in_canary = members.iter().filter(|position| waves[**position] == 0).count();
        if in_canary >= wanted {
            continue;
        }
        members.sort_unstable_by_key(|position| (entries[*position].3, entries[*position].0));
        let mut missing = wanted - in_canary;
        for position in members.iter() {
            if missing == 0 {
                break;
            }
            if waves[*position] != 0 {
                waves[*position] = 0;
                missing -= 1;
            }
        }
    }
    waves
}

/// One wave of a plan preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavePreview {
    /// 0 is the canary.
    pub index: u32,
    /// Devices in it.
    pub devices: u64,
    /// Devices in it per hardware class.
    pub per_class: BTreeMap<String, u64>,
    /// Whether it waits for an operator's `promote` to start.
    pub approval: bool,
}

/// The blast radius of a rollout before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPreview {
    /// The waves.
    pub waves: Vec<WavePreview>,
    /// Devices already on the release.
    pub already_current: u64,
    /// Devices that cannot take it (another security counter, or newer).
    pub ineligible: u64,
}
