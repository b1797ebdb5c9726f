//! rate: a rate-of-change alert, written in Zig against the core-module contract of
//! docs/policy-authors-guide.md ("Bring your own language"), with no SDK and no bindings generator.
//!
//! For each watched sensor it publishes the rate of change between consecutive readings as telemetry
//! `rate_per_s`, and raises an alert when that rate is faster than `max_rate` units per second, rising or falling.
//!
//! Config:
//! - `max_rate` (number > 0, required): the fastest change, in units per second, that raises no alert;
//! - `sensor` (sensor id, optional): watch only this sensor; by default every sensor is watched on its own;
//! - `severity` (`info`, `warning` or `critical`, default `warning`).
//!
//! Readings that are NaN or infinite, or no later than the sensor's last reading, give no rate and are not kept.
//! At most `sensors_max` sensors are watched; a batch that would add more fails, and the state stays as it was.
//!
//! State: the DAG-CBOR map {"last": [[sensor, timestamp_ms, value], ...]} in ascending sensor order,
//! so that a restored policy picks up each sensor's rate where the old one left off.
//!
//! Build (crates/molt-cli/tests/it/policy.rs does this with the Zig that `cargo xtask deps` installs):
//!
//!     zig build-exe rate.zig -target wasm32-freestanding -fno-entry -rdynamic -O ReleaseSmall -femit-bin=rate.core.wasm
//!     molt policy build --core rate.core.wasm --output rate.wasm

const std = @import("std");

const sensors_max = 64;

// ---- Memory -----------------------------------------------------------------------------------
//
// Everything the host passes in (config, batch, state) and everything a call returns lives in a bump arena
// above the module's static data. The host copies each result out and then calls `cabi_post_<export>`,
// which empties the arena; what the policy keeps between calls is in the globals below, not in the arena.

extern const __heap_base: u8;
var arena_next: usize = 0;

fn arenaAlloc(size: usize, alignment: usize) ?[*]u8 {
    if (arena_next == 0) arena_next = @intFromPtr(&__heap_base);
    const start = std.mem.alignForward(usize, arena_next, alignment);
    const end = std.math.add(usize, start, size) catch return null;
    const have: u64 = @as(u64, @wasmMemorySize(0)) * std.wasm.page_size;
    if (end > have) {
        const pages = std.math.divCeil(u64, end - have, std.wasm.page_size) catch return null;
        if (@wasmMemoryGrow(0, @intCast(pages)) < 0) return null;
    }
    arena_next = end;
    return @ptrFromInt(start);
}

fn arenaReset() void {
    arena_next = @intFromPtr(&__heap_base);
}

export fn cabi_realloc(old_ptr: ?[*]u8, old_size: usize, alignment: usize, new_size: usize) ?[*]u8 {
    const new = arenaAlloc(new_size, alignment) orelse @trap();
    if (old_ptr) |old| @memcpy(new[0..@min(old_size, new_size)], old[0..@min(old_size, new_size)]);
    return new;
}

export fn cabi_post_init(_: usize) void {
    arenaReset();
}
export fn cabi_post_process(_: usize) void {
    arenaReset();
}
export fn cabi_post_snapshot(_: usize) void {
    arenaReset();
}
export fn cabi_post_restore(_: usize) void {
    arenaReset();
}

// ---- The canonical ABI's shapes ---------------------------------------------------------------

const Str = extern struct {
    ptr: [*]const u8,
    len: usize,

    fn slice(s: Str) []const u8 {
        return s.ptr[0..s.len];
    }
};

/// An element of `config`: list<tuple<string, string>>.
const Pair = extern struct { key: Str, value: Str };

/// An element of the batch: `reading` (32 bytes, aligned to 8).
const Reading = extern struct { sequence: u64, sensor: u32, timestamp_ms: u64, value: f64 };

const ErrorCase = enum(u8) { invalid_config = 0, invalid_state = 1, failed = 2 };
const Severity = enum(u8) { info = 0, warning = 1, critical = 2 };

/// A `result<_, policy-error>` or `result<list<action>, policy-error>` return area: 16 bytes.
var result_area: [16]u8 align(8) = undefined;
/// The `list<u8>` return area of `snapshot`: 8 bytes.
var list_area: [8]u8 align(8) = undefined;

fn put(comptime T: type, bytes: [*]u8, offset: usize, value: T) void {
    const Int = std.meta.Int(.unsigned, @bitSizeOf(T));
    std.mem.writeInt(Int, bytes[offset..][0..@sizeOf(T)], @bitCast(value), .little);
}

fn ok(list: ?[]const u8, count: usize) [*]u8 {
    result_area[0] = 0;
    if (list) |bytes| {
        put(u32, &result_area, 4, @intFromPtr(bytes.ptr));
        put(u32, &result_area, 8, count);
    }
    return &result_area;
}

fn fail(case: ErrorCase, comptime fmt: []const u8, args: anytype) [*]u8 {
    var scratch: [256]u8 = undefined;
    const text = std.fmt.bufPrint(&scratch, fmt, args) catch "the error message is longer than 256 bytes";
    const message = arenaAlloc(text.len, 1) orelse @trap();
    @memcpy(message[0..text.len], text);
    result_area[0] = 1;
    result_area[4] = @intFromEnum(case);
    put(u32, &result_area, 8, @intFromPtr(message));
    put(u32, &result_area, 12, text.len);
    return &result_area;
}

// ---- Config -----------------------------------------------------------------------------------

const Settings = struct {
    max_rate: f64,
    sensor: ?u32,
    severity: Severity,
};

const known_keys = [_][]const u8{ "max_rate", "sensor", "severity" };

const ConfigError = struct { key: []const u8, problem: []const u8, value: []const u8 };

fn get(config: []const Pair, key: []const u8) ?[]const u8 {
    for (config) |pair| {
        if (std.mem.eql(u8, pair.key.slice(), key)) return pair.value.slice();
    }
    return null;
}

/// The settings, or the error that `init` and `restore` return; the messages follow the Rust SDK's wording.
fn parseSettings(config: []const Pair) union(enum) { settings: Settings, err: [*]u8 } {
    for (config) |pair| {
        const key = pair.key.slice();
        for (known_keys) |known| {
            if (std.mem.eql(u8, key, known)) break;
        } else return .{ .err = fail(.invalid_config, "unknown key `{s}` (known keys: max_rate, sensor, severity)", .{key}) };
    }
    const max_rate_text = get(config, "max_rate") orelse
        return .{ .err = fail(.invalid_config, "missing key `max_rate`", .{}) };
    const max_rate = std.fmt.parseFloat(f64, max_rate_text) catch
        return .{ .err = fail(.invalid_config, "`max_rate`: expected a number, got `{s}`", .{max_rate_text}) };
    if (!std.math.isFinite(max_rate) or max_rate <= 0)
        return .{ .err = fail(.invalid_config, "`max_rate`: must be a finite number above 0, got `{s}`", .{max_rate_text}) };
    var sensor: ?u32 = null;
    if (get(config, "sensor")) |text| {
        sensor = std.fmt.parseInt(u32, text, 10) catch
            return .{ .err = fail(.invalid_config, "`sensor`: expected a sensor id (0 to 4294967295), got `{s}`", .{text}) };
    }
    var severity: Severity = .warning;
    if (get(config, "severity")) |text| {
        severity = std.meta.stringToEnum(Severity, text) orelse
            return .{ .err = fail(.invalid_config, "`severity`: expected `info`, `warning` or `critical`, got `{s}`", .{text}) };
    }
    return .{ .settings = .{ .max_rate = max_rate, .sensor = sensor, .severity = severity } };
}

// ---- State ------------------------------------------------------------------------------------

const Last = struct { sensor: u32, timestamp_ms: u64, value: f64 };

/// Each watched sensor's last reading, in ascending sensor order.
const Tracked = struct {
    items: [sensors_max]Last = undefined,
    len: usize = 0,

    /// Where `sensor` is, or would be inserted, and whether it is there.
    fn find(self: *const Tracked, sensor: u32) struct { index: usize, found: bool } {
        var low: usize = 0;
        var high = self.len;
        while (low < high) {
            const middle = low + (high - low) / 2;
            if (self.items[middle].sensor < sensor) low = middle + 1 else high = middle;
        }
        return .{ .index = low, .found = low < self.len and self.items[low].sensor == sensor };
    }
};

var ready = false;
var settings: Settings = undefined;
var tracked: Tracked = .{};

// ---- Exports ----------------------------------------------------------------------------------

export fn init(config_ptr: [*]const Pair, config_len: usize) [*]u8 {
    switch (parseSettings(config_ptr[0..config_len])) {
        .err => |err| return err,
        .settings => |parsed| settings = parsed,
    }
    tracked = .{};
    ready = true;
    return ok(null, 0);
}

export fn process(batch_ptr: [*]const Reading, batch_len: usize) [*]u8 {
    if (!ready) return fail(.failed, "process called before init", .{});
    const batch = batch_ptr[0..batch_len];
    // At most a telemetry and an alert per reading, 40 bytes each.
    const actions = arenaAlloc(batch.len * 2 * 40, 8) orelse @trap();
    var count: usize = 0;
    // Changed on a copy, so that a batch that fails leaves the state as it was.
    var next = tracked;
    for (batch) |reading| {
        if (settings.sensor) |only| if (reading.sensor != only) continue;
        if (!std.math.isFinite(reading.value)) continue;
        const at = next.find(reading.sensor);
        if (!at.found) {
            if (next.len == sensors_max)
                return fail(.failed, "sensor {d} would be the {d}th watched sensor; at most {d} are (sensors_max)", .{ reading.sensor, sensors_max + 1, sensors_max });
            std.mem.copyBackwards(Last, next.items[at.index + 1 .. next.len + 1], next.items[at.index..next.len]);
            next.len += 1;
            next.items[at.index] = .{ .sensor = reading.sensor, .timestamp_ms = reading.timestamp_ms, .value = reading.value };
            continue;
        }
        const last = &next.items[at.index];
        if (reading.timestamp_ms <= last.timestamp_ms) continue;
        const seconds = @as(f64, @floatFromInt(reading.timestamp_ms - last.timestamp_ms)) / 1000.0;
        const rate = (reading.value - last.value) / seconds;
        last.* = .{ .sensor = reading.sensor, .timestamp_ms = reading.timestamp_ms, .value = reading.value };

        const telemetry = actions + count * 40;
        telemetry[0] = 0;
        put(u32, telemetry, 8, reading.sensor);
        put(u64, telemetry, 16, reading.timestamp_ms);
        put(u32, telemetry, 24, @intFromPtr(metric_name.ptr));
        put(u32, telemetry, 28, metric_name.len);
        put(f64, telemetry, 32, rate);
        count += 1;

        if (@abs(rate) > settings.max_rate) {
            var scratch: [128]u8 = undefined;
            const text = std.fmt.bufPrint(&scratch, "changing at {d:.2} per s, faster than max_rate {d}", .{ rate, settings.max_rate }) catch unreachable;
            const message = arenaAlloc(text.len, 1) orelse @trap();
            @memcpy(message[0..text.len], text);
            const alert = actions + count * 40;
            alert[0] = 1;
            put(u32, alert, 8, reading.sensor);
            put(u64, alert, 16, reading.timestamp_ms);
            alert[24] = @intFromEnum(settings.severity);
            put(u32, alert, 28, @intFromPtr(message));
            put(u32, alert, 32, text.len);
            count += 1;
        }
    }
    tracked = next;
    return ok(actions[0 .. count * 40], count);
}

const metric_name: []const u8 = "rate_per_s";

/// Canonical DAG-CBOR: the shortest head for every integer, 64-bit floats, the one map key.
const Writer = struct {
    bytes: [*]u8,
    len: usize = 0,

    fn head(w: *Writer, major: u8, value: u64) void {
        if (value < 24) {
            w.byte(major << 5 | @as(u8, @intCast(value)));
        } else if (value <= std.math.maxInt(u8)) {
            w.byte(major << 5 | 24);
            w.byte(@intCast(value));
        } else if (value <= std.math.maxInt(u16)) {
            w.byte(major << 5 | 25);
            w.big(u16, @intCast(value));
        } else if (value <= std.math.maxInt(u32)) {
            w.byte(major << 5 | 26);
            w.big(u32, @intCast(value));
        } else {
            w.byte(major << 5 | 27);
            w.big(u64, value);
        }
    }
    fn byte(w: *Writer, b: u8) void {
        w.bytes[w.len] = b;
        w.len += 1;
    }
    fn big(w: *Writer, comptime T: type, value: T) void {
        std.mem.writeInt(T, w.bytes[w.len..][0..@sizeOf(T)], value, .big);
        w.len += @sizeOf(T);
    }
};

export fn snapshot() [*]u8 {
    // 1 + 5 + 9 bytes of heads, and per sensor at most 1 + 5 + 9 + 9.
    const bytes = arenaAlloc(15 + tracked.len * 24, 1) orelse @trap();
    var w = Writer{ .bytes = bytes };
    w.head(5, 1);
    w.head(3, 4);
    for ("last") |b| w.byte(b);
    w.head(4, tracked.len);
    for (tracked.items[0..tracked.len]) |last| {
        w.head(4, 3);
        w.head(0, last.sensor);
        w.head(0, last.timestamp_ms);
        w.byte(0xfb);
        w.big(u64, @bitCast(last.value));
    }
    put(u32, &list_area, 0, @intFromPtr(bytes));
    put(u32, &list_area, 4, w.len);
    return &list_area;
}

/// Reads exactly what `snapshot` writes, and nothing else.
const Reader = struct {
    bytes: []const u8,
    at: usize = 0,

    const Bad = error{Bad};

    /// An item's head: its major type and argument, refusing what canonical DAG-CBOR forbids.
    fn head(r: *Reader, major: u8) Bad!u64 {
        const first = try r.take(1);
        if (first[0] >> 5 != major) return error.Bad;
        const info = first[0] & 0x1f;
        const value: u64 = switch (info) {
            0...23 => return info,
            24 => (try r.take(1))[0],
            25 => std.mem.readInt(u16, (try r.take(2))[0..2], .big),
            26 => std.mem.readInt(u32, (try r.take(4))[0..4], .big),
            27 => std.mem.readInt(u64, (try r.take(8))[0..8], .big),
            else => return error.Bad,
        };
        const shortest: u64 = switch (info) {
            24 => 24,
            25 => 0x100,
            26 => 0x1_0000,
            else => 0x1_0000_0000,
        };
        if (value < shortest) return error.Bad;
        return value;
    }
    fn take(r: *Reader, n: usize) Bad![]const u8 {
        if (r.bytes.len - r.at < n) return error.Bad;
        defer r.at += n;
        return r.bytes[r.at..][0..n];
    }
};

fn decodeState(bytes: []const u8) Reader.Bad!Tracked {
    var r = Reader{ .bytes = bytes };
    if (try r.head(5) != 1 or try r.head(3) != 4 or !std.mem.eql(u8, try r.take(4), "last")) return error.Bad;
    const len = try r.head(4);
    if (len > sensors_max) return error.Bad;
    var state = Tracked{ .len = @intCast(len) };
    for (state.items[0..state.len], 0..) |*last, i| {
        if (try r.head(4) != 3) return error.Bad;
        const sensor = try r.head(0);
        if (sensor > std.math.maxInt(u32)) return error.Bad;
        const timestamp_ms = try r.head(0);
        if ((try r.take(1))[0] != 0xfb) return error.Bad;
        const value: f64 = @bitCast(std.mem.readInt(u64, (try r.take(8))[0..8], .big));
        if (!std.math.isFinite(value)) return error.Bad;
        if (i > 0 and state.items[i - 1].sensor >= sensor) return error.Bad;
        last.* = .{ .sensor = @intCast(sensor), .timestamp_ms = timestamp_ms, .value = value };
    }
    if (r.at != bytes.len) return error.Bad;
    return state;
}

export fn restore(config_ptr: [*]const Pair, config_len: usize, state_ptr: [*]const u8, state_len: usize) [*]u8 {
    const parsed = switch (parseSettings(config_ptr[0..config_len])) {
        .err => |err| return err,
        .settings => |parsed| parsed,
    };
    const state = decodeState(state_ptr[0..state_len]) catch return fail(
        .invalid_state,
        "not a rate state: expected the DAG-CBOR map {{\"last\": [[sensor, timestamp_ms, value], ...]}} of at most {d} sensors in ascending order",
        .{sensors_max},
    );
    settings = parsed;
    tracked = state;
    ready = true;
    return ok(null, 0);
}
