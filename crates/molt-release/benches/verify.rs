//! Verify time for a release set with 50 policy modules: TUF metadata and
//! molt's release-set rules (`check`), and that plus downloading and
//! verifying every part from a local directory (`check + fetch`).
//!
//! Baseline, measured in the same run on the same repository: the `check`
//! the device ran before issue 14, on tough 0.24's `RepositoryLoader` (a
//! fresh datastore holding the trusted root, `load`, the newest release set
//! downloaded and parsed, every part looked up in the loaded targets).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use molt_release::client::{Client, ClientLimits, Installed};
use molt_release::download::{self, DownloadLimits, Expected, NoProgress, Source};
use molt_release::keys::{KeyDir, KeyPlan};
use molt_release::release_set::{self, ReleaseSet};
use molt_release::repo::{AgentInput, Expiry, PolicyInput, ReleaseInput, Repo, consistent_target_path};
use tokio_util::sync::CancellationToken;

const POLICIES: usize = 50;
const POLICY_BYTES: usize = 64 * 1024;
const AGENT_BYTES: usize = 1 << 20;
const CLASS: &str = "gw-x86";

struct Setup {
    _tmp: tempfile::TempDir,
    client: Client,
    source: Source,
    fetch_root: std::path::PathBuf,
    root_json: Vec<u8>,
    public: std::path::PathBuf,
    tough_scratch: std::path::PathBuf,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = KeyDir::init(&tmp.path().join("keys"), &KeyPlan::default())
        .await
        .expect("keys");
    let repo = Repo::open_or_create(&tmp.path().join("repo"), &keys)
        .await
        .expect("repo");
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    let agent = inputs.join("agent.img");
    std::fs::write(&agent, vec![0x5a; AGENT_BYTES]).expect("agent");
    let mut policies = Vec::new();
    for idx in 0..POLICIES {
        let path = inputs.join(format!("p{idx}.wasm"));
        let mut bytes = vec![idx as u8; POLICY_BYTES];
        bytes[..8].copy_from_slice(&(idx as u64).to_le_bytes());
        std::fs::write(&path, bytes).expect("policy");
        policies.push(PolicyInput {
            name: format!("policy-{idx}"),
            version: "1.0.0".to_owned(),
            path,
            config: Default::default(),
        });
    }
    let input = ReleaseInput {
        version: 1,
        security_counter: 1,
        min_agent_version: "1.0.0".to_owned(),
        agents: vec![AgentInput {
            hardware_class: CLASS.to_owned(),
            version: "1.0.0".to_owned(),
            path: agent,
        }],
        policies,
    };
    repo.create_release(&input).await.expect("create");
    repo.sign_release(1, &keys).await.expect("sign");
    repo.publish(1, &keys, &Expiry::default()).await.expect("publish");
    let trusted = tmp.path().join("trusted");
    let client = Client::init(
        &trusted,
        &keys.root_json().expect("root"),
        CLASS,
        ClientLimits::default(),
    )
    .expect("init");
    Setup {
        source: Source::Dir(repo.public_dir()),
        fetch_root: tmp.path().join("fetch"),
        root_json: keys.root_json().expect("root"),
        public: repo.public_dir(),
        tough_scratch: tmp.path().join("tough-scratch"),
        _tmp: tmp,
        client,
    }
}

fn installed() -> Installed {
    Installed {
        release_version: 0,
        security_counter: 0,
        agent_version: "1.0.0".to_owned(),
    }
}

/// The pre-issue-14 `check` on tough's loader: verify the metadata in a
/// fresh scratch datastore, download the newest release set, and check every
/// part against the loaded targets. Returns the number of policies.
async fn tough_check(setup: &Setup) -> usize {
    let scratch = &setup.tough_scratch;
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).expect("clear scratch");
    }
    std::fs::create_dir_all(scratch).expect("scratch");
    std::fs::write(scratch.join("root.json"), &setup.root_json).expect("root");
    let dir_url = |sub: &str| url::Url::from_directory_path(setup.public.join(sub)).expect("absolute");
    let repository = tough::RepositoryLoader::new(&setup.root_json, dir_url("metadata"), dir_url("targets"))
        .transport(tough::FilesystemTransport)
        .datastore(scratch)
        .expiration_enforcement(tough::ExpirationEnforcement::Safe)
        .load()
        .await
        .expect("tough load");
    let targets = &repository.targets().signed.targets;
    let (name, target) = targets
        .iter()
        .filter_map(|(name, target)| Some((release_set::version_of_target(name.raw())?, name, target)))
        .max_by_key(|(version, _, _)| *version)
        .map(|(_, name, target)| (name, target))
        .expect("a release set");
    let sha256: [u8; 32] = target.hashes.sha256.as_ref().try_into().expect("sha256");
    let set_path = scratch.join("release-set.json");
    download::download_target(
        &Source::Dir(setup.public.clone()),
        &consistent_target_path(name.raw(), &hex::encode(sha256)),
        &set_path,
        &Expected::sha256(target.length, sha256),
        &DownloadLimits::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .expect("release set");
    let set = ReleaseSet::from_json(&std::fs::read(&set_path).expect("read set")).expect("parse set");
    for (_, part) in set.parts() {
        let listed = &targets[&tough::TargetName::new(part.target.as_str()).expect("name")];
        assert_eq!(listed.length, part.length);
        assert_eq!(
            Some(listed.hashes.sha256.as_ref()),
            part.sha256_bytes().as_ref().map(|d| d.as_slice())
        );
    }
    set.policies.len()
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = runtime.block_on(setup());
    let mut group = c.benchmark_group("verify_50_policies");
    group.sample_size(20);
    group.bench_function("check", |b| {
        b.iter(|| {
            let verified = runtime
                .block_on(setup.client.check(&setup.source, &installed()))
                .expect("check")
                .expect("new release");
            black_box(verified.set.policies.len())
        })
    });
    group.bench_function("check_tough_loader", |b| {
        b.iter(|| black_box(runtime.block_on(tough_check(&setup))))
    });
    let mut run = 0u64;
    group.bench_function("check_and_fetch", |b| {
        b.iter_batched(
            || {
                run += 1;
                setup.fetch_root.join(run.to_string())
            },
            |dir| {
                let fetched = runtime.block_on(async {
                    let verified = setup
                        .client
                        .check(&setup.source, &installed())
                        .await
                        .expect("check")
                        .expect("new release");
                    setup
                        .client
                        .fetch(&verified, &dir, &NoProgress, &CancellationToken::new())
                        .await
                        .expect("fetch")
                });
                black_box(fetched.policies.len())
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
