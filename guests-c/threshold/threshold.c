// A threshold alert with hysteresis, in C: `guests/threshold` written again against the same contract, to show that a policy
// need not be Rust, and to check the C toolchain against the Rust one (crates/molt-wasm/tests/it/c_guest.rs).
//
// Raises an alert when a sensor's value rises above `threshold`, and clears it only once the value falls below `threshold - hysteresis`,
// so that a value hovering at the threshold does not flap.
// Each raise and clear is also published as telemetry `threshold.alarm` (1 raised, 0 cleared).
//
// Config, exactly as the Rust policy's, with the same error messages:
// - `threshold` (number, required);
// - `hysteresis` (number >= 0, default 0);
// - `sensor` (sensor id, optional): watch only this sensor; by default every sensor is watched on its own;
// - `severity` (`info`, `warning` or `critical`, default `warning`): the severity of a raised alert; a clear is always `info`.
//
// Readings that are NaN or infinite are ignored.
//
// State, byte for byte the Rust policy's, so that either restores the other's snapshot:
// the DAG-CBOR map {"alarms": [[sensor, {"raised_at_ms": ms}], ...]}, in ascending sensor order.

#include <stdlib.h>
#include <string.h>

#include "molt.h"
#include "policy.h"

// The telemetry metric of raises (1) and clears (0).
static const char ALARM_METRIC[] = "threshold.alarm";

static const char *const KNOWN_KEYS[] = {"threshold", "hysteresis", "sensor", "severity"};
#define N_KNOWN_KEYS (sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0])

struct settings {
    double threshold;
    double hysteresis;
    bool has_sensor;
    uint32_t sensor;
    molt_policy_types_severity_t severity;
};

struct alarm {
    uint32_t sensor;
    uint64_t raised_at_ms;
};

// Sensors currently in alarm, in ascending sensor order.
struct alarms {
    struct alarm *ptr;
    size_t len;
    size_t capacity;
};

// The one policy of this instance: the host calls one export at a time.
static struct {
    // Set by `init` or `restore`.
    bool ready;
    struct settings settings;
    struct alarms alarms;
} policy;

// ---- Alarms ---------------------------------------------------------------------------------

// Where `sensor` is, or would be inserted; true when it is there.
static bool alarms_find(const struct alarms *alarms, uint32_t sensor, size_t *index) {
    size_t low = 0;
    size_t high = alarms->len;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (alarms->ptr[middle].sensor < sensor) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    *index = low;
    return low < alarms->len && alarms->ptr[low].sensor == sensor;
}

static void alarms_insert(struct alarms *alarms, size_t index, struct alarm alarm) {
    if (alarms->len == alarms->capacity) {
        size_t capacity = alarms->capacity < 4 ? 4 : alarms->capacity * 2;
        if (capacity > SIZE_MAX / sizeof(struct alarm)) {
            abort();
        }
        struct alarm *grown = realloc(alarms->ptr, capacity * sizeof(struct alarm));
        if (grown == NULL) {
            abort();
        }
        alarms->ptr = grown;
        alarms->capacity = capacity;
    }
    memmove(&alarms->ptr[index + 1], &alarms->ptr[index], (alarms->len - index) * sizeof(struct alarm));
    alarms->ptr[index] = alarm;
    alarms->len++;
}

static void alarms_remove(struct alarms *alarms, size_t index) {
    memmove(&alarms->ptr[index], &alarms->ptr[index + 1], (alarms->len - index - 1) * sizeof(struct alarm));
    alarms->len--;
}

static void alarms_free(struct alarms *alarms) {
    free(alarms->ptr);
    *alarms = (struct alarms){0};
}

// ---- Config ---------------------------------------------------------------------------------

// In the Rust policy's order, so that a config with several problems gets the same error.
static bool settings_from_config(const policy_config_t *config, struct settings *settings, policy_policy_error_t *err) {
    if (!molt_config_check_keys(config, KNOWN_KEYS, N_KNOWN_KEYS, err)) {
        return false;
    }
    bool present;
    if (!molt_config_f64(config, "threshold", &present, &settings->threshold, err)) {
        return false;
    }
    if (!present) {
        return molt_config_missing(err, "threshold");
    }
    if (!molt_config_f64(config, "hysteresis", &present, &settings->hysteresis, err)) {
        return false;
    }
    if (!present) {
        settings->hysteresis = 0.0;
    }
    if (settings->hysteresis < 0.0) {
        molt_buf problem = {0};
        molt_buf_str(&problem, "must not be negative, got ");
        molt_buf_f64(&problem, settings->hysteresis);
        return molt_config_error(err, "hysteresis", &problem);
    }
    const policy_string_t *severity = molt_config_get(config, "severity");
    if (severity == NULL || molt_string_equals(severity, "warning")) {
        settings->severity = MOLT_POLICY_TYPES_SEVERITY_WARNING;
    } else if (molt_string_equals(severity, "info")) {
        settings->severity = MOLT_POLICY_TYPES_SEVERITY_INFO;
    } else if (molt_string_equals(severity, "critical")) {
        settings->severity = MOLT_POLICY_TYPES_SEVERITY_CRITICAL;
    } else {
        molt_buf problem = {0};
        molt_buf_str(&problem, "expected `info`, `warning` or `critical`, got `");
        molt_buf_string(&problem, severity);
        molt_buf_str(&problem, "`");
        return molt_config_error(err, "severity", &problem);
    }
    return molt_config_u32(config, "sensor", &settings->has_sensor, &settings->sensor, err);
}

// ---- State ----------------------------------------------------------------------------------

static void encode_state(const struct alarms *alarms, molt_buf *state) {
    molt_cbor_head(state, MOLT_CBOR_MAP, 1);
    molt_cbor_text(state, "alarms");
    molt_cbor_head(state, MOLT_CBOR_ARRAY, alarms->len);
    for (size_t index = 0; index < alarms->len; index++) {
        molt_cbor_head(state, MOLT_CBOR_ARRAY, 2);
        molt_cbor_u64(state, alarms->ptr[index].sensor);
        molt_cbor_head(state, MOLT_CBOR_MAP, 1);
        molt_cbor_text(state, "raised_at_ms");
        molt_cbor_u64(state, alarms->ptr[index].raised_at_ms);
    }
}

// One `[sensor, {"raised_at_ms": ms}]`; fields this version does not know are skipped, as the Rust policy's serde does.
static bool decode_alarm(molt_cbor_reader *reader, struct alarm *alarm) {
    uint64_t n_items;
    if (!molt_cbor_read_array(reader, &n_items)) {
        return false;
    }
    if (n_items != 2) {
        return molt_cbor_fail(reader, "an alarm is not a [sensor, alarm] pair");
    }
    uint64_t n_fields;
    if (!molt_cbor_read_u32(reader, &alarm->sensor) || !molt_cbor_read_map(reader, &n_fields)) {
        return false;
    }
    bool have_raised_at = false;
    for (uint64_t field = 0; field < n_fields; field++) {
        const uint8_t *key;
        size_t key_len;
        if (!molt_cbor_read_text(reader, &key, &key_len)) {
            return false;
        }
        if (molt_text_equals(key, key_len, "raised_at_ms")) {
            if (have_raised_at) {
                return molt_cbor_fail(reader, "duplicate field `raised_at_ms`");
            }
            have_raised_at = true;
            if (!molt_cbor_read_u64(reader, &alarm->raised_at_ms)) {
                return false;
            }
        } else if (!molt_cbor_skip(reader)) {
            return false;
        }
    }
    if (!have_raised_at) {
        return molt_cbor_fail(reader, "missing field `raised_at_ms`");
    }
    return true;
}

static bool decode_alarms(molt_cbor_reader *reader, struct alarms *alarms) {
    uint64_t n_alarms;
    if (!molt_cbor_read_array(reader, &n_alarms)) {
        return false;
    }
    // Each alarm takes more than one byte: a count past the end of the input fails before it allocates anything.
    if (n_alarms > reader->len - reader->position) {
        return molt_cbor_fail(reader, "unexpected end of input");
    }
    for (uint64_t alarm_index = 0; alarm_index < n_alarms; alarm_index++) {
        struct alarm alarm;
        if (!decode_alarm(reader, &alarm)) {
            return false;
        }
        size_t index;
        if (alarms_find(alarms, alarm.sensor, &index)) {
            return molt_cbor_fail(reader, "a sensor appears twice");
        }
        alarms_insert(alarms, index, alarm);
    }
    return true;
}

static bool decode_state(const policy_list_u8_t *state, struct alarms *alarms, policy_policy_error_t *err) {
    molt_cbor_reader reader = {.bytes = state->ptr, .len = state->len};
    uint64_t n_fields;
    bool have_alarms = false;
    if (molt_cbor_read_map(&reader, &n_fields)) {
        for (uint64_t field = 0; field < n_fields && reader.error == NULL; field++) {
            const uint8_t *key;
            size_t key_len;
            if (!molt_cbor_read_text(&reader, &key, &key_len)) {
                break;
            }
            if (molt_text_equals(key, key_len, "alarms")) {
                if (have_alarms) {
                    molt_cbor_fail(&reader, "duplicate field `alarms`");
                    break;
                }
                have_alarms = true;
                decode_alarms(&reader, alarms);
            } else {
                molt_cbor_skip(&reader);
            }
        }
    }
    if (molt_cbor_finish(&reader) && !have_alarms) {
        molt_cbor_fail(&reader, "missing field `alarms`");
    }
    if (reader.error == NULL) {
        return true;
    }
    alarms_free(alarms);
    molt_buf message = {0};
    molt_buf_str(&message, "cannot decode state: ");
    molt_buf_str(&message, reader.error);
    return molt_error(err, MOLT_POLICY_TYPES_POLICY_ERROR_INVALID_STATE, &message);
}

// ---- The world's exports --------------------------------------------------------------------

static void start(const struct settings *settings, struct alarms alarms) {
    alarms_free(&policy.alarms);
    policy.settings = *settings;
    policy.alarms = alarms;
    policy.ready = true;
}

bool exports_policy_init(policy_config_t *config, policy_policy_error_t *err) {
    struct settings settings;
    bool ok = molt_config_check_duplicates(config, err) && settings_from_config(config, &settings, err);
    policy_config_free(config);
    if (ok) {
        start(&settings, (struct alarms){0});
    }
    return ok;
}

bool exports_policy_process(policy_list_reading_t *batch, policy_list_action_t *ret, policy_policy_error_t *err) {
    if (!policy.ready) {
        policy_list_reading_free(batch);
        return molt_error_str(err, MOLT_POLICY_TYPES_POLICY_ERROR_FAILED, "process called before init or restore");
    }
    const struct settings *settings = &policy.settings;
    double clear_below = settings->threshold - settings->hysteresis;
    molt_actions actions = {0};
    for (size_t reading_index = 0; reading_index < batch->len; reading_index++) {
        const policy_reading_t *reading = &batch->ptr[reading_index];
        bool watched = !settings->has_sensor || settings->sensor == reading->sensor;
        if (!watched || !molt_is_finite(reading->value)) {
            continue;
        }
        size_t index;
        bool in_alarm = alarms_find(&policy.alarms, reading->sensor, &index);
        if (!in_alarm && reading->value > settings->threshold) {
            alarms_insert(&policy.alarms, index, (struct alarm){.sensor = reading->sensor, .raised_at_ms = reading->timestamp_ms});
            molt_buf message = {0};
            molt_buf_str(&message, "sensor ");
            molt_buf_u64(&message, reading->sensor);
            molt_buf_str(&message, ": ");
            molt_buf_f64(&message, reading->value);
            molt_buf_str(&message, " rose above threshold ");
            molt_buf_f64(&message, settings->threshold);
            molt_push_alert(&actions, reading, settings->severity, &message);
            molt_push_telemetry(&actions, reading, ALARM_METRIC, 1.0);
        } else if (in_alarm && reading->value < clear_below) {
            uint64_t raised_at_ms = policy.alarms.ptr[index].raised_at_ms;
            uint64_t raised_for_ms = reading->timestamp_ms > raised_at_ms ? reading->timestamp_ms - raised_at_ms : 0;
            alarms_remove(&policy.alarms, index);
            molt_buf message = {0};
            molt_buf_str(&message, "sensor ");
            molt_buf_u64(&message, reading->sensor);
            molt_buf_str(&message, ": ");
            molt_buf_f64(&message, reading->value);
            molt_buf_str(&message, " fell below ");
            molt_buf_f64(&message, clear_below);
            molt_buf_str(&message, ", cleared after ");
            molt_buf_u64(&message, raised_for_ms);
            molt_buf_str(&message, " ms");
            molt_push_alert(&actions, reading, MOLT_POLICY_TYPES_SEVERITY_INFO, &message);
            molt_push_telemetry(&actions, reading, ALARM_METRIC, 0.0);
        }
    }
    policy_list_reading_free(batch);
    *ret = molt_actions_into_list(&actions);
    return true;
}

void exports_policy_snapshot(policy_list_u8_t *ret) {
    // The contract gives `snapshot` no error: a snapshot before `init` or `restore` traps, as the Rust SDK's does.
    if (!policy.ready) {
        abort();
    }
    molt_buf state = {0};
    encode_state(&policy.alarms, &state);
    *ret = molt_buf_into_list(&state);
}

bool exports_policy_restore(policy_config_t *config, policy_list_u8_t *state, policy_policy_error_t *err) {
    // The Rust SDK's order: the config's keys, then the state, then the config's values.
    struct settings settings;
    struct alarms alarms = {0};
    bool ok = molt_config_check_duplicates(config, err) && decode_state(state, &alarms, err) &&
              settings_from_config(config, &settings, err);
    policy_config_free(config);
    policy_list_u8_free(state);
    if (!ok) {
        alarms_free(&alarms);
        return false;
    }
    start(&settings, alarms);
    return true;
}
