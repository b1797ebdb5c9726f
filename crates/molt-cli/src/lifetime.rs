//! Metadata lifetimes on the command line: `30d`, `12h`, `90m`, `3600s`,
//! `2w`.

use std::time::Duration;

/// Upper bound on any lifetime given on the command line
/// (`lifetime_max`): ten years, far beyond any sane expiry.
const LIFETIME_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses `<number><unit>` with unit `s`, `m`, `h`, `d` or `w`.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split_at);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        "w" => 7 * 24 * 3600,
        _ => {
            return Err(format!(
                "expected a number and a unit s, m, h, d or w (e.g. 30d), got `{text}`"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a number before the unit (e.g. 30d), got `{text}`"))?;
    let duration = number.checked_mul(unit_secs).map(Duration::from_secs);
    match duration {
        Some(duration) if duration.is_zero() => Err("a lifetime must be longer than zero".to_owned()),
        Some(duration) if duration <= LIFETIME_MAX => Ok(duration),
        _ => Err(format!("`{text}` is longer than lifetime_max (10 years)")),
    }
}

/// Formats a lifetime in the largest unit that divides it: `30d`, `90m`.
pub(crate) fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    for (unit, unit_secs) in [("w", 7 * 24 * 3600), ("d", 24 * 3600), ("h", 3600), ("m", 60)] {
        if secs >= unit_secs && secs.is_multiple_of(unit_secs) {
            return format!("{}{unit}", secs / unit_secs);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests;
