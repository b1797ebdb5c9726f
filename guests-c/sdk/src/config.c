// The Rust SDK's `Config` checks, with the same error messages, so that a C policy and a Rust one refuse the same config in the same words.

#include <string.h>

#include "molt.h"

static int compare_bytes(const policy_string_t *left, const policy_string_t *right) {
    size_t common = left->len < right->len ? left->len : right->len;
    int order = memcmp(left->ptr, right->ptr, common);
    if (order != 0) {
        return order;
    }
    return left->len < right->len ? -1 : left->len > right->len ? 1 : 0;
}

static bool string_equal(const policy_string_t *left, const policy_string_t *right) {
    return left->len == right->len && memcmp(left->ptr, right->ptr, left->len) == 0;
}

bool molt_config_check_duplicates(const policy_config_t *config, policy_policy_error_t *err) {
    // Quadratic, but configs are a handful of keys, and the host bounds the work with fuel.
    for (size_t index = 0; index < config->len; index++) {
        const policy_string_t *key = &config->ptr[index].f0;
        for (size_t earlier = 0; earlier < index; earlier++) {
            if (string_equal(&config->ptr[earlier].f0, key)) {
                molt_buf message = {0};
                molt_buf_str(&message, "key `");
                molt_buf_string(&message, key);
                molt_buf_str(&message, "` is given twice");
                return molt_error(err, MOLT_POLICY_TYPES_POLICY_ERROR_INVALID_CONFIG, &message);
            }
        }
    }
    return true;
}

bool molt_config_check_keys(const policy_config_t *config, const char *const *known, size_t n_known, policy_policy_error_t *err) {
    // The Rust SDK keeps keys in a BTreeMap and names the first unknown one in that order.
    const policy_string_t *first_unknown = NULL;
    for (size_t index = 0; index < config->len; index++) {
        const policy_string_t *key = &config->ptr[index].f0;
        bool is_known = false;
        for (size_t known_index = 0; known_index < n_known; known_index++) {
            is_known |= molt_string_equals(key, known[known_index]);
        }
        if (!is_known && (first_unknown == NULL || compare_bytes(key, first_unknown) < 0)) {
            first_unknown = key;
        }
    }
    if (first_unknown == NULL) {
        return true;
    }
    molt_buf message = {0};
    molt_buf_str(&message, "unknown key `");
    molt_buf_string(&message, first_unknown);
    molt_buf_str(&message, "` (known keys: ");
    for (size_t known_index = 0; known_index < n_known; known_index++) {
        if (known_index > 0) {
            molt_buf_str(&message, ", ");
        }
        molt_buf_str(&message, known[known_index]);
    }
    molt_buf_str(&message, ")");
    return molt_error(err, MOLT_POLICY_TYPES_POLICY_ERROR_INVALID_CONFIG, &message);
}

const policy_string_t *molt_config_get(const policy_config_t *config, const char *key) {
    for (size_t index = 0; index < config->len; index++) {
        if (molt_string_equals(&config->ptr[index].f0, key)) {
            return &config->ptr[index].f1;
        }
    }
    return NULL;
}

bool molt_config_missing(policy_policy_error_t *err, const char *key) {
    molt_buf message = {0};
    molt_buf_str(&message, "missing key `");
    molt_buf_str(&message, key);
    molt_buf_str(&message, "`");
    return molt_error(err, MOLT_POLICY_TYPES_POLICY_ERROR_INVALID_CONFIG, &message);
}

bool molt_config_error(policy_policy_error_t *err, const char *key, molt_buf *problem) {
    molt_buf message = {0};
    molt_buf_str(&message, "key `");
    molt_buf_str(&message, key);
    molt_buf_str(&message, "`: ");
    molt_buf_push(&message, problem->ptr, problem->len);
    molt_buf_free(problem);
    return molt_error(err, MOLT_POLICY_TYPES_POLICY_ERROR_INVALID_CONFIG, &message);
}

static bool invalid_value(policy_policy_error_t *err, const char *key, const char *expected, const policy_string_t *value) {
    molt_buf problem = {0};
    molt_buf_str(&problem, "expected ");
    molt_buf_str(&problem, expected);
    molt_buf_str(&problem, ", got `");
    molt_buf_string(&problem, value);
    molt_buf_str(&problem, "`");
    return molt_config_error(err, key, &problem);
}

bool molt_config_f64(const policy_config_t *config, const char *key, bool *present, double *value, policy_policy_error_t *err) {
    const policy_string_t *raw = molt_config_get(config, key);
    *present = raw != NULL;
    if (raw == NULL) {
        return true;
    }
    const uint8_t *text = raw->ptr;
    size_t len = raw->len;
    molt_trim(&text, &len);
    if (!molt_parse_f64(text, len, value) || !molt_is_finite(*value)) {
        return invalid_value(err, key, "a finite number", raw);
    }
    return true;
}

bool molt_config_u32(const policy_config_t *config, const char *key, bool *present, uint32_t *value, policy_policy_error_t *err) {
    const policy_string_t *raw = molt_config_get(config, key);
    *present = raw != NULL;
    if (raw == NULL) {
        return true;
    }
    const uint8_t *text = raw->ptr;
    size_t len = raw->len;
    molt_trim(&text, &len);
    if (!molt_parse_u32(text, len, value)) {
        return invalid_value(err, key, "an integer from 0 to 4294967295", raw);
    }
    return true;
}
