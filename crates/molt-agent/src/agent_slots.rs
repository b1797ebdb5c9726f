//! Installing an agent image into the A/B slots: stage, trial boot, health
//! check, commit. Generic over molt-core's [`Backend`], so the same code runs
//! on the device's files and on simulated storage that loses power.

use molt_core::{Backend, BootDecision, BootReason, Engine, ImageInfo, Manifest, Slot, TrustRoot};
use molt_release::client::FetchedAgent;

use crate::error::DeviceError;

/// The image name agent manifests carry (molt-core's `Manifest::name`).
pub const AGENT_IMAGE_NAME: &str = "agent";

/// What happened to the agent image during an install.
#[derive(Debug, Clone, Copy)]
pub struct AgentInstall {
    /// The boot that ran the new image on trial; `None` if the image was
    /// found already committed (say, after a power cut that came after the
    /// commit).
    pub trial_boot: Option<BootDecision>,
    /// The committed image.
    pub committed: ImageInfo,
    /// The slot it is committed in.
    pub slot: Slot,
}

/// Verifies the agent's signed manifest under the image keys and checks it
/// names the agent, this hardware class and the release set's version.
pub fn verify_agent_manifest(
    trust: &TrustRoot,
    hardware_class: &str,
    agent: &FetchedAgent,
) -> Result<Manifest, DeviceError> {
    let manifest = trust.verify(&agent.manifest)?;
    let mismatch = |field, expected: &str, found: &str| DeviceError::AgentMismatch {
        field,
        expected: expected.to_owned(),
        found: found.to_owned(),
    };
    if manifest.name != AGENT_IMAGE_NAME {
        return Err(mismatch("name", AGENT_IMAGE_NAME, &manifest.name));
    }
    if manifest.hardware_class != hardware_class {
        return Err(mismatch("hardware_class", hardware_class, &manifest.hardware_class));
    }
    let version = manifest.version.to_string();
    if version != agent.version {
        return Err(mismatch("version", &agent.version, &version));
    }
    Ok(manifest)
}

/// Installs `agent`, whose verified manifest is `manifest`, into `engine`'s
/// slots and commits it, picking up wherever an interrupted install left
/// the slots:
///
/// - the image already committed: nothing to do;
/// - the image on trial: boot it (unless `booted` already is that boot),
///   health-check and commit;
/// - anything else: roll back a foreign trial, stage into the inactive slot
///   (molt-release checks the release set's length and digest before the
///   first byte), mark it for trial, boot it, health-check and commit.
///
/// After a storage error the engine is poisoned; reopen it.
pub fn install_agent<B: Backend>(
    engine: &mut Engine<B>,
    booted: Option<BootDecision>,
    agent: &FetchedAgent,
    manifest: &Manifest,
    health: &Health,
) -> Result<AgentInstall, DeviceError> {
    let record = *engine.record();
    let holds_image =
        |slot: Slot| record.slots[slot.index()].ready().map(|image| image.sha256) == Some(manifest.sha256);
    if record.trial.is_none()
        && let Some(active) = record.active
        && holds_image(active)
        && let Some(committed) = record.slots[active.index()].ready().copied()
    {
        return Ok(AgentInstall {
            trial_boot: None,
            committed,
            slot: active,
        });
    }
    let decision = match record.trial {
        Some(trial) if holds_image(trial) => match booted {
            Some(decision) if decision.slot == trial && decision.reason == BootReason::Trial => decision,
            _ => engine.boot()?,
        },
        trial => {
            if trial.is_some() {
                engine.rollback()?;
            }
            molt_release::client::stage_agent(engine, agent)?;
            engine.mark_trial()?;
            engine.boot()?
        }
    };
    let committed = commit_trial(engine, &decision, Some(manifest.sha256), health)?;
    Ok(AgentInstall {
        trial_boot: Some(decision),
        committed,
        slot: decision.slot,
    })
}

/// Boots the slots as a device does at power-on; a trial that boots is
/// health-checked and committed. Returns the decision (`None` before the
/// first agent install: nothing to boot) and the image committed, if any.
pub fn boot<B: Backend>(
    engine: &mut Engine<B>,
    health: &Health,
) -> Result<(Option<BootDecision>, Option<ImageInfo>), DeviceError> {
    let record = *engine.record();
    if record.active.is_none() && record.trial.is_none() {
        return Ok((None, None));
    }
    let decision = engine.boot()?;
    if decision.reason != BootReason::Trial {
        return Ok((Some(decision), None));
    }
    let committed = commit_trial(engine, &decision, None, health)?;
    Ok((Some(decision), Some(committed)))
}

/// The running agent's health as it judged it before committing a trial:
/// `Err` says what is wrong. [`Device`](crate::Device) probes every policy
/// it serves; a tool that only moves slots passes `Ok(())`.
pub type Health = Result<(), String>;

/// The health check of a booted trial, then commit; a failed check rolls
/// the trial back.
fn commit_trial<B: Backend>(
    engine: &mut Engine<B>,
    decision: &BootDecision,
    expected_sha256: Option<[u8; 32]>,
    health: &Health,
) -> Result<ImageInfo, DeviceError> {
    let failure = if decision.reason != BootReason::Trial {
        Some(format!("the boot went to the committed slot ({:?})", decision.reason))
    } else if expected_sha256.is_some_and(|sha256| sha256 != decision.image.sha256) {
        Some("the booted image is not the one the release set names".to_owned())
    } else if let Err(reason) = health {
        Some(reason.clone())
    } else {
        // `boot` verified the image's length and sha256 against its signed
        // manifest before returning, and the caller's probe passed.
        None
    };
    if let Some(reason) = failure {
        if decision.reason == BootReason::Trial {
            engine.rollback()?;
        }
        return Err(DeviceError::HealthCheck {
            version: decision.image.version.to_string(),
            reason,
        });
    }
    Ok(engine.commit()?)
}
