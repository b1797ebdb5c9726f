//! The statistics behind the health gates, written from their definitions.
//!
//! - [`rate_test`]: a one-sided test that the updated devices' event rate
//!   (per device-hour) exceeds the control group's by more than a tolerated
//!   ratio: the conditional binomial test for two Poisson rates, made robust to
//!   overdispersion by quasi-Poisson scaling of the counts.
//! - [`mann_whitney`]: Kayenta's Mann-Whitney U for operator metrics (one value
//!   per device), with the tie correction and a continuity correction.
//! - [`binomial_upper_tail`]: the install failure gate.
//!
//! `docs/rollouts.md` says why these and not others.

use serde::{Deserialize, Serialize};

/// `ln Γ(x)` for `x > 0`, by the Lanczos approximation (g = 7, nine terms),
/// with the reflection formula below one half. Relative error about 1e-15.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (index, coefficient) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += coefficient / (x + index as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised incomplete beta function `I_x(a, b)`, by its continued
/// fraction (DLMF 8.17.22) evaluated with the modified Lentz method, on the
/// side of `x` where it converges fast.
pub(crate) fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPSILON: f64 = 1e-14;
    // Converges in O(sqrt(max(a, b))) terms; counts in a rollout stay far
    // below what this bound allows.
    const TERMS_MAX: u32 = 100_000;
    let clamp = |value: f64| if value.abs() < TINY { TINY } else { value };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0));
    let mut fraction = d;
    for m in 1..=TERMS_MAX {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        fraction *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let step = d * c;
        fraction *= step;
        if (step - 1.0).abs() < EPSILON {
            break;
        }
    }
    fraction
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`, with `k` and `n` allowed to be
/// fractional (quasi-likelihood scaling divides counts by the dispersion):
/// `I_p(k, n - k + 1)`.
pub(crate) fn binomial_upper_tail(k: f64, n: f64, p: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    incomplete_beta(k, n - k + 1.0, p).clamp(0.0, 1.0)
}

/// The standard normal upper tail `P(Z > z)`, through `erfc` (Chebyshev
/// fit, fractional error below 1.2e-7 everywhere).
pub(crate) fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * polynomial.exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

/// Events and exposure of one group, for `rate_test`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RateSample {
    /// Devices in the group.
    pub devices: u64,
    /// Events counted.
    pub events: f64,
    /// Device-hours of observation.
    pub exposure_hours: f64,
    /// `Σ events² / exposure` over the devices, for the dispersion.
    pub(crate) squares_over_exposure: f64,
}

impl RateSample {
    pub(crate) fn add(&mut self, events: f64, exposure_hours: f64) {
        self.devices += 1;
        self.events += events;
        self.exposure_hours += exposure_hours;
        if exposure_hours > 0.0 {
            self.squares_over_exposure += events * events / exposure_hours;
        }
    }

    /// Events per device-hour.
    pub fn rate(&self) -> f64 {
        if self.exposure_hours > 0.0 {
            self.events / self.exposure_hours
        } else {
            0.0
        }
    }

    /// Pearson's dispersion `χ² / (n - 1)` of the per-device counts around
    /// the group's rate, at least 1: how much noisier than Poisson the
    /// devices are. One device that traps a hundred times counts as that
    /// much more noise, not as a hundred independent events.
    pub(crate) fn dispersion(&self) -> f64 {
        if self.devices < 2 || self.events <= 0.0 || self.exposure_hours <= 0.0 {
            return 1.0;
        }
        let rate = self.rate();
        let chi_square = self.squares_over_exposure / rate - self.events;
        (chi_square / (self.devices - 1) as f64).max(1.0)
    }
}

/// One-sided test of `H0: rate(updated) <= tolerated_ratio * rate(control)`.
///
/// Given the total count, the updated group's share of events is binomial
/// with `p0 = E_u θ / (E_u θ + E_c)` under `H0` at its boundary (two Poisson
/// processes with exposures `E_u`, `E_c`). Counts are divided by the
/// control group's dispersion `φ >= 1` (quasi-Poisson), which widens the test
/// exactly as much as devices are noisier than Poisson. Returns the p-value.
pub(crate) fn rate_test(updated: &RateSample, control: &RateSample, tolerated_ratio: f64, dispersion: f64) -> f64 {
    if updated.exposure_hours <= 0.0 || control.exposure_hours <= 0.0 || updated.events <= 0.0 {
        return 1.0;
    }
    let weighted = updated.exposure_hours * tolerated_ratio;
    let p0 = weighted / (weighted + control.exposure_hours);
    let dispersion = dispersion.max(1.0);
    let k = updated.events / dispersion;
    let n = (updated.events + control.events) / dispersion;
    binomial_upper_tail(k, n, p0)
}

/// The result of `mann_whitney`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// `U` of the first sample: pairs where it is greater, ties counting half.
    pub u: f64,
    /// `U / (n1 n2)`: the probability that an updated device's value exceeds
    /// a control device's (0.5 when they do not differ).
    pub common_language: f64,
    /// The normal approximation's z, with tie and continuity corrections.
    pub z: f64,
    /// One-sided p-value for "the first sample is stochastically greater".
    pub p: f64,
}

/// Mann-Whitney U of `first` against `second`, one-sided (is `first`
/// larger?). Sorts a combined copy: O((n1 + n2) log(n1 + n2)).
pub(crate) fn mann_whitney(first: &[f64], second: &[f64]) -> MannWhitney {
    let n1 = first.len() as f64;
    let n2 = second.len() as f64;
    if first.is_empty() || second.is_empty() {
        return MannWhitney {
            u: 0.0,
            common_language: 0.5,
            z: 0.0,
            p: 1.0,
        };
    }
    let mut combined: Vec<(f64, bool)> = Vec::with_capacity(first.len() + second.len());
    combined.extend(first.iter().map(|value| (*value, true)));
    combined.extend(second.iter().map(|value| (*value, false)));
    combined.sort_unstable_by(|left, right| left.0.total_cmp(&right.0));
    let mut rank_sum_first = 0.0;
    let mut tie_term = 0.0;
    let mut start = 0;
    while start < combined.len() {
        let mut end = start + 1;
        while end < combined.len() && combined[end].0 == combined[start].0 {
            end += 1;
        }
        // Ranks start..end (1-based start+1..=end) share their mean rank.
        let tied = (end - start) as f64;
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let in_first = combined[start..end].iter().filter(|entry| entry.1).count() as f64;
        rank_sum_first += mean_rank * in_first;
        tie_term += tied * tied * tied - tied;
        start = end;
    }
    let n = n1 + n2;
    let u = rank_sum_first - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    let (z, p) = if variance > 0.0 {
        let z = (u - mean - 0.5) / variance.sqrt();
        (z, normal_upper_tail(z))
    } else {
        (0.0, 1.0)
    };
    MannWhitney {
        u,
        common_language: u / (n1 * n2),
        z,
        p,
    }
}

#[cfg(test)]
mod tests;
