// molt's C guest SDK: what a policy in C needs besides the bindings generated from wit/policy.wit.
//
// - `molt_buf`: growable bytes, for messages and snapshots, with numbers formatted as Rust's `{}` does.
// - Numbers: parsing as Rust's `str::parse` does, so that a C policy accepts exactly the config a Rust one does.
// - Config: the Rust SDK's `Config` checks, with the same error messages.
// - Actions: a growable list of actions to return from `process`.
// - DAG-CBOR: a canonical encoder and a strict decoder for snapshots.
//
// Memory: everything handed to the host (strings inside actions and errors, the action list, the snapshot) must come from malloc,
// because the generated bindings free it after the host has copied it out.
// Arguments the host passes to an export are the export's to free; the generated `policy_*_free` functions do that.
//
// Every allocation failure traps: the host then recreates the instance from its last good snapshot.
#ifndef MOLT_H
#define MOLT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

// ---- Bytes and text -------------------------------------------------------------------------

// Growable bytes. Zero-initialise (`molt_buf buf = {0};`) to start empty.
typedef struct molt_buf {
    uint8_t *ptr;
    size_t len;
    size_t capacity;
} molt_buf;

void molt_buf_push(molt_buf *buf, const void *bytes, size_t len);
void molt_buf_byte(molt_buf *buf, uint8_t byte);
// Appends a NUL-terminated string, without the NUL.
void molt_buf_str(molt_buf *buf, const char *text);
void molt_buf_string(molt_buf *buf, const policy_string_t *text);
// Decimal, as Rust's `{}`.
void molt_buf_u64(molt_buf *buf, uint64_t value);
// The shortest decimal that reads back as `value`, without an exponent, as Rust's `{}` for f64:
// 31.0 is `31`, 0.1 is `0.1`, 1e21 is `1000000000000000000000`, -0.0 is `-0`, and non-finite values are `inf`, `-inf` and `NaN`.
void molt_buf_f64(molt_buf *buf, double value);
// Hands the bytes over as a string for the host (empty: no allocation) and leaves `buf` empty.
policy_string_t molt_buf_into_string(molt_buf *buf);
// Hands the bytes over as a list for the host and leaves `buf` empty.
policy_list_u8_t molt_buf_into_list(molt_buf *buf);
void molt_buf_free(molt_buf *buf);

bool molt_string_equals(const policy_string_t *text, const char *expected);

// ---- Numbers --------------------------------------------------------------------------------

// Rust's `str::parse::<f64>`: `[+-]` then `inf`, `infinity` or `nan` (any case), or digits with an optional `.` and `e` exponent;
// correctly rounded. No surrounding whitespace. False on anything else.
bool molt_parse_f64(const uint8_t *text, size_t len, double *value);
// Rust's `str::parse::<u32>` and `::<u64>`: an optional `+` then decimal digits, in range. False on anything else.
bool molt_parse_u32(const uint8_t *text, size_t len, uint32_t *value);
bool molt_parse_u64(const uint8_t *text, size_t len, uint64_t *value);
// Rust's `str::trim`: drops leading and trailing Unicode white space from UTF-8 text.
void molt_trim(const uint8_t **text, size_t *len);
// Neither NaN nor infinite.
static inline bool molt_is_finite(double value) {
    return __builtin_isfinite(value);
}

// ---- Errors ---------------------------------------------------------------------------------

// Sets `err` to `tag` (MOLT_POLICY_TYPES_POLICY_ERROR_*) with `message`, which it takes over. Returns false, for `return molt_error(...)`.
bool molt_error(policy_policy_error_t *err, uint8_t tag, molt_buf *message);
bool molt_error_str(policy_policy_error_t *err, uint8_t tag, const char *message);

// ---- Config ---------------------------------------------------------------------------------
// The getters trim the value and name the key in their errors, word for word as the Rust SDK's `Config` does.

// `invalid-config` if a key is given twice, as the Rust SDK's `Config::from_pairs`.
bool molt_config_check_duplicates(const policy_config_t *config, policy_policy_error_t *err);
// `invalid-config` naming the first key in byte order that is not in `known` (`n_known` entries).
bool molt_config_check_keys(const policy_config_t *config, const char *const *known, size_t n_known, policy_policy_error_t *err);
// The value of `key`, or NULL.
const policy_string_t *molt_config_get(const policy_config_t *config, const char *key);
// A finite number; `*present` says whether the key was there (then `*value` is set).
bool molt_config_f64(const policy_config_t *config, const char *key, bool *present, double *value, policy_policy_error_t *err);
bool molt_config_u32(const policy_config_t *config, const char *key, bool *present, uint32_t *value, policy_policy_error_t *err);
// `invalid-config`: "missing key `key`".
bool molt_config_missing(policy_policy_error_t *err, const char *key);
// `invalid-config`: "key `key`: <problem>", taking over `problem`.
bool molt_config_error(policy_policy_error_t *err, const char *key, molt_buf *problem);

// ---- Actions --------------------------------------------------------------------------------

typedef struct molt_actions {
    policy_action_t *ptr;
    size_t len;
    size_t capacity;
} molt_actions;

// Telemetry about `reading`: its sensor and timestamp, with `metric` and `value`.
void molt_push_telemetry(molt_actions *actions, const policy_reading_t *reading, const char *metric, double value);
// An alert about `reading`, taking over `message`.
void molt_push_alert(molt_actions *actions, const policy_reading_t *reading, molt_policy_types_severity_t severity, molt_buf *message);
// Hands the actions over for `process` to return, and leaves `actions` empty.
policy_list_action_t molt_actions_into_list(molt_actions *actions);
void molt_actions_free(molt_actions *actions);

// ---- DAG-CBOR -------------------------------------------------------------------------------
// The encoder writes the canonical form: shortest heads, 64-bit floats.
// The caller writes map keys in DAG-CBOR order: shorter keys first, then bytewise.

#define MOLT_CBOR_UNSIGNED 0
#define MOLT_CBOR_NEGATIVE 1
#define MOLT_CBOR_BYTES 2
#define MOLT_CBOR_TEXT 3
#define MOLT_CBOR_ARRAY 4
#define MOLT_CBOR_MAP 5
#define MOLT_CBOR_TAG 6
#define MOLT_CBOR_SIMPLE 7

void molt_cbor_head(molt_buf *buf, uint8_t major, uint64_t argument);
void molt_cbor_u64(molt_buf *buf, uint64_t value);
void molt_cbor_text(molt_buf *buf, const char *text);
// Traps on NaN and infinities, which DAG-CBOR cannot hold.
void molt_cbor_f64(molt_buf *buf, double value);

// Reads one DAG-CBOR value at a time; the first error stops it and is kept in `error`.
typedef struct molt_cbor_reader {
    const uint8_t *bytes;
    size_t len;
    size_t position;
    // Why decoding failed, or NULL.
    const char *error;
} molt_cbor_reader;

// Only shortest heads of definite length are accepted.
bool molt_cbor_read_head(molt_cbor_reader *reader, uint8_t *major, uint64_t *argument);
bool molt_cbor_read_u64(molt_cbor_reader *reader, uint64_t *value);
bool molt_cbor_read_u32(molt_cbor_reader *reader, uint32_t *value);
bool molt_cbor_read_f64(molt_cbor_reader *reader, double *value);
// A text string, pointing into the input.
bool molt_cbor_read_text(molt_cbor_reader *reader, const uint8_t **text, size_t *len);
bool molt_cbor_read_array(molt_cbor_reader *reader, uint64_t *count);
bool molt_cbor_read_map(molt_cbor_reader *reader, uint64_t *count);
// Skips one value of any kind, nested at most 64 deep: a field this version does not know.
bool molt_cbor_skip(molt_cbor_reader *reader);
// False with an error unless every byte was read.
bool molt_cbor_finish(molt_cbor_reader *reader);
bool molt_cbor_fail(molt_cbor_reader *reader, const char *error);
bool molt_text_equals(const uint8_t *text, size_t len, const char *expected);

#endif
