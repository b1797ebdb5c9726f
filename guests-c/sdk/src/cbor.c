// DAG-CBOR for snapshots: a canonical encoder and a strict decoder.
//
// The host accepts a snapshot only if it is canonical DAG-CBOR (re-encoding it gives the same bytes), so the encoder writes
// every head in its shortest form and every float in 64 bits. Map key order is the caller's: shorter keys first, then bytewise.

#include <string.h>

#include "molt.h"

// Nesting deeper than this in a field being skipped is refused rather than followed.
#define SKIP_DEPTH_MAX 64

void molt_cbor_head(molt_buf *buf, uint8_t major, uint64_t argument) {
    uint8_t head[9];
    size_t len;
    uint8_t initial = (uint8_t)(major << 5);
    if (argument < 24) {
        head[0] = initial | (uint8_t)argument;
        len = 1;
    } else if (argument <= UINT8_MAX) {
        head[0] = initial | 24;
        len = 2;
    } else if (argument <= UINT16_MAX) {
        head[0] = initial | 25;
        len = 3;
    } else if (argument <= UINT32_MAX) {
        head[0] = initial | 26;
        len = 5;
    } else {
        head[0] = initial | 27;
        len = 9;
    }
    for (size_t index = 1; index < len; index++) {
        head[index] = (uint8_t)(argument >> (8 * (len - 1 - index)));
    }
    molt_buf_push(buf, head, len);
}

void molt_cbor_u64(molt_buf *buf, uint64_t value) {
    molt_cbor_head(buf, MOLT_CBOR_UNSIGNED, value);
}

void molt_cbor_text(molt_buf *buf, const char *text) {
    size_t len = strlen(text);
    molt_cbor_head(buf, MOLT_CBOR_TEXT, len);
    molt_buf_push(buf, text, len);
}

void molt_cbor_f64(molt_buf *buf, double value) {
    if (!molt_is_finite(value)) {
        __builtin_trap();
    }
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    // Major type 7 with a 64-bit argument is a double; DAG-CBOR never uses the shorter floats.
    molt_buf_byte(buf, (MOLT_CBOR_SIMPLE << 5) | 27);
    for (int byte = 7; byte >= 0; byte--) {
        molt_buf_byte(buf, (uint8_t)(bits >> (8 * byte)));
    }
}

bool molt_cbor_fail(molt_cbor_reader *reader, const char *error) {
    if (reader->error == NULL) {
        reader->error = error;
    }
    return false;
}

// The head at the reader, with the raw 5-bit additional information, without interpreting a float.
static bool read_raw_head(molt_cbor_reader *reader, uint8_t *major, uint8_t *info, uint64_t *argument) {
    if (reader->error != NULL) {
        return false;
    }
    if (reader->position >= reader->len) {
        return molt_cbor_fail(reader, "unexpected end of input");
    }
    uint8_t initial = reader->bytes[reader->position++];
    *major = initial >> 5;
    *info = initial & 0x1f;
    size_t n_bytes;
    if (*info < 24) {
        *argument = *info;
        return true;
    } else if (*info <= 27) {
        n_bytes = (size_t)1 << (*info - 24);
    } else {
        return molt_cbor_fail(reader, "indefinite length or reserved head");
    }
    if (reader->len - reader->position < n_bytes) {
        return molt_cbor_fail(reader, "unexpected end of input");
    }
    uint64_t value = 0;
    for (size_t index = 0; index < n_bytes; index++) {
        value = (value << 8) | reader->bytes[reader->position++];
    }
    *argument = value;
    return true;
}

bool molt_cbor_read_head(molt_cbor_reader *reader, uint8_t *major, uint64_t *argument) {
    uint8_t info;
    if (!read_raw_head(reader, major, &info, argument)) {
        return false;
    }
    if (*major == MOLT_CBOR_SIMPLE) {
        return true;
    }
    // Shortest form only, as DAG-CBOR requires.
    bool shortest = info < 24 || (info == 24 && *argument >= 24) || (info == 25 && *argument > UINT8_MAX) ||
                    (info == 26 && *argument > UINT16_MAX) || (info == 27 && *argument > UINT32_MAX);
    if (!shortest) {
        return molt_cbor_fail(reader, "integer or length not in its shortest form");
    }
    return true;
}

static bool expect_major(molt_cbor_reader *reader, uint8_t expected, uint64_t *argument, const char *error) {
    uint8_t major;
    if (!molt_cbor_read_head(reader, &major, argument)) {
        return false;
    }
    if (major != expected) {
        return molt_cbor_fail(reader, error);
    }
    return true;
}

bool molt_cbor_read_u64(molt_cbor_reader *reader, uint64_t *value) {
    return expect_major(reader, MOLT_CBOR_UNSIGNED, value, "expected an unsigned integer");
}

bool molt_cbor_read_u32(molt_cbor_reader *reader, uint32_t *value) {
    uint64_t wide;
    if (!molt_cbor_read_u64(reader, &wide)) {
        return false;
    }
    if (wide > UINT32_MAX) {
        return molt_cbor_fail(reader, "integer out of range for u32");
    }
    *value = (uint32_t)wide;
    return true;
}

bool molt_cbor_read_f64(molt_cbor_reader *reader, double *value) {
    uint8_t major;
    uint8_t info;
    uint64_t bits;
    if (!read_raw_head(reader, &major, &info, &bits)) {
        return false;
    }
    if (major != MOLT_CBOR_SIMPLE || info != 27) {
        return molt_cbor_fail(reader, "expected a 64-bit float");
    }
    memcpy(value, &bits, sizeof bits);
    if (!molt_is_finite(*value)) {
        return molt_cbor_fail(reader, "NaN or infinite float");
    }
    return true;
}

bool molt_cbor_read_text(molt_cbor_reader *reader, const uint8_t **text, size_t *len) {
    uint64_t length;
    if (!expect_major(reader, MOLT_CBOR_TEXT, &length, "expected a text string")) {
        return false;
    }
    if (length > reader->len - reader->position) {
        return molt_cbor_fail(reader, "unexpected end of input");
    }
    *text = reader->bytes + reader->position;
    *len = (size_t)length;
    reader->position += (size_t)length;
    return true;
}

bool molt_cbor_read_array(molt_cbor_reader *reader, uint64_t *count) {
    return expect_major(reader, MOLT_CBOR_ARRAY, count, "expected an array");
}

bool molt_cbor_read_map(molt_cbor_reader *reader, uint64_t *count) {
    return expect_major(reader, MOLT_CBOR_MAP, count, "expected a map");
}

static bool skip_nested(molt_cbor_reader *reader, unsigned depth) {
    if (depth > SKIP_DEPTH_MAX) {
        return molt_cbor_fail(reader, "nested too deep");
    }
    uint8_t major;
    uint64_t argument;
    if (!molt_cbor_read_head(reader, &major, &argument)) {
        return false;
    }
    switch (major) {
    case MOLT_CBOR_UNSIGNED:
    case MOLT_CBOR_NEGATIVE:
    case MOLT_CBOR_SIMPLE:
        return true;
    case MOLT_CBOR_BYTES:
    case MOLT_CBOR_TEXT:
        if (argument > reader->len - reader->position) {
            return molt_cbor_fail(reader, "unexpected end of input");
        }
        reader->position += (size_t)argument;
        return true;
    case MOLT_CBOR_ARRAY:
    case MOLT_CBOR_MAP: {
        // Each item is at least one byte: a count past the end of the input is an error before any work.
        uint64_t n_items = argument;
        if (major == MOLT_CBOR_MAP) {
            if (n_items > UINT64_MAX / 2) {
                return molt_cbor_fail(reader, "unexpected end of input");
            }
            n_items *= 2;
        }
        if (n_items > reader->len - reader->position) {
            return molt_cbor_fail(reader, "unexpected end of input");
        }
        for (uint64_t item = 0; item < n_items; item++) {
            if (!skip_nested(reader, depth + 1)) {
                return false;
            }
        }
        return true;
    }
    default:
        // A tag (DAG-CBOR allows only 42, a CID) and the value it tags.
        return skip_nested(reader, depth + 1);
    }
}

bool molt_cbor_skip(molt_cbor_reader *reader) {
    return skip_nested(reader, 0);
}

bool molt_cbor_finish(molt_cbor_reader *reader) {
    if (reader->error != NULL) {
        return false;
    }
    if (reader->position != reader->len) {
        return molt_cbor_fail(reader, "trailing bytes after the value");
    }
    return true;
}
