// Growable bytes, errors and the action list.

#include <stdlib.h>
#include <string.h>

#include "molt.h"

static void reserve(molt_buf *buf, size_t extra) {
    if (extra <= buf->capacity - buf->len) {
        return;
    }
    if (extra > SIZE_MAX / 2 - buf->len) {
        abort();
    }
    size_t capacity = buf->capacity < 16 ? 16 : buf->capacity;
    while (capacity - buf->len < extra) {
        capacity *= 2;
    }
    uint8_t *grown = realloc(buf->ptr, capacity);
    if (grown == NULL) {
        abort();
    }
    buf->ptr = grown;
    buf->capacity = capacity;
}

void molt_buf_push(molt_buf *buf, const void *bytes, size_t len) {
    if (len == 0) {
        return;
    }
    reserve(buf, len);
    memcpy(buf->ptr + buf->len, bytes, len);
    buf->len += len;
}

void molt_buf_byte(molt_buf *buf, uint8_t byte) {
    molt_buf_push(buf, &byte, 1);
}

void molt_buf_str(molt_buf *buf, const char *text) {
    molt_buf_push(buf, text, strlen(text));
}

void molt_buf_string(molt_buf *buf, const policy_string_t *text) {
    molt_buf_push(buf, text->ptr, text->len);
}

void molt_buf_u64(molt_buf *buf, uint64_t value) {
    char digits[20];
    size_t n_digits = 0;
    do {
        digits[sizeof digits - 1 - n_digits] = (char)('0' + value % 10);
        n_digits++;
        value /= 10;
    } while (value != 0);
    molt_buf_push(buf, digits + sizeof digits - n_digits, n_digits);
}

policy_string_t molt_buf_into_string(molt_buf *buf) {
    policy_list_u8_t list = molt_buf_into_list(buf);
    return (policy_string_t){.ptr = list.ptr, .len = list.len};
}

policy_list_u8_t molt_buf_into_list(molt_buf *buf) {
    // The bindings free only non-empty lists, so an empty one must own no memory.
    if (buf->len == 0) {
        molt_buf_free(buf);
        return (policy_list_u8_t){.ptr = NULL, .len = 0};
    }
    policy_list_u8_t list = {.ptr = buf->ptr, .len = buf->len};
    *buf = (molt_buf){0};
    return list;
}

void molt_buf_free(molt_buf *buf) {
    free(buf->ptr);
    *buf = (molt_buf){0};
}

bool molt_string_equals(const policy_string_t *text, const char *expected) {
    return molt_text_equals(text->ptr, text->len, expected);
}

bool molt_text_equals(const uint8_t *text, size_t len, const char *expected) {
    return strlen(expected) == len && memcmp(text, expected, len) == 0;
}

bool molt_error(policy_policy_error_t *err, uint8_t tag, molt_buf *message) {
    err->tag = tag;
    // Every case of `policy-error` holds one string, at the same place.
    err->val.failed = molt_buf_into_string(message);
    return false;
}

bool molt_error_str(policy_policy_error_t *err, uint8_t tag, const char *message) {
    molt_buf buf = {0};
    molt_buf_str(&buf, message);
    return molt_error(err, tag, &buf);
}

static void push_action(molt_actions *actions, policy_action_t action) {
    if (actions->len == actions->capacity) {
        size_t capacity = actions->capacity < 8 ? 8 : actions->capacity * 2;
        if (capacity > SIZE_MAX / sizeof(policy_action_t)) {
            abort();
        }
        policy_action_t *grown = realloc(actions->ptr, capacity * sizeof(policy_action_t));
        if (grown == NULL) {
            abort();
        }
        actions->ptr = grown;
        actions->capacity = capacity;
    }
    actions->ptr[actions->len] = action;
    actions->len++;
}

void molt_push_telemetry(molt_actions *actions, const policy_reading_t *reading, const char *metric, double value) {
    molt_buf metric_buf = {0};
    molt_buf_str(&metric_buf, metric);
    policy_action_t action = {.tag = MOLT_POLICY_TYPES_ACTION_TELEMETRY};
    action.val.telemetry = (molt_policy_types_telemetry_t){
        .sensor = reading->sensor,
        .timestamp_ms = reading->timestamp_ms,
        .metric = molt_buf_into_string(&metric_buf),
        .value = value,
    };
    push_action(actions, action);
}

void molt_push_alert(molt_actions *actions, const policy_reading_t *reading, molt_policy_types_severity_t severity, molt_buf *message) {
    policy_action_t action = {.tag = MOLT_POLICY_TYPES_ACTION_ALERT};
    action.val.alert = (molt_policy_types_alert_t){
        .sensor = reading->sensor,
        .timestamp_ms = reading->timestamp_ms,
        .severity = severity,
        .message = molt_buf_into_string(message),
    };
    push_action(actions, action);
}

policy_list_action_t molt_actions_into_list(molt_actions *actions) {
    if (actions->len == 0) {
        molt_actions_free(actions);
        return (policy_list_action_t){.ptr = NULL, .len = 0};
    }
    policy_list_action_t list = {.ptr = actions->ptr, .len = actions->len};
    *actions = (molt_actions){0};
    return list;
}

void molt_actions_free(molt_actions *actions) {
    for (size_t index = 0; index < actions->len; index++) {
        policy_action_free(&actions->ptr[index]);
    }
    free(actions->ptr);
    *actions = (molt_actions){0};
}
