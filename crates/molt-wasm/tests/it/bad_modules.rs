//! The bad-module suite: every way a policy module can be broken or
//! hostile, each asserting the specific typed error, that the host
//! survives, and that a good policy loaded before it keeps serving.

use molt_wasm::{
    Allocator, CallError, Error, Limits, PolicyError, PolicyInstance, Runtime, RuntimeConfig, StateError, TrapCode,
};

use crate::fixtures::{Core, component, component_with_imports, echo, echoed, readings};

/// How a case failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Compiling or instantiating.
    Load(Error),
    /// A call into the instance.
    Call(CallError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Load(error) => write!(f, "load: {error}"),
            Failure::Call(error) => write!(f, "call: {error}"),
        }
    }
}

/// One bad module and the limits it runs under.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) wasm: Vec<u8>,
    pub(crate) config: &'static [(&'static str, &'static str)],
    pub(crate) configure: Box<dyn Fn(&mut RuntimeConfig)>,
}

/// Compiles, instantiates, inits, processes a batch and snapshots, stopping
/// at the first failure. After a fatal call failure, checks that the
/// instance refuses to be entered again; after a non-fatal one, that it
/// still can be.
fn run(runtime: &Runtime, case: &Case) -> Result<(), Failure> {
    let module = runtime.compile(&case.wasm).map_err(Failure::Load)?;
    let mut instance = module.instantiate().map_err(Failure::Load)?;
    let config: Vec<(String, String)> = case
        .config
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let result = instance
        .init(&config)
        .and_then(|()| instance.process(&readings(100, 4)))
        .and_then(|_| instance.snapshot());
    let state = match result {
        Ok(state) => state,
        Err(error) => {
            check_instance_after(&mut instance, &error);
            return Err(Failure::Call(error));
        }
    };
    // A successor continues from the snapshot.
    let mut successor = module.instantiate().map_err(Failure::Load)?;
    let result = successor
        .restore(&config, &state)
        .and_then(|()| successor.process(&readings(104, 4)))
        .map(|_| ());
    if let Err(error) = &result {
        check_instance_after(&mut successor, error);
    }
    result.map_err(Failure::Call)
}

fn check_instance_after(instance: &mut PolicyInstance, error: &CallError) {
    if let CallError::BatchTooLarge { .. } = error {
        // Refused before the guest was entered: nothing to check.
        assert!(!instance.is_poisoned());
        return;
    }
    if error.is_fatal() {
        assert!(instance.is_poisoned(), "a fatal {error:?} must poison the instance");
        assert_eq!(instance.process(&readings(200, 1)), Err(CallError::Poisoned));
    } else {
        assert!(
            !instance.is_poisoned(),
            "a non-fatal {error:?} must leave the instance usable"
        );
        // The instance can still be entered: whatever the second call
        // returns, it is not a refusal to enter.
        assert_ne!(instance.process(&readings(200, 1)), Err(CallError::Poisoned));
    }
}

/// Runs `case` next to a good policy in the same runtime and checks that
/// it fails as `expect` says, with a message containing `message_names`
/// (the limit or the culprit), and that the good policy keeps serving.
pub(crate) fn check(case: Case, expect: impl Fn(&Failure) -> bool, message_names: &str) {
    let mut config = RuntimeConfig::default();
    (case.configure)(&mut config);
    let runtime = Runtime::new(&config).unwrap();

    let good_module = runtime.compile(&echo()).unwrap();
    let mut good = good_module.instantiate().unwrap();
    good.init(&[]).unwrap();
    let before = readings(1, 2);
    assert_eq!(good.process(&before).unwrap(), echoed(&before));

    let failure = match run(&runtime, &case) {
        Ok(()) => panic!("case {:?}: expected a failure, got success", case.name),
        Err(failure) => failure,
    };
    eprintln!("case {:?}: {failure}", case.name);
    assert!(expect(&failure), "case {:?}: unexpected failure {failure:?}", case.name);
    let message = failure.to_string();
    assert!(
        message.contains(message_names),
        "case {:?}: message {message:?} does not name {message_names:?}",
        case.name
    );

    // The host survived; the good instance and new instances still serve.
    let after = readings(5, 2);
    assert_eq!(good.process(&after).unwrap(), echoed(&after), "case {:?}", case.name);
    let mut fresh = good_module.instantiate().unwrap();
    fresh.init(&[]).unwrap();
    assert_eq!(fresh.process(&after).unwrap(), echoed(&after), "case {:?}", case.name);
}

fn defaults(_: &mut Limits) {}

fn wat_case(name: &'static str, core: Core<'_>, limits: fn(&mut Limits)) -> Case {
    Case {
        name,
        wasm: core.component(),
        config: &[],
        configure: with_limits(limits),
    }
}

fn with_limits(limits: fn(&mut Limits)) -> Box<dyn Fn(&mut RuntimeConfig)> {
    Box::new(move |config| limits(&mut config.limits))
}

fn process_core(process: &str) -> Core<'_> {
    Core {
        process,
        ..Core::default()
    }
}

const LOOP_FOREVER: &str = "(loop $spin (br $spin)) (unreachable)";

#[test]
fn infinite_loop_runs_out_of_fuel() {
    check(
        wat_case("infinite loop", process_core(LOOP_FOREVER), |limits| {
            limits.fuel_per_batch = 10_000_000;
        }),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::FuelExhausted { limit: 10_000_000, .. })
            )
        },
        "fuel_per_batch=10000000",
    );
}

#[test]
fn infinite_loop_with_unbounded_fuel_hits_the_deadline() {
    check(
        wat_case("infinite loop, unbounded fuel", process_core(LOOP_FOREVER), |limits| {
            limits.fuel_per_batch = u64::MAX;
            limits.batch_deadline_ms = 100;
        }),
        |failure| matches!(failure, Failure::Call(CallError::DeadlineExceeded { limit_ms: 100 })),
        "batch_deadline_ms=100",
    );
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() {
    let bomb = r#"
        (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        (unreachable)"#;
    check(
        wat_case("memory.grow bomb", process_core(bomb), |limits| {
            limits.memory_bytes_max = 4 << 20;
        }),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::MemoryLimit { limit_bytes: 4194304, requested_bytes })
                    if *requested_bytes > 4194304
            )
        },
        "memory_bytes_max=4194304",
    );
}

#[test]
fn table_bomb_hits_the_table_limit() {
    let bomb = r#"
        (loop $grow
          (br_if $grow
            (i32.ne (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1))))
        (unreachable)"#;
    check(
        wat_case(
            "table bomb",
            Core {
                process: bomb,
                extra: "(table $t 1 funcref)",
                ..Core::default()
            },
            |limits| limits.table_elements_max = 5_000,
        ),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::TableLimit { limit_elements: 5_000, requested_elements })
                    if *requested_elements > 5_000
            )
        },
        "table_elements_max=5000",
    );
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    check(
        wat_case(
            "unbounded recursion",
            Core {
                process: "(call $deep (i32.const 0))",
                extra: r#"(func $deep (param i32) (result i32)
                            (call $deep (i32.add (local.get 0) (i32.const 1))))"#,
                ..Core::default()
            },
            |limits| limits.wasm_stack_bytes_max = 256 << 10,
        ),
        |failure| matches!(failure, Failure::Call(CallError::StackOverflow { limit_bytes: 262144 })),
        "wasm_stack_bytes_max=262144",
    );
}

#[test]
fn trap_carries_a_named_backtrace() {
    check(
        wat_case(
            "trap",
            Core {
                process: "(call $fail)",
                extra: "(func $fail (result i32) (unreachable))",
                ..Core::default()
            },
            defaults,
        ),
        |failure| match failure {
            Failure::Call(CallError::Trap {
                code: TrapCode::Unreachable,
                backtrace,
            }) => {
                let names: Vec<_> = backtrace
                    .frames
                    .iter()
                    .filter_map(|frame| frame.function.as_deref())
                    .collect();
                names == ["fail", "process"]
            }
            _ => false,
        },
        "fail",
    );
}

#[test]
fn trap_in_start_function_fails_instantiation() {
    check(
        wat_case(
            "trap in start function",
            Core {
                extra: "(func $boom (unreachable)) (start $boom)",
                ..Core::default()
            },
            defaults,
        ),
        |failure| {
            matches!(
                failure,
                Failure::Load(Error::Instantiate(CallError::Trap {
                    code: TrapCode::Unreachable,
                    ..
                }))
            )
        },
        "instantiation",
    );
}

#[test]
fn loop_in_start_function_runs_out_of_fuel() {
    check(
        wat_case(
            "loop in start function",
            Core {
                extra: "(func $spin (loop $l (br $l))) (start $spin)",
                ..Core::default()
            },
            |limits| limits.fuel_per_batch = 1_000_000,
        ),
        |failure| {
            matches!(
                failure,
                Failure::Load(Error::Instantiate(CallError::FuelExhausted { limit: 1_000_000, .. }))
            )
        },
        "fuel_per_batch=1000000",
    );
}

/// The pool sizes its slots from the limits, so a module that needs a
/// bigger slot is refused when it is compiled.
#[test]
fn initial_memory_over_the_limit_is_refused_by_the_pool() {
    check(
        wat_case(
            "initial memory over the limit, pooling",
            Core {
                memory_pages: 100,
                ..Core::default()
            },
            |limits| limits.memory_bytes_max = 4 << 20,
        ),
        |failure| matches!(failure, Failure::Load(Error::OverPoolLimits { .. })),
        "memory_bytes_max",
    );
}

/// Without a pool, the store's limiter refuses the memory at instantiation.
#[test]
fn initial_memory_over_the_limit_fails_instantiation_on_demand() {
    check(
        Case {
            name: "initial memory over the limit, on demand",
            wasm: Core {
                memory_pages: 100,
                ..Core::default()
            }
            .component(),
            config: &[],
            configure: Box::new(|config| {
                config.allocator = Allocator::OnDemand;
                config.limits.memory_bytes_max = 4 << 20;
            }),
        },
        |failure| {
            matches!(
                failure,
                Failure::Load(Error::Instantiate(CallError::MemoryLimit {
                    limit_bytes: 4194304,
                    ..
                }))
            )
        },
        "memory_bytes_max=4194304",
    );
}

#[test]
fn oversized_module_is_refused_unread() {
    let limit_bytes = echo().len() + 100;
    let padding = "x".repeat(4_000);
    let extra = format!(r#"(data (i32.const 8192) "{padding}")"#);
    let wasm = Core {
        extra: &extra,
        ..Core::default()
    }
    .component();
    check(
        Case {
            name: "oversized module",
            wasm,
            config: &[],
            configure: Box::new(move |config| config.limits.module_bytes_max = limit_bytes),
        },
        |failure| matches!(failure, Failure::Load(Error::ModuleTooLarge { .. })),
        "module_bytes_max=",
    );
}

#[test]
fn truncated_module_is_invalid() {
    let mut wasm = echo();
    wasm.truncate(wasm.len() / 2);
    check(
        Case {
            name: "truncated module",
            wasm,
            config: &[],
            configure: with_limits(defaults),
        },
        |failure| matches!(failure, Failure::Load(Error::InvalidModule { .. })),
        "invalid policy module",
    );
}

#[test]
fn garbage_bytes_are_invalid() {
    for (name, wasm) in [
        ("empty", Vec::new()),
        ("not wasm", b"#!/bin/sh\nrm -rf /\n".to_vec()),
        ("wasm magic then garbage", b"\0asm\x0d\0\x01\0\xff\xff\xff\xff".to_vec()),
        ("core module, not a component", wat::parse_str("(module)").unwrap()),
    ] {
        check(
            Case {
                name,
                wasm,
                config: &[],
                configure: with_limits(defaults),
            },
            |failure| matches!(failure, Failure::Load(Error::InvalidModule { .. })),
            "invalid policy module",
        );
    }
}

#[test]
fn unknown_import_is_named() {
    let wasm = component_with_imports(
        r#"(import "molt:evil/net@0.1.0" (instance (export "connect" (func))))"#,
        &Core::default().text(),
    );
    check(
        Case {
            name: "unknown import",
            wasm,
            config: &[],
            configure: with_limits(defaults),
        },
        |failure| {
            matches!(failure, Failure::Load(Error::UnknownImport { name })
                if name == "molt:evil/net@0.1.0")
        },
        "molt:evil/net@0.1.0",
    );
}

#[test]
fn missing_export_is_a_contract_mismatch() {
    let wasm = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "snapshot") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    check(
        Case {
            name: "missing exports",
            wasm,
            config: &[],
            configure: with_limits(defaults),
        },
        |failure| matches!(failure, Failure::Load(Error::ContractMismatch { .. })),
        "molt:policy",
    );
}

#[test]
fn list_pointer_out_of_range_is_an_abi_error() {
    check(
        wat_case(
            "list pointer out of range",
            process_core(&crate::fixtures::return_list(0x7fff_0000, 4)),
            defaults,
        ),
        |failure| matches!(failure, Failure::Call(CallError::Abi { .. })),
        "out of bounds",
    );
}

#[test]
fn list_length_out_of_range_is_an_abi_error() {
    check(
        wat_case(
            "list length out of range",
            process_core(&crate::fixtures::return_list(1024, 0x1000_0000)),
            defaults,
        ),
        |failure| matches!(failure, Failure::Call(CallError::Abi { .. })),
        "out of bounds",
    );
}

/// One telemetry action whose metric string points outside memory.
const STRING_OUT_OF_RANGE: &str = r#"
    (i32.store8 (i32.const 2048) (i32.const 0))
    (i32.store offset=24 (i32.const 2048) (i32.const 0xffffff00))
    (i32.store offset=28 (i32.const 2048) (i32.const 16))
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.store offset=4 (i32.const 48) (i32.const 2048))
    (i32.store offset=8 (i32.const 48) (i32.const 1))
    (i32.const 48)"#;

#[test]
fn string_pointer_out_of_range_is_an_abi_error() {
    check(
        wat_case(
            "string pointer out of range",
            process_core(STRING_OUT_OF_RANGE),
            defaults,
        ),
        |failure| matches!(failure, Failure::Call(CallError::Abi { .. })),
        "out of bounds",
    );
}

#[test]
fn result_pointer_out_of_range_is_an_abi_error() {
    check(
        wat_case("result pointer out of range", process_core("(i32.const -8)"), defaults),
        |failure| matches!(failure, Failure::Call(CallError::Abi { .. })),
        "out of bounds",
    );
}

#[test]
fn invalid_variant_tag_is_an_abi_error() {
    let body = r#"
        (i32.store8 (i32.const 2048) (i32.const 9))
        (i32.store8 (i32.const 48) (i32.const 0))
        (i32.store offset=4 (i32.const 48) (i32.const 2048))
        (i32.store offset=8 (i32.const 48) (i32.const 1))
        (i32.const 48)"#;
    check(
        wat_case("invalid variant tag", process_core(body), defaults),
        |failure| matches!(failure, Failure::Call(CallError::Abi { .. })),
        "discriminant",
    );
}

#[test]
fn too_many_actions_are_refused() {
    // 3,000 zeroed actions: each a telemetry with an empty metric.
    check(
        wat_case(
            "too many actions",
            Core {
                process: &crate::fixtures::return_list(65536, 3_000),
                memory_pages: 4,
                ..Core::default()
            },
            |limits| {
                limits.actions_per_batch_max = 100;
            },
        ),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::TooManyActions {
                    count: 3_000,
                    limit: 100
                })
            )
        },
        "actions_per_batch_max=100",
    );
}

#[test]
fn huge_output_is_refused_before_it_is_copied() {
    check(
        wat_case(
            "huge output",
            Core {
                process: &crate::fixtures::return_list(65536, 3_000),
                memory_pages: 4,
                ..Core::default()
            },
            |limits| {
                limits.output_bytes_max = 16 << 10;
            },
        ),
        |failure| matches!(failure, Failure::Call(CallError::OutputTooLarge { limit_bytes: 16384 })),
        "output_bytes_max=16384",
    );
}

/// 1,000 actions whose metrics all point at the same 64 KiB string of
/// zeros: 64 MiB of text on the host from 104 KiB of guest memory.
const AMPLIFIED_STRING: &str = r#"
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const 1000)))
        (local.set $a (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 40))))
        (i32.store8 (local.get $a) (i32.const 0))
        (i32.store offset=24 (local.get $a) (i32.const 131072))
        (i32.store offset=28 (local.get $a) (i32.const 65536))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.store offset=4 (i32.const 48) (i32.const 65536))
    (i32.store offset=8 (i32.const 48) (i32.const 1000))
    (i32.const 48)"#;

#[test]
fn one_string_shared_by_many_actions_cannot_amplify_host_memory() {
    check(
        wat_case(
            "amplified string",
            Core {
                process: AMPLIFIED_STRING,
                memory_pages: 3,
                ..Core::default()
            },
            defaults,
        ),
        |failure| matches!(failure, Failure::Call(CallError::OutputTooLarge { .. })),
        "output_bytes_max=",
    );
}

#[test]
fn policy_error_is_returned_as_a_value() {
    let body = r#"
        (i32.store8 (i32.const 48) (i32.const 1))
        (i32.store8 offset=4 (i32.const 48) (i32.const 2))
        (i32.store offset=8 (i32.const 48) (i32.const 16))
        (i32.store offset=12 (i32.const 48) (i32.const 4))
        (i32.const 48)"#;
    check(
        wat_case("policy error", process_core(body), defaults),
        |failure| {
            matches!(failure, Failure::Call(CallError::GuestError(PolicyError::Failed(message)))
                if message == "echo")
        },
        "echo",
    );
}

#[test]
fn oversized_batch_is_refused_without_calling_the_guest() {
    check(
        wat_case("oversized batch", process_core(LOOP_FOREVER), |limits| {
            limits.batch_readings_max = 2;
        }),
        |failure| matches!(failure, Failure::Call(CallError::BatchTooLarge { count: 4, limit: 2 })),
        "batch_readings_max=2",
    );
}

#[test]
fn non_canonical_snapshot_is_refused() {
    // Two empty maps back to back: not one DAG-CBOR value.
    let snapshot = r#"
        (i32.store (i32.const 0) (i32.const 24))
        (i32.store (i32.const 4) (i32.const 2))
        (i32.const 0)"#;
    check(
        wat_case(
            "two values as state",
            Core {
                snapshot,
                ..Core::default()
            },
            defaults,
        ),
        |failure| matches!(failure, Failure::Call(CallError::State(StateError::NotDagCbor { .. }))),
        "not DAG-CBOR",
    );
}

#[test]
fn oversized_snapshot_is_refused() {
    let snapshot = r#"
        (i32.store (i32.const 0) (i32.const 0))
        (i32.store (i32.const 4) (i32.const 4096))
        (i32.const 0)"#;
    check(
        wat_case(
            "oversized snapshot",
            Core {
                snapshot,
                ..Core::default()
            },
            |limits| {
                limits.state_bytes_max = 1_000;
            },
        ),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::State(StateError::TooLarge {
                    size_bytes: 4096,
                    limit_bytes: 1_000
                }))
            )
        },
        "state_bytes_max=1000",
    );
}

#[test]
fn compilation_past_the_deadline_is_abandoned() {
    let functions: String = (0..2_000)
        .map(|func_idx| format!("(func $f{func_idx} (result i32) (i32.const {func_idx}))\n"))
        .collect();
    let wasm = Core {
        extra: &functions,
        ..Core::default()
    }
    .component();
    let mut config = RuntimeConfig::default();
    config.limits.compile_deadline_ms = 0;
    let runtime = Runtime::new(&config).unwrap();
    let refused = runtime.compile(&wasm).unwrap_err();
    assert!(matches!(refused, Error::CompileDeadline { limit_ms: 0 }), "{refused:?}");
    assert!(refused.to_string().contains("compile_deadline_ms=0"), "{refused}");
    // The same module compiles under the default deadline.
    Runtime::new(&RuntimeConfig::default()).unwrap().compile(&wasm).unwrap();
}

#[test]
fn state_over_the_limit_is_not_restored() {
    let mut config = RuntimeConfig::default();
    config.limits.state_bytes_max = 8;
    let runtime = Runtime::new(&config).unwrap();
    let mut instance = runtime.compile(&echo()).unwrap().instantiate().unwrap();
    // A 16-byte byte string: 17 bytes of valid DAG-CBOR.
    let mut bytes = vec![0x50];
    bytes.extend([0; 16]);
    let state = molt_wasm::State::from_guest(bytes, 1 << 10).unwrap();
    let refused = instance.restore(&[], &state).unwrap_err();
    assert_eq!(
        refused,
        CallError::State(StateError::TooLarge {
            size_bytes: 17,
            limit_bytes: 8
        })
    );
    assert!(!instance.is_poisoned());
}

#[test]
fn full_pool_is_a_typed_error_and_frees_up() {
    let mut config = RuntimeConfig::default();
    config.limits.instances_max = 2;
    let runtime = Runtime::new(&config).unwrap();
    let module = runtime.compile(&echo()).unwrap();
    let first = module.instantiate().unwrap();
    let _second = module.instantiate().unwrap();
    let refused = module.instantiate().unwrap_err();
    assert!(matches!(refused, Error::PoolExhausted { limit: 2 }), "{refused:?}");
    assert!(refused.to_string().contains("instances_max=2"), "{refused}");
    drop(first);
    let mut third = module.instantiate().unwrap();
    third.init(&[]).unwrap();
    let batch = readings(1, 2);
    assert_eq!(third.process(&batch).unwrap(), echoed(&batch));
}

#[test]
fn fuel_consumed_is_reported_and_deterministic() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let module = runtime.compile(&component(&Core::default().text())).unwrap();
    let batch = readings(1, 16);
    let mut fuel_per_run = Vec::new();
    for _ in 0..2 {
        let mut instance = module.instantiate().unwrap();
        instance.init(&[]).unwrap();
        instance.process(&batch).unwrap();
        fuel_per_run.push(instance.fuel_consumed_last_call());
    }
    assert!(fuel_per_run[0] > 0);
    assert_eq!(fuel_per_run[0], fuel_per_run[1]);
}

/// The misbehaving Rust guest, `guests/chaos`, compiled to a component.
fn chaos(name: &'static str, config: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        name,
        wasm: molt_guests::CHAOS.to_vec(),
        config,
        configure: with_limits(|limits| limits.fuel_per_batch = 20_000_000),
    }
}

#[test]
fn chaos_guest_behaving_passes() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let case = chaos("chaos ok", &[("mode", "ok")]);
    run(&runtime, &case).unwrap();
}

#[test]
fn chaos_guest_loop_runs_out_of_fuel() {
    for at in ["process", "init", "restore"] {
        let config: &'static [(&str, &str)] = match at {
            "process" => &[("mode", "loop"), ("at", "process")],
            "init" => &[("mode", "loop"), ("at", "init")],
            _ => &[("mode", "loop"), ("at", "restore")],
        };
        check(
            chaos("chaos loop", config),
            |failure| {
                matches!(
                    failure,
                    Failure::Call(CallError::FuelExhausted { limit: 20_000_000, .. })
                )
            },
            "fuel_per_batch=20000000",
        );
    }
}

#[test]
fn chaos_guest_memory_bomb_hits_the_memory_limit() {
    let mut case = chaos("chaos grow", &[("mode", "grow")]);
    case.configure = with_limits(|limits| limits.memory_bytes_max = 8 << 20);
    check(
        case,
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::MemoryLimit {
                    limit_bytes: 8388608,
                    ..
                })
            )
        },
        "memory_bytes_max=8388608",
    );
}

#[test]
fn chaos_guest_recursion_overflows_the_stack() {
    check(
        chaos("chaos recurse", &[("mode", "recurse")]),
        |failure| matches!(failure, Failure::Call(CallError::StackOverflow { .. })),
        "wasm_stack_bytes_max=",
    );
}

/// A Rust panic is a trap whose backtrace names the guest's functions and,
/// from its DWARF line tables, the file and line of the panic's caller.
#[test]
fn chaos_guest_panic_is_a_trap_with_file_and_line() {
    check(
        chaos("chaos trap", &[("mode", "trap")]),
        |failure| match failure {
            Failure::Call(CallError::Trap {
                code: TrapCode::Unreachable,
                backtrace,
            }) => {
                let names_chaos = backtrace
                    .frames
                    .iter()
                    .filter_map(|frame| frame.function.as_deref())
                    .any(|function| function.contains("chaos"));
                let has_chaos_line = backtrace
                    .frames
                    .iter()
                    .flat_map(|frame| &frame.locations)
                    .any(|location| {
                        location.line.is_some() && location.file.as_deref().is_some_and(|file| file.contains("chaos"))
                    });
                names_chaos && has_chaos_line
            }
            _ => false,
        },
        "chaos",
    );
}

#[test]
fn chaos_guest_huge_output_is_refused() {
    // Building 300,000 actions takes more than the other cases' fuel.
    let mut huge = chaos("chaos huge output", &[("mode", "huge-output"), ("count", "300000")]);
    huge.configure = with_limits(|limits| limits.fuel_per_batch = 500_000_000);
    check(
        huge,
        |failure| matches!(failure, Failure::Call(CallError::OutputTooLarge { .. })),
        "output_bytes_max=",
    );
    check(
        chaos("chaos many actions", &[("mode", "huge-output"), ("count", "20000")]),
        |failure| {
            matches!(
                failure,
                Failure::Call(CallError::TooManyActions {
                    count: 20_000,
                    limit: 16_384
                })
            )
        },
        "actions_per_batch_max=16384",
    );
}
