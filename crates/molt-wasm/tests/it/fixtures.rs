//! Hand-written policy components in the WebAssembly text format.
//!
//! Every fixture is the same component around a different core module: the
//! component part declares the `molt:policy` types and lifts the core
//! module's `init`, `process`, `snapshot` and `restore`. The core module
//! has a bump allocator that `post-return` resets after every call.
//!
//! Canonical ABI layouts used below (wasm32):
//! - `reading`: 32 bytes; `sequence` u64 @0, `sensor` u32 @8,
//!   `timestamp-ms` u64 @16, `value` f64 @24.
//! - `action`: 40 bytes, align 8; case tag u8 @0, payload @8. `telemetry`
//!   payload: `sensor` u32 @0, `timestamp-ms` u64 @8, `metric` string
//!   (ptr, len) @16, `value` f64 @24.
//! - `result<list<action>, policy-error>`: tag u8 @0, then either the list
//!   (ptr, len) @4, or `policy-error` (case tag u8 @4, string @8).

use molt_wasm::{Action, Reading, Telemetry};

/// The metric every echo action carries.
pub(crate) const ECHO_METRIC: &str = "echo";

/// The component around a core module with fields `core`, with `imports`
/// (component items) placed before it.
pub(crate) fn component_with_imports(imports: &str, core: &str) -> Vec<u8> {
    let text = format!(
        r#"
(component
  {imports}
  (core module $m {core})
  (core instance $i (instantiate $m))
  ;; Types in exported signatures must themselves be exported (named).
  (type $reading-t (record (field "sequence" u64) (field "sensor" u32)
                           (field "timestamp-ms" u64) (field "value" f64)))
  (export $reading "reading" (type $reading-t))
  (type $telemetry-t (record (field "sensor" u32) (field "timestamp-ms" u64)
                             (field "metric" string) (field "value" f64)))
  (export $telemetry "telemetry" (type $telemetry-t))
  (type $severity-t (enum "info" "warning" "critical"))
  (export $severity "severity" (type $severity-t))
  (type $alert-t (record (field "sensor" u32) (field "timestamp-ms" u64)
                         (field "severity" $severity) (field "message" string)))
  (export $alert "alert" (type $alert-t))
  (type $command-t (record (field "actuator" string) (field "value" f64)))
  (export $command "command" (type $command-t))
  (type $level-t (enum "debug" "info" "warn" "error"))
  (export $level "level" (type $level-t))
  (type $log-line-t (record (field "level" $level) (field "message" string)))
  (export $log-line "log-line" (type $log-line-t))
  (type $action-t (variant (case "telemetry" $telemetry) (case "alert" $alert)
                           (case "command" $command) (case "log" $log-line)))
  (export $action "action" (type $action-t))
  (type $policy-error-t (variant (case "invalid-config" string)
                                 (case "invalid-state" string) (case "failed" string)))
  (export $policy-error "policy-error" (type $policy-error-t))
  (type $config (list (tuple string string)))
  (func (export "init") (param "config" $config) (result (result (error $policy-error)))
    (canon lift (core func $i "init") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))
      (post-return (core func $i "post"))))
  (func (export "process") (param "batch" (list $reading))
    (result (result (list $action) (error $policy-error)))
    (canon lift (core func $i "process") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))
      (post-return (core func $i "post"))))
  (func (export "snapshot") (result (list u8))
    (canon lift (core func $i "snapshot") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))
      (post-return (core func $i "post"))))
  (func (export "restore") (param "config" $config) (param "state" (list u8))
    (result (result (error $policy-error)))
    (canon lift (core func $i "restore") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))
      (post-return (core func $i "post"))))
)"#
    );
    match wat::parse_str(&text) {
        Ok(wasm) => wasm,
        Err(error) => panic!("fixture does not assemble: {error}\n{text}"),
    }
}

/// The component around `core`, importing nothing.
pub(crate) fn component(core: &str) -> Vec<u8> {
    component_with_imports("", core)
}

/// The parts of a fixture's core module that cases vary.
pub(crate) struct Core<'a> {
    /// `process`'s body. It sees `$ptr`/`$len` (the batch) and scratch
    /// locals `$i`, `$out`, `$a`, `$r` (i32), and must leave the result
    /// pointer (i32).
    pub(crate) process: &'a str,
    /// `snapshot`'s body, leaving a pointer to (ptr, len).
    pub(crate) snapshot: &'a str,
    /// More module fields: functions, tables, a start function.
    pub(crate) extra: &'a str,
    /// Initial (and only declared) memory size, in 64 KiB pages.
    pub(crate) memory_pages: u32,
}

/// `snapshot` body: the empty DAG-CBOR map.
pub(crate) const EMPTY_MAP_SNAPSHOT: &str = r#"
    (i32.store (i32.const 0) (i32.const 24))
    (i32.store (i32.const 4) (i32.const 1))
    (i32.const 0)"#;

impl Default for Core<'_> {
    fn default() -> Self {
        Core {
            process: ECHO_PROCESS,
            snapshot: EMPTY_MAP_SNAPSHOT,
            extra: "",
            memory_pages: 2,
        }
    }
}

impl Core<'_> {
    /// The core module's fields, as text.
    pub(crate) fn text(&self) -> String {
        let Core {
            process,
            snapshot,
            extra,
            memory_pages,
        } = self;
        format!(
            r#"
  (memory (export "mem") {memory_pages})
  ;; "echo" for metrics, and the empty DAG-CBOR map twice for snapshots.
  (data (i32.const 16) "echo")
  (data (i32.const 24) "\a0\a0")
  (global $next (mut i32) (i32.const 1024))
  (func $alloc (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (global.set $next (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "realloc") (param i32 i32 i32 i32) (result i32)
    (call $alloc (local.get 2) (local.get 3)))
  (func (export "post") (param i32)
    (global.set $next (i32.const 1024)))
  (func (export "init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.const 32))
  (func $process (export "process") (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $out i32) (local $a i32) (local $r i32)
    {process})
  (func (export "snapshot") (result i32)
    {snapshot})
  (func (export "restore") (param i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.const 32))
  {extra}
"#
        )
    }

    /// The policy component around this core module.
    pub(crate) fn component(&self) -> Vec<u8> {
        component(&self.text())
    }
}

/// `process` body: one telemetry per reading, `value = sequence`,
/// `metric = "echo"`, `sensor` and `timestamp-ms` copied.
pub(crate) const ECHO_PROCESS: &str = r#"
    (local.set $out (call $alloc (i32.const 8) (i32.mul (local.get $len) (i32.const 40))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $r (i32.add (local.get $ptr) (i32.mul (local.get $i) (i32.const 32))))
        (local.set $a (i32.add (local.get $out) (i32.mul (local.get $i) (i32.const 40))))
        (i32.store8 (local.get $a) (i32.const 0))
        (i32.store offset=8 (local.get $a) (i32.load offset=8 (local.get $r)))
        (i64.store offset=16 (local.get $a) (i64.load offset=16 (local.get $r)))
        (i32.store offset=24 (local.get $a) (i32.const 16))
        (i32.store offset=28 (local.get $a) (i32.const 4))
        (f64.store offset=32 (local.get $a) (f64.convert_i64_u (i64.load (local.get $r))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.store offset=4 (i32.const 48) (local.get $out))
    (i32.store offset=8 (i32.const 48) (local.get $len))
    (i32.const 48)
"#;

/// `process` body: `ok` with the list at `list_ptr` of `list_len` actions,
/// whatever is there.
pub(crate) fn return_list(list_ptr: u32, list_len: u32) -> String {
    format!(
        r#"
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.store offset=4 (i32.const 48) (i32.const {list_ptr}))
    (i32.store offset=8 (i32.const 48) (i32.const {list_len}))
    (i32.const 48)"#
    )
}

/// The well-behaved echo policy.
pub(crate) fn echo() -> Vec<u8> {
    Core::default().component()
}

/// `n_readings` readings starting at sequence `first_sequence`.
pub(crate) fn readings(first_sequence: u64, n_readings: u64) -> Vec<Reading> {
    (first_sequence..first_sequence + n_readings)
        .map(|sequence| Reading {
            sequence,
            sensor: 3,
            timestamp_ms: 1_700_000_000_000 + sequence,
            value: 20.0,
        })
        .collect()
}

/// What [`echo`] returns for `batch`.
pub(crate) fn echoed(batch: &[Reading]) -> Vec<Action> {
    batch
        .iter()
        .map(|reading| {
            Action::Telemetry(Telemetry {
                sensor: reading.sensor,
                timestamp_ms: reading.timestamp_ms,
                metric: ECHO_METRIC.to_owned(),
                value: reading.sequence as f64,
            })
        })
        .collect()
}
