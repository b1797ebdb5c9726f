//! A repository, its keys and one device, for the flow and attack tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use molt_core::{Config, Engine, FileBackend, FileLayout, FsStore, ImageInfo};
use molt_release::client::{Client, ClientLimits, Installed, UpdateError, stage_agent};
use molt_release::download::{NoProgress, Source};
use molt_release::keys::{KeyDir, KeyPlan, Role, Signer};
use molt_release::metadata;
use molt_release::release_set::ReleaseSet;
use molt_release::repo::{AgentInput, Expiry, PolicyInput, ReleaseInput, Repo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tough::schema::{Role as TufRole, Signed};

pub(crate) const CLASS: &str = "gw-x86";

pub(crate) struct World {
    pub(crate) tmp: TempDir,
    pub(crate) keys: KeyDir,
    pub(crate) repo: Repo,
    pub(crate) installed: Installed,
}

/// Every file under `dir` (symlinks as their target), for byte-identity
/// checks.
pub(crate) fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("read_dir entry");
            let path = entry.path();
            let name = path.strip_prefix(dir).expect("under dir").display().to_string();
            let file_type = entry.file_type().expect("file type");
            if file_type.is_symlink() {
                let target = std::fs::read_link(&path).expect("read_link");
                files.insert(format!("{name} ->"), target.display().to_string().into_bytes());
            } else if file_type.is_dir() {
                files.insert(format!("{name}/"), Vec::new());
                pending.push(path);
            } else {
                files.insert(name, std::fs::read(&path).expect("read file"));
            }
        }
    }
    files
}

pub(crate) fn test_limits() -> ClientLimits {
    let mut limits = ClientLimits::default();
    limits.download.retries_max = 1;
    limits.download.backoff_initial = std::time::Duration::from_millis(10);
    limits.download.backoff_max = std::time::Duration::from_millis(20);
    limits
}

impl World {
    /// Keys, a repository with release 1 (agent 1.0.0 for `CLASS`, two
    /// policies), and a device that installed and committed it.
    pub(crate) async fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let keys = KeyDir::init(&tmp.path().join("keys"), &KeyPlan::default())
            .await
            .expect("keys init");
        let repo = Repo::open_or_create(&tmp.path().join("repo"), &keys)
            .await
            .expect("repo create");
        let root = keys.root_json().expect("root json");
        Client::init(&tmp.path().join("device/trusted"), &root, CLASS, test_limits()).expect("client init");
        let mut world = World {
            tmp,
            keys,
            repo,
            installed: Installed {
                release_version: 0,
                security_counter: 0,
                agent_version: "1.0.0".to_owned(),
            },
        };
        world
            .release(1, 1, "1.0.0", &[("threshold", "1.0.0"), ("deadband", "1.0.0")])
            .await;
        let info = world
            .update(&world.source(), CLASS, test_limits(), &world.installed.clone())
            .await
            .expect("first update")
            .expect("release 1 is new");
        let mut engine = world.engine(CLASS);
        engine.mark_trial().expect("trial");
        engine.boot().expect("boot");
        assert_eq!(engine.commit().expect("commit"), info);
        world.installed.release_version = 1;
        world.installed.security_counter = 1;
        world
    }

    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.tmp.path().join(relative)
    }

    pub(crate) fn source(&self) -> Source {
        Source::Dir(self.repo.public_dir())
    }

    pub(crate) fn trusted(&self) -> PathBuf {
        self.path("device/trusted")
    }

    pub(crate) fn meta(&self) -> PathBuf {
        self.repo.public_dir().join("metadata")
    }

    /// The device's trusted metadata and slots.
    pub(crate) fn device_state(&self) -> BTreeMap<String, Vec<u8>> {
        let mut state = tree(&self.trusted());
        for (name, bytes) in tree(&self.path("device/slots")) {
            state.insert(format!("slots/{name}"), bytes);
        }
        state
    }

    pub(crate) fn engine(&self, class: &str) -> Engine<FileBackend<FsStore>> {
        let store = FsStore::open(self.path("device/slots")).expect("slot store");
        let config = Config::new("agent", class, self.keys.image_trust_root().expect("image trust"));
        Engine::open(FileBackend::new(store, FileLayout::default()), config)
            .expect("engine open")
            .0
    }

    /// Writes the inputs of a release and creates, signs and publishes it.
    pub(crate) async fn release(
        &self,
        version: u64,
        counter: u64,
        agent: &str,
        policies: &[(&str, &str)],
    ) -> ReleaseSet {
        let inputs = self.path(&format!("inputs/{version}"));
        std::fs::create_dir_all(&inputs).expect("inputs dir");
        let agent_path = inputs.join("agent.img");
        std::fs::write(&agent_path, format!("agent image {agent} ").repeat(3000)).expect("agent file");
        let mut policy_inputs = Vec::new();
        for (name, policy_version) in policies {
            let path = inputs.join(format!("{name}.wasm"));
            std::fs::write(&path, format!("\0asm {name} {policy_version} ").repeat(500)).expect("policy file");
            policy_inputs.push(PolicyInput {
                name: (*name).to_owned(),
                version: (*policy_version).to_owned(),
                path,
                config: Default::default(),
            });
        }
        let input = ReleaseInput {
            version,
            security_counter: counter,
            min_agent_version: "1.0.0".to_owned(),
            agents: vec![AgentInput {
                hardware_class: CLASS.to_owned(),
                version: agent.to_owned(),
                path: agent_path,
            }],
            policies: policy_inputs,
        };
        self.repo.create_release(&input).await.expect("create release");
        self.repo.sign_release(version, &self.keys).await.expect("sign release");
        self.repo
            .publish(version, &self.keys, &Expiry::default())
            .await
            .expect("publish");
        self.repo.draft(version).expect("draft")
    }

    /// One device update: check, fetch, stage the agent, accept.
    pub(crate) async fn update(
        &self,
        source: &Source,
        class: &str,
        limits: ClientLimits,
        installed: &Installed,
    ) -> Result<Option<ImageInfo>, UpdateError> {
        let client = Client::open(&self.trusted(), class, limits)?;
        let Some(verified) = client.check(source, installed).await? else {
            return Ok(None);
        };
        let fetched = client
            .fetch(
                &verified,
                &self.path("device/download"),
                &NoProgress,
                &CancellationToken::new(),
            )
            .await?;
        let mut engine = self.engine(class);
        let agent = fetched.agent.as_ref().expect("the set has an agent for this class");
        let info = match stage_agent(&mut engine, agent) {
            Ok(info) => info,
            Err(error) => {
                client.discard()?;
                return Err(error);
            }
        };
        client.accept(&fetched)?;
        Ok(Some(info))
    }

    pub(crate) fn signers(&self, role: Role) -> Vec<Signer> {
        self.keys.signers(role).expect("signers")
    }

    pub(crate) fn load<T: DeserializeOwned>(&self, name: &str) -> Signed<T> {
        let bytes = std::fs::read(self.meta().join(name)).expect("read metadata");
        metadata::decode(name, &bytes).expect("decode metadata")
    }

    /// Signs `role` with `signers` and writes it as `name`; returns the bytes.
    pub(crate) fn write_signed<T: TufRole + Serialize>(&self, name: &str, role: T, signers: &[Signer]) -> Vec<u8> {
        let refs: Vec<&Signer> = signers.iter().collect();
        let bytes = metadata::encode(&metadata::sign(role, &refs).expect("sign")).expect("encode");
        std::fs::write(self.meta().join(name), &bytes).expect("write metadata");
        bytes
    }
}
