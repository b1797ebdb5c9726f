//! The power cut: the device's agent slots are copied into molt-core's
//! simulated store, the install runs there and loses power at a chosen
//! storage operation, the store reboots keeping only what was durable, and
//! the device recovers and boots from what survived.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use molt_agent::agent_slots::{self, Health};
use molt_core::sim::{Damage, Fault, SimStore};
use molt_core::{BootDecision, Engine, FileBackend, FileLayout, FileStore, Manifest, Recovery};
use molt_release::client::FetchedAgent;

/// What one cut did.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    /// The storage operation power failed at, from 1.
    pub(crate) at: u64,
    /// Storage operations the uninterrupted install makes.
    pub(crate) ops: u64,
    /// How the install failed.
    pub(crate) error: String,
    /// What the engine repaired when it reopened.
    pub(crate) recovery: Recovery,
    /// The boot after the reboot, its image verified.
    pub(crate) boot: BootDecision,
}

/// Copies every file of `dir` into a new simulated store, written and
/// synced, names synced: all of it durable, as it is on the device's disk.
pub(crate) fn load(dir: &Path) -> anyhow::Result<SimStore> {
    let mut store = SimStore::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if !entry.file_type().map(|kind| kind.is_file()).unwrap_or(false) {
            continue;
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|name| anyhow::anyhow!("slot file {name:?} is not UTF-8"))?;
        let bytes = fs::read(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
        store
            .write(&name, 0, &bytes)
            .map_err(|error| anyhow::anyhow!("simulated store: {error}"))?;
        store
            .sync(&name)
            .map_err(|error| anyhow::anyhow!("simulated store: {error}"))?;
    }
    store
        .sync_dir()
        .map_err(|error| anyhow::anyhow!("simulated store: {error}"))?;
    Ok(store)
}

/// Replaces the files of `dir` with the store's, durably.
pub(crate) fn write_back(store: &mut SimStore, dir: &Path) -> anyhow::Result<()> {
    let names = store
        .list()
        .map_err(|error| anyhow::anyhow!("simulated store: {error}"))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let keep = entry
            .file_name()
            .to_str()
            .is_some_and(|name| names.iter().any(|kept| kept == name));
        if !keep {
            fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for name in &names {
        let bytes = store
            .contents(name)
            .with_context(|| format!("simulated store lost {name}"))?;
        let tmp = dir.join(format!("{name}.demo-tmp"));
        let path = dir.join(name);
        {
            let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            std::io::Write::write_all(&mut file, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("renaming onto {}", path.display()))?;
    }
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

type SimEngine = Engine<FileBackend<SimStore>>;

/// The agent install the power cuts interrupt, and what it runs with.
pub(crate) struct Install<'a> {
    /// The device's slot engine configuration.
    pub(crate) config: &'a molt_core::Config,
    /// The device's slot file names.
    pub(crate) layout: FileLayout,
    /// The verified agent image.
    pub(crate) agent: &'a FetchedAgent,
    /// Its verified manifest.
    pub(crate) manifest: &'a Manifest,
    /// The running device's health probe result, which decides commits.
    pub(crate) health: &'a Health,
}

/// Powers the device on from `store`: the engine recovers and boots, as
/// [`molt_agent::Device`] does on its own slots.
fn power_on(store: SimStore, install: &Install<'_>) -> anyhow::Result<(SimEngine, Recovery, Option<BootDecision>)> {
    let (mut engine, recovery) = Engine::open(FileBackend::new(store, install.layout), install.config.clone())
        .context("the slots did not reopen after the power cut")?;
    let (boot, _committed) = agent_slots::boot(&mut engine, install.health).context("the device did not boot")?;
    Ok((engine, recovery, boot))
}

/// Counts the storage operations of the uninterrupted install on a copy of
/// `store`.
pub(crate) fn count_ops(store: &SimStore, install: &Install<'_>) -> anyhow::Result<u64> {
    let (mut engine, _recovery, booted) = power_on(store.clone(), install)?;
    engine.backend_mut().store_mut().set_fault(Fault::None);
    agent_slots::install_agent(&mut engine, booted, install.agent, install.manifest, install.health)
        .context("the rehearsal install failed")?;
    Ok(engine.backend().store().ops())
}

/// Runs the install on `store` with power failing at operation `at`, then
/// reboots (keeping only what was durable: [`Damage::LoseUnsynced`]),
/// recovers and boots. Returns the store as it is after that boot.
pub(crate) fn cut(store: &SimStore, install: &Install<'_>, at: u64, ops: u64) -> anyhow::Result<(SimStore, Cut)> {
    let (mut engine, _recovery, booted) = power_on(store.clone(), install)?;
    engine.backend_mut().store_mut().set_fault(Fault::Cut {
        at,
        damage: Damage::LoseUnsynced,
    });
    let error = match agent_slots::install_agent(&mut engine, booted, install.agent, install.manifest, install.health) {
        Ok(_) => bail!("the install finished although power was cut at operation {at} of {ops}"),
        Err(error) => error.to_string(),
    };
    let mut store = engine.into_backend().into_store();
    if !store.is_powered_off() {
        bail!("the install failed before the power cut at operation {at}: {error}");
    }
    store.reboot();
    let (engine, recovery, boot) = power_on(store, install)?;
    let boot = boot.context("no image to boot after the power cut")?;
    Ok((
        engine.into_backend().into_store(),
        Cut {
            at,
            ops,
            error,
            recovery,
            boot,
        },
    ))
}
