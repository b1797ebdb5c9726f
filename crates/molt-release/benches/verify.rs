//! Verify time for a release set with 50 policy modules: TUF metadata and
//! molt's release-set rules (`check`), and that plus downloading and
//! verifying every part from a local directory (`check + fetch`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use molt_release::client::{Client, ClientLimits, Installed};
use molt_release::download::{NoProgress, Source};
use molt_release::keys::{KeyDir, KeyPlan};
use molt_release::repo::{AgentInput, Expiry, PolicyInput, ReleaseInput, Repo};
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
