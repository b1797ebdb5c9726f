// Numbers as Rust reads and writes them, so that a C policy takes the same config and writes the same messages as a Rust one.
//
// Both directions are exact, with big integers (Burger and Dybvig's shortest digits to write, a long division to read),
// but for Clinger's fast path in reading, where a single IEEE operation is exact by construction; WebAssembly's f64 arithmetic is IEEE 754 on every host.

#include <stdlib.h>
#include <string.h>

#include "molt.h"

// ---- Big unsigned integers ------------------------------------------------------------------

// 128 words = 4096 bits. The largest number is a denominator of 10^1093 (769 digits read with an exponent of -1093; 3631 bits) shifted by 55 bits.
#define BIG_WORDS 128

typedef struct big {
    uint32_t words[BIG_WORDS];
    // Words in use; the top one is never zero.
    size_t len;
} big;

static void big_set_u64(big *number, uint64_t value) {
    number->words[0] = (uint32_t)value;
    number->words[1] = (uint32_t)(value >> 32);
    number->len = value == 0 ? 0 : value >> 32 == 0 ? 1 : 2;
}

// Copies only the words in use: a big is 520 bytes, most of them unused.
static void big_copy(big *destination, const big *source) {
    memcpy(destination->words, source->words, source->len * sizeof(uint32_t));
    destination->len = source->len;
}

static bool big_is_zero(const big *number) {
    return number->len == 0;
}

static void big_trim(big *number) {
    while (number->len > 0 && number->words[number->len - 1] == 0) {
        number->len--;
    }
}

static void big_push_carry(big *number, uint32_t carry) {
    if (carry != 0) {
        // The sizes above are proven to fit: overflowing is a bug, not an input.
        if (number->len == BIG_WORDS) {
            __builtin_trap();
        }
        number->words[number->len] = carry;
        number->len++;
    }
}

static void big_mul_small(big *number, uint32_t factor) {
    uint32_t carry = 0;
    for (size_t index = 0; index < number->len; index++) {
        uint64_t product = (uint64_t)number->words[index] * factor + carry;
        number->words[index] = (uint32_t)product;
        carry = (uint32_t)(product >> 32);
    }
    big_push_carry(number, carry);
    big_trim(number);
}

static void big_add_small(big *number, uint32_t addend) {
    uint32_t carry = addend;
    for (size_t index = 0; index < number->len && carry != 0; index++) {
        uint64_t sum = (uint64_t)number->words[index] + carry;
        number->words[index] = (uint32_t)sum;
        carry = (uint32_t)(sum >> 32);
    }
    big_push_carry(number, carry);
}

static void big_mul_pow10(big *number, uint32_t exponent) {
    static const uint32_t POW10[10] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000};
    while (exponent >= 9) {
        big_mul_small(number, POW10[9]);
        exponent -= 9;
    }
    big_mul_small(number, POW10[exponent]);
}

static void big_shl(big *number, uint32_t bits) {
    if (big_is_zero(number)) {
        return;
    }
    size_t word_shift = bits / 32;
    uint32_t bit_shift = bits % 32;
    if (number->len + word_shift + 1 > BIG_WORDS) {
        __builtin_trap();
    }
    number->words[number->len + word_shift] = 0;
    for (size_t index = number->len; index > 0; index--) {
        uint32_t word = number->words[index - 1];
        if (bit_shift != 0) {
            number->words[index + word_shift] |= word >> (32 - bit_shift);
        }
        number->words[index - 1 + word_shift] = word << bit_shift;
    }
    for (size_t index = 0; index < word_shift; index++) {
        number->words[index] = 0;
    }
    number->len += word_shift + 1;
    big_trim(number);
}

static void big_shr1(big *number) {
    for (size_t index = 0; index < number->len; index++) {
        uint32_t high = index + 1 < number->len ? number->words[index + 1] : 0;
        number->words[index] = (number->words[index] >> 1) | (high << 31);
    }
    big_trim(number);
}

static int big_cmp(const big *left, const big *right) {
    if (left->len != right->len) {
        return left->len < right->len ? -1 : 1;
    }
    for (size_t index = left->len; index > 0; index--) {
        if (left->words[index - 1] != right->words[index - 1]) {
            return left->words[index - 1] < right->words[index - 1] ? -1 : 1;
        }
    }
    return 0;
}

// left += right
static void big_add(big *left, const big *right) {
    size_t len = left->len > right->len ? left->len : right->len;
    uint32_t carry = 0;
    for (size_t index = 0; index < len; index++) {
        uint64_t sum = (uint64_t)(index < left->len ? left->words[index] : 0) +
                       (index < right->len ? right->words[index] : 0) + carry;
        left->words[index] = (uint32_t)sum;
        carry = (uint32_t)(sum >> 32);
    }
    left->len = len;
    big_push_carry(left, carry);
}

// left -= right, where left >= right
static void big_sub(big *left, const big *right) {
    uint32_t borrow = 0;
    for (size_t index = 0; index < left->len; index++) {
        uint64_t subtrahend = (uint64_t)(index < right->len ? right->words[index] : 0) + borrow;
        uint64_t word = left->words[index];
        borrow = word < subtrahend;
        left->words[index] = (uint32_t)(word - subtrahend);
    }
    if (borrow != 0) {
        __builtin_trap();
    }
    big_trim(left);
}

static uint32_t big_bit_len(const big *number) {
    if (big_is_zero(number)) {
        return 0;
    }
    return (uint32_t)(32 * number->len) - (uint32_t)__builtin_clz(number->words[number->len - 1]);
}

// ---- Writing: Rust's `{}` for f64 -----------------------------------------------------------

// Burger and Dybvig's free-format algorithm, as Rust's core::num::flt2dec runs it:
// the shortest digits that read back as the value, and of those the closest.
// `mant * 2^exp` is the value; it rounds back from anything strictly between `(mant - minus) * 2^exp` and `(mant + plus) * 2^exp`,
// and from the bounds themselves when `inclusive`.
// Writes at most 17 digits and returns how many; `*decimal_exponent` is k for the value 0.d1d2... * 10^k.
static size_t shortest_digits(uint64_t mantissa, uint64_t minus_steps, uint64_t plus_steps, int32_t exponent, bool inclusive,
                              char digits[17], int32_t *decimal_exponent) {
    // `a < b`, or `a <= b` when the bounds are included.
    int stop_below = inclusive ? 1 : 0;

    // An estimate k with 10^(k-1) < high <= 10^(k+1): floor(log10(2) * 2^32) = 1292913986.
    uint64_t high_mantissa = mantissa + plus_steps;
    int64_t n_bits = 64 - __builtin_clzll(high_mantissa - 1);
    int32_t k = (int32_t)(((n_bits + exponent) * 1292913986LL) >> 32);

    big mant, minus, plus, scale;
    big_set_u64(&mant, mantissa);
    big_set_u64(&minus, minus_steps);
    big_set_u64(&plus, plus_steps);
    big_set_u64(&scale, 1);
    if (exponent < 0) {
        big_shl(&scale, (uint32_t)-exponent);
    } else {
        big_shl(&mant, (uint32_t)exponent);
        big_shl(&minus, (uint32_t)exponent);
        big_shl(&plus, (uint32_t)exponent);
    }
    if (k >= 0) {
        big_mul_pow10(&scale, (uint32_t)k);
    } else {
        big_mul_pow10(&mant, (uint32_t)-k);
        big_mul_pow10(&minus, (uint32_t)-k);
        big_mul_pow10(&plus, (uint32_t)-k);
    }

    // The estimate may be one too low: then `scale < mant + plus` and k goes up instead of everything being scaled by ten.
    big sum;
    big_copy(&sum, &mant);
    big_add(&sum, &plus);
    if (big_cmp(&scale, &sum) < stop_below) {
        k++;
    } else {
        big_mul_small(&mant, 10);
        big_mul_small(&minus, 10);
        big_mul_small(&plus, 10);
    }

    big scale2, scale4, scale8;
    big_copy(&scale2, &scale);
    big_copy(&scale4, &scale);
    big_copy(&scale8, &scale);
    big_shl(&scale2, 1);
    big_shl(&scale4, 2);
    big_shl(&scale8, 3);

    size_t n_digits = 0;
    bool down;
    bool up;
    for (;;) {
        uint8_t digit = 0;
        if (big_cmp(&mant, &scale8) >= 0) {
            big_sub(&mant, &scale8);
            digit += 8;
        }
        if (big_cmp(&mant, &scale4) >= 0) {
            big_sub(&mant, &scale4);
            digit += 4;
        }
        if (big_cmp(&mant, &scale2) >= 0) {
            big_sub(&mant, &scale2);
            digit += 2;
        }
        if (big_cmp(&mant, &scale) >= 0) {
            big_sub(&mant, &scale);
            digit += 1;
        }
        if (digit > 9 || n_digits == 17) {
            __builtin_trap();
        }
        digits[n_digits++] = (char)('0' + digit);

        // Stop when the digits so far already read back as the value (rounding down),
        // or when the next digit up does (rounding up).
        down = big_cmp(&mant, &minus) < stop_below;
        big_copy(&sum, &mant);
        big_add(&sum, &plus);
        up = big_cmp(&scale, &sum) < stop_below;
        if (down || up) {
            break;
        }
        big_mul_small(&mant, 10);
        big_mul_small(&minus, 10);
        big_mul_small(&plus, 10);
    }

    // Both ways read back: take the closer, and up on a tie.
    if (up) {
        big twice;
        big_copy(&twice, &mant);
        big_shl(&twice, 1);
        if (!down || big_cmp(&twice, &scale) >= 0) {
            size_t index = n_digits;
            while (index > 0 && digits[index - 1] == '9') {
                digits[--index] = '0';
            }
            if (index > 0) {
                digits[index - 1]++;
            } else {
                // 99..9 became 100..0: one more digit, in the exponent.
                digits[0] = '1';
                if (n_digits == 17) {
                    __builtin_trap();
                }
                digits[n_digits++] = '0';
                k++;
            }
        }
    }
    *decimal_exponent = k;
    return n_digits;
}

static uint64_t f64_bits(double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static double f64_from_bits(uint64_t bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// Up to 324 of them, for the smallest subnormal.
static void push_zeros(molt_buf *buf, size_t n_zeros) {
    static const char ZEROS[64] = "0000000000000000000000000000000000000000000000000000000000000000";
    while (n_zeros > 0) {
        size_t chunk = n_zeros < sizeof ZEROS ? n_zeros : sizeof ZEROS;
        molt_buf_push(buf, ZEROS, chunk);
        n_zeros -= chunk;
    }
}

void molt_buf_f64(molt_buf *buf, double value) {
    uint64_t bits = f64_bits(value);
    bool negative = bits >> 63 != 0;
    uint32_t biased_exponent = (uint32_t)((bits >> 52) & 0x7ff);
    uint64_t fraction = bits & ((UINT64_C(1) << 52) - 1);

    if (biased_exponent == 0x7ff && fraction != 0) {
        molt_buf_str(buf, "NaN");
        return;
    }
    if (negative) {
        molt_buf_byte(buf, '-');
    }
    if (biased_exponent == 0x7ff) {
        molt_buf_str(buf, "inf");
        return;
    }
    if (biased_exponent == 0 && fraction == 0) {
        molt_buf_byte(buf, '0');
        return;
    }

    // An integer below 2^53 is its own shortest form: its neighbours are at least 1 away, so no other digits read back as it.
    uint64_t magnitude_bits = bits & ~(UINT64_C(1) << 63);
    double magnitude = f64_from_bits(magnitude_bits);
    if (magnitude < 9007199254740992.0 && (double)(uint64_t)magnitude == magnitude) {
        molt_buf_u64(buf, (uint64_t)magnitude);
        return;
    }

    // The neighbours of the value, as Rust decodes them: half-way to each is the range that reads back as the value.
    uint64_t mantissa;
    uint64_t minus_steps = 1;
    uint64_t plus_steps = 1;
    int32_t exponent;
    bool inclusive;
    if (biased_exponent == 0) {
        // Subnormal: the same spacing on both sides.
        mantissa = fraction << 1;
        exponent = -1075;
        inclusive = true;
    } else {
        uint64_t significand = fraction | (UINT64_C(1) << 52);
        inclusive = (significand & 1) == 0;
        if (fraction == 0) {
            // A power of two: the neighbour below is half as far as the one above.
            mantissa = significand << 2;
            plus_steps = 2;
            exponent = (int32_t)biased_exponent - 1075 - 2;
        } else {
            mantissa = significand << 1;
            exponent = (int32_t)biased_exponent - 1075 - 1;
        }
    }

    char digits[17];
    int32_t k;
    size_t n_digits = shortest_digits(mantissa, minus_steps, plus_steps, exponent, inclusive, digits, &k);

    // 0.d1d2... * 10^k, written without an exponent.
    if (k <= 0) {
        molt_buf_str(buf, "0.");
        push_zeros(buf, (size_t)-k);
        molt_buf_push(buf, digits, n_digits);
    } else if ((size_t)k < n_digits) {
        molt_buf_push(buf, digits, (size_t)k);
        molt_buf_byte(buf, '.');
        molt_buf_push(buf, digits + k, n_digits - (size_t)k);
    } else {
        molt_buf_push(buf, digits, n_digits);
        push_zeros(buf, (size_t)k - n_digits);
    }
}

// ---- Reading: Rust's `str::parse` -----------------------------------------------------------

// Halfway points between doubles have at most 767 significant digits, so the first 768 digits and whether any later digit is not zero decide the rounding.
#define SIGNIFICANT_DIGITS_MAX 768
// Beyond these the value is infinite or zero whatever the digits; the exponent saturates there.
#define DECIMAL_EXPONENT_MAX 400
#define DECIMAL_EXPONENT_MIN (-400)
#define EXPONENT_SATURATION 1000000

static bool ascii_lower_equals(const uint8_t *text, size_t len, const char *lower) {
    if (strlen(lower) != len) {
        return false;
    }
    for (size_t index = 0; index < len; index++) {
        uint8_t byte = text[index];
        if (byte >= 'A' && byte <= 'Z') {
            byte = (uint8_t)(byte - 'A' + 'a');
        }
        if (byte != (uint8_t)lower[index]) {
            return false;
        }
    }
    return true;
}

// The double nearest to digits * 10^decimal_exponent (ties to even), where `digits` holds `n_digits` decimal digits, the first not zero.
static double nearest_double(const char *digits, size_t n_digits, int32_t decimal_exponent) {
    // Far out of range either way: no need for big numbers.
    int64_t magnitude = (int64_t)n_digits + decimal_exponent;
    if (magnitude > 310) {
        return f64_from_bits(UINT64_C(0x7ff) << 52);
    }
    if (magnitude < -324) {
        return 0.0;
    }

    // Clinger's fast path, for the numbers people write: when the digits and the power of ten are both exact doubles,
    // one IEEE multiplication or division rounds correctly by itself.
    if (n_digits <= 15 && decimal_exponent >= -22 && decimal_exponent <= 22) {
        static const double EXACT_POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
        uint64_t integer = 0;
        for (size_t index = 0; index < n_digits; index++) {
            integer = integer * 10 + (uint64_t)(digits[index] - '0');
        }
        // Below 10^15 < 2^53: converted exactly.
        double exact = (double)integer;
        return decimal_exponent >= 0 ? exact * EXACT_POW10[decimal_exponent] : exact / EXACT_POW10[-decimal_exponent];
    }

    // value = numerator / denominator * 2^binary_exponent
    big numerator, denominator;
    big_set_u64(&numerator, 0);
    for (size_t index = 0; index < n_digits; index++) {
        big_mul_small(&numerator, 10);
        big_add_small(&numerator, (uint32_t)(digits[index] - '0'));
    }
    big_set_u64(&denominator, 1);
    if (decimal_exponent >= 0) {
        big_mul_pow10(&numerator, (uint32_t)decimal_exponent);
    } else {
        big_mul_pow10(&denominator, (uint32_t)-decimal_exponent);
    }
    // Scale so that the quotient has 54 or 55 bits: 53 for the significand and at least one to round with.
    int32_t binary_exponent = (int32_t)big_bit_len(&numerator) - (int32_t)big_bit_len(&denominator) - 54;
    if (binary_exponent < 0) {
        big_shl(&numerator, (uint32_t)-binary_exponent);
    } else {
        big_shl(&denominator, (uint32_t)binary_exponent);
    }
    // Long division, one quotient bit at a time.
    uint64_t quotient = 0;
    big shifted;
    big_copy(&shifted, &denominator);
    big_shl(&shifted, 55);
    for (int bit = 55; bit >= 0; bit--) {
        if (big_cmp(&numerator, &shifted) >= 0) {
            big_sub(&numerator, &shifted);
            quotient |= UINT64_C(1) << bit;
        }
        big_shr1(&shifted);
    }
    bool remainder = !big_is_zero(&numerator);
    int32_t quotient_bits = 64 - __builtin_clzll(quotient);
    if (quotient_bits < 54 || quotient_bits > 55) {
        __builtin_trap();
    }

    // Drop the bits below the significand, or more for a subnormal, rounding half to even.
    int32_t drop = quotient_bits - 53;
    if (binary_exponent + drop < -1074) {
        drop = -1074 - binary_exponent;
    }
    if (drop > quotient_bits) {
        // Below half the smallest subnormal.
        return 0.0;
    }
    uint64_t significand = drop >= 64 ? 0 : quotient >> drop;
    bool half = (quotient >> (drop - 1)) & 1;
    bool below_half = (quotient & ((UINT64_C(1) << (drop - 1)) - 1)) != 0 || remainder;
    if (half && (below_half || (significand & 1) != 0)) {
        significand++;
    }
    int32_t exponent = binary_exponent + drop;
    if (significand == UINT64_C(1) << 53) {
        significand >>= 1;
        exponent++;
    }
    if (significand < UINT64_C(1) << 52) {
        // Subnormal: exponent is -1074, the biased exponent 0.
        return f64_from_bits(significand);
    }
    int32_t biased = exponent + 52 + 1023;
    if (biased >= 0x7ff) {
        return f64_from_bits(UINT64_C(0x7ff) << 52);
    }
    return f64_from_bits(((uint64_t)biased << 52) | (significand & ((UINT64_C(1) << 52) - 1)));
}

bool molt_parse_f64(const uint8_t *text, size_t len, double *value) {
    size_t position = 0;
    bool negative = false;
    if (position < len && (text[position] == '+' || text[position] == '-')) {
        negative = text[position] == '-';
        position++;
    }
    double magnitude;
    const uint8_t *rest = text + position;
    size_t rest_len = len - position;
    if (ascii_lower_equals(rest, rest_len, "inf") || ascii_lower_equals(rest, rest_len, "infinity")) {
        magnitude = f64_from_bits(UINT64_C(0x7ff) << 52);
    } else if (ascii_lower_equals(rest, rest_len, "nan")) {
        // Rust's NaN has the sign bit clear whatever the sign written.
        *value = f64_from_bits(UINT64_C(0x7ff8) << 48);
        return true;
    } else {
        // digits [. digits] [(e|E) [+-] digits], with at least one digit before the exponent.
        char digits[SIGNIFICANT_DIGITS_MAX + 1];
        size_t n_digits = 0;
        bool dropped_nonzero = false;
        int64_t decimal_exponent = 0;
        size_t n_mantissa_digits = 0;
        bool seen_point = false;
        for (; position < len; position++) {
            uint8_t byte = text[position];
            if (byte == '.' && !seen_point) {
                seen_point = true;
                continue;
            }
            if (byte < '0' || byte > '9') {
                break;
            }
            n_mantissa_digits++;
            if (n_digits == 0 && byte == '0') {
                // A leading zero: only the point's position matters.
                if (seen_point) {
                    decimal_exponent--;
                }
                continue;
            }
            if (n_digits < SIGNIFICANT_DIGITS_MAX) {
                digits[n_digits++] = (char)byte;
                if (seen_point) {
                    decimal_exponent--;
                }
            } else {
                dropped_nonzero |= byte != '0';
                if (!seen_point) {
                    decimal_exponent++;
                }
            }
        }
        if (n_mantissa_digits == 0) {
            return false;
        }
        if (position < len && (text[position] == 'e' || text[position] == 'E')) {
            position++;
            bool exponent_negative = false;
            if (position < len && (text[position] == '+' || text[position] == '-')) {
                exponent_negative = text[position] == '-';
                position++;
            }
            size_t exponent_start = position;
            int64_t written_exponent = 0;
            for (; position < len && text[position] >= '0' && text[position] <= '9'; position++) {
                if (written_exponent < EXPONENT_SATURATION) {
                    written_exponent = written_exponent * 10 + (text[position] - '0');
                }
            }
            if (position == exponent_start) {
                return false;
            }
            decimal_exponent += exponent_negative ? -written_exponent : written_exponent;
        }
        if (position != len) {
            return false;
        }
        if (dropped_nonzero) {
            // Stands for the dropped digits: above the kept ones, below the next 768-digit number.
            digits[n_digits++] = '1';
            decimal_exponent--;
        }
        if (n_digits == 0) {
            magnitude = 0.0;
        } else if (decimal_exponent + (int64_t)n_digits > DECIMAL_EXPONENT_MAX) {
            magnitude = f64_from_bits(UINT64_C(0x7ff) << 52);
        } else if (decimal_exponent + (int64_t)n_digits < DECIMAL_EXPONENT_MIN) {
            magnitude = 0.0;
        } else {
            magnitude = nearest_double(digits, n_digits, (int32_t)decimal_exponent);
        }
    }
    *value = negative ? -magnitude : magnitude;
    return true;
}

bool molt_parse_u64(const uint8_t *text, size_t len, uint64_t *value) {
    size_t position = 0;
    if (position < len && text[position] == '+') {
        position++;
    }
    if (position == len) {
        return false;
    }
    uint64_t parsed = 0;
    for (; position < len; position++) {
        uint8_t byte = text[position];
        if (byte < '0' || byte > '9') {
            return false;
        }
        uint64_t digit = byte - '0';
        if (parsed > (UINT64_MAX - digit) / 10) {
            return false;
        }
        parsed = parsed * 10 + digit;
    }
    *value = parsed;
    return true;
}

bool molt_parse_u32(const uint8_t *text, size_t len, uint32_t *value) {
    uint64_t parsed;
    if (!molt_parse_u64(text, len, &parsed) || parsed > UINT32_MAX) {
        return false;
    }
    *value = (uint32_t)parsed;
    return true;
}

// Rust's `char::is_whitespace`: the Unicode White_Space property.
static bool is_white_space(uint32_t code_point) {
    return (code_point >= 0x09 && code_point <= 0x0d) || code_point == 0x20 || code_point == 0x85 || code_point == 0xa0 ||
           code_point == 0x1680 || (code_point >= 0x2000 && code_point <= 0x200a) || code_point == 0x2028 ||
           code_point == 0x2029 || code_point == 0x202f || code_point == 0x205f || code_point == 0x3000;
}

// The code point of the (valid, as the host guarantees) UTF-8 sequence at `text`, and its length.
static uint32_t decode_utf8(const uint8_t *text, size_t len, size_t *sequence_len) {
    uint8_t lead = text[0];
    size_t n_bytes = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
    if (n_bytes > len) {
        n_bytes = len;
    }
    uint32_t code_point = n_bytes == 1 ? lead : n_bytes == 2 ? lead & 0x1fu : n_bytes == 3 ? lead & 0x0fu : lead & 0x07u;
    for (size_t index = 1; index < n_bytes; index++) {
        code_point = (code_point << 6) | (text[index] & 0x3fu);
    }
    *sequence_len = n_bytes;
    return code_point;
}

void molt_trim(const uint8_t **text, size_t *len) {
    size_t sequence_len;
    while (*len > 0 && is_white_space(decode_utf8(*text, *len, &sequence_len))) {
        *text += sequence_len;
        *len -= sequence_len;
    }
    while (*len > 0) {
        // Back to the start of the last character.
        size_t start = *len - 1;
        while (start > 0 && ((*text)[start] & 0xc0) == 0x80) {
            start--;
        }
        if (!is_white_space(decode_utf8(*text + start, *len - start, &sequence_len))) {
            break;
        }
        *len = start;
    }
}
