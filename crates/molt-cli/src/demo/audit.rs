//! The proofs: exactly-once delivery, counted from what the policies
//! returned, and the replay that must reproduce every policy's state CID.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use molt_agent::Processed;
use molt_wasm::{Action, Cid, Deployment, PolicyVersion, Reading, Runtime, RuntimeConfig, SwapConfig, SwapEvent};

/// The policy whose output is the ledger: `sequence-echo` answers every
/// reading with one telemetry whose value is its sequence number and whose
/// metric is the version's tag.
pub(crate) const AUDIT_POLICY: &str = "audit";

/// Counts, per sequence number, how often the audit policy delivered it,
/// and checks each delivery came in order from the version that served the
/// batch.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Deliveries per sequence number (index 0 unused).
    deliveries: Vec<u32>,
    /// The last sequence delivered.
    last_delivered: u64,
    /// Deliveries that went backwards or repeated.
    out_of_order: u64,
    /// Deliveries tagged with a version other than the one that served.
    wrong_version: u64,
    /// Readings in batches some policy handed back unprocessed.
    unprocessed_readings: u64,
    /// Readings given to the device.
    pub(crate) readings: u64,
    /// Readings served, per policy version id.
    pub(crate) served_by: BTreeMap<String, u64>,
    /// Every swap's latency (all policies).
    pub(crate) swap_latencies: Vec<Duration>,
    /// Swaps, commits and reverts (all policies).
    pub(crate) swaps: u64,
    pub(crate) commits: u64,
    pub(crate) reverts: u64,
    /// The first revert's failure per policy, as displayed (with the
    /// guest backtrace of a trap).
    pub(crate) revert_reasons: BTreeMap<String, String>,
    /// The size of the batch each revert happened on.
    pub(crate) revert_batch_readings: BTreeMap<String, usize>,
    /// Largest batch given to the device.
    pub(crate) largest_batch: usize,
}

/// What the ledger concludes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) wrong_version: u64,
}

impl Ledger {
    pub(crate) fn observe(&mut self, batch: &[Reading], processed: &Processed) {
        self.readings += batch.len() as u64;
        self.largest_batch = self.largest_batch.max(batch.len());
        for (policy, outcome) in &processed.outcomes {
            *self.served_by.entry(outcome.served_by.clone()).or_default() += batch.len() as u64;
            if let Some((readings, _)) = &outcome.unprocessed {
                self.unprocessed_readings += readings.len() as u64;
            }
            for event in &outcome.events {
                match event {
                    SwapEvent::Swapped { latency, .. } => {
                        self.swaps += 1;
                        self.swap_latencies.push(*latency);
                    }
                    SwapEvent::Committed { .. } => self.commits += 1,
                    SwapEvent::Reverted { error, .. } => {
                        self.reverts += 1;
                        self.revert_reasons
                            .entry(policy.clone())
                            .or_insert_with(|| error.to_string());
                        self.revert_batch_readings.entry(policy.clone()).or_insert(batch.len());
                    }
                    _ => {}
                }
            }
            if policy != AUDIT_POLICY {
                continue;
            }
            for action in &outcome.actions {
                let Action::Telemetry(echo) = action else { continue };
                // sequence-echo reports the sequence exactly below 2^53.
                let sequence = echo.value as u64;
                if echo.metric != outcome.served_by {
                    self.wrong_version += 1;
                }
                if sequence <= self.last_delivered {
                    self.out_of_order += 1;
                }
                self.last_delivered = self.last_delivered.max(sequence);
                let index = sequence as usize;
                if self.deliveries.len() <= index {
                    self.deliveries.resize(index + 1, 0);
                }
                self.deliveries[index] += 1;
            }
        }
    }

    /// Judges deliveries of sequence numbers 1 to `produced`.
    pub(crate) fn verdict(&self, produced: u64) -> Verdict {
        let mut lost = 0;
        let mut duplicated = 0;
        for sequence in 1..=produced as usize {
            match self.deliveries.get(sequence).copied().unwrap_or(0) {
                0 => lost += 1,
                n => duplicated += u64::from(n - 1),
            }
        }
        // Deliveries of numbers never produced count as duplicates: they
        // cannot be first deliveries of anything.
        duplicated += self
            .deliveries
            .iter()
            .skip(produced as usize + 1)
            .map(|&n| u64::from(n))
            .sum::<u64>();
        Verdict {
            // A reading some other policy handed back was lost to that
            // policy, even if the audit saw it.
            lost: lost + self.unprocessed_readings,
            duplicated,
            out_of_order: self.out_of_order,
            wrong_version: self.wrong_version,
        }
    }
}

/// What happened to the device, in order, as far as policies see it.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A policy started from `init` with a version.
    Start { policy: String, version: String },
    /// A version staged into a running policy.
    Stage { policy: String, version: String },
    /// A batch, and which version served it for each policy.
    Batch {
        readings: Arc<Vec<Reading>>,
        served_by: BTreeMap<String, String>,
    },
}

/// A version's bytes and configuration, by version id.
#[derive(Debug, Clone)]
pub(crate) struct VersionSource {
    pub(crate) wasm: Arc<Vec<u8>>,
    pub(crate) config: Vec<(String, String)>,
}

/// One policy's replay.
#[derive(Debug, Clone)]
pub(crate) struct Replayed {
    pub(crate) cid: Cid,
    pub(crate) batches: u64,
    /// Batches served by another version than live.
    pub(crate) served_differently: u64,
}

/// Replays the log from the start through the same versions in a fresh
/// runtime, each policy in its own deployment, and returns each policy's
/// final state CID.
pub(crate) fn replay(
    log: &[Entry],
    versions: &BTreeMap<String, VersionSource>,
    runtime_config: &RuntimeConfig,
    swap: &SwapConfig,
) -> anyhow::Result<BTreeMap<String, Replayed>> {
    let runtime = Runtime::new(runtime_config).context("could not build the replay runtime")?;
    let mut compiled: BTreeMap<String, PolicyVersion> = BTreeMap::new();
    let mut version = |id: &str| -> anyhow::Result<PolicyVersion> {
        if let Some(version) = compiled.get(id) {
            return Ok(version.clone());
        }
        let source = versions
            .get(id)
            .with_context(|| format!("the replay has no bytes for {id}"))?;
        let module = runtime
            .compile(&source.wasm)
            .with_context(|| format!("replay: compiling {id}"))?;
        let version = PolicyVersion {
            id: id.to_owned(),
            module,
            config: source.config.clone(),
        };
        compiled.insert(id.to_owned(), version.clone());
        Ok(version)
    };
    // Per policy: the deployment, batches replayed, batches served by
    // another version than live.
    let mut deployments: BTreeMap<String, (Deployment, u64, u64)> = BTreeMap::new();
    for entry in log {
        match entry {
            Entry::Start { policy, version: id } => {
                let deployment =
                    Deployment::start(version(id)?, swap.clone()).with_context(|| format!("replay: starting {id}"))?;
                deployments.insert(policy.clone(), (deployment, 0, 0));
            }
            Entry::Stage { policy, version: id } => {
                let staged = version(id)?;
                let (deployment, _, _) = deployments
                    .get_mut(policy)
                    .with_context(|| format!("replay: {policy} staged before it started"))?;
                deployment
                    .stage(staged)
                    .with_context(|| format!("replay: staging {id}"))?;
            }
            Entry::Batch { readings, served_by } => {
                for (policy, (deployment, batches, served_differently)) in &mut deployments {
                    let outcome = deployment.process(readings.as_ref().clone());
                    *batches += 1;
                    if served_by.get(policy) != Some(&outcome.served_by) {
                        *served_differently += 1;
                    }
                }
            }
        }
    }
    let mut replayed = BTreeMap::new();
    for (policy, (mut deployment, batches, served_differently)) in deployments {
        let cid = deployment
            .snapshot()
            .with_context(|| format!("replay: snapshot of {policy}"))?
            .cid();
        replayed.insert(
            policy,
            Replayed {
                cid,
                batches,
                served_differently,
            },
        );
    }
    Ok(replayed)
}

/// The `p`-th percentile (0 to 100) of `samples`, nearest rank.
pub(crate) fn percentile(samples: &[Duration], p: u32) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The audit policy's own count, decoded from its state: readings it
/// processed and the last sequence number, which it only ever accepts in
/// increasing order.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct AuditState {
    pub(crate) n_readings: u64,
    pub(crate) last_sequence: Option<u64>,
}

pub(crate) fn decode_audit_state(state: &molt_wasm::State) -> anyhow::Result<AuditState> {
    serde_ipld_dagcbor::from_slice(state.bytes()).context("the audit policy's state is not what sequence-echo writes")
}
