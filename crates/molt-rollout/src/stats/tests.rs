use crate::stats::{
    RateSample, binomial_upper_tail, incomplete_beta, ln_gamma, mann_whitney, normal_upper_tail, rate_test,
};

fn close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance * expected.abs().max(1e-300),
        "{actual} is not within {tolerance} (relative) of {expected}"
    );
}

#[test]
fn ln_gamma_matches_factorials() {
    close(ln_gamma(5.0), 24f64.ln(), 1e-13);
    close(ln_gamma(101.0), (1..=100).map(|k| f64::from(k).ln()).sum(), 1e-13);
    close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12);
}

#[test]
fn binomial_tail_matches_direct_sums() {
    // P(X >= 1 | 3, 0.5) = 1 - 1/8.
    close(binomial_upper_tail(1.0, 3.0, 0.5), 0.875, 1e-12);
    // P(X >= 2 | 10, 0.3) = 1 - 0.7^10 - 10 * 0.3 * 0.7^9.
    let expected = 1.0 - 0.7f64.powi(10) - 3.0 * 0.7f64.powi(9);
    close(binomial_upper_tail(2.0, 10.0, 0.3), expected, 1e-12);
    // A far tail, summed term by term in logs: P(X >= 40 | 1000, 0.01).
    let log_term = |k: f64| {
        ln_gamma(1001.0) - ln_gamma(k + 1.0) - ln_gamma(1001.0 - k) + k * 0.01f64.ln() + (1000.0 - k) * 0.99f64.ln()
    };
    let direct: f64 = (40..=1000).map(|k| log_term(f64::from(k)).exp()).sum();
    close(binomial_upper_tail(40.0, 1000.0, 0.01), direct, 1e-9);
    assert_eq!(binomial_upper_tail(0.0, 10.0, 0.3), 1.0);
    assert_eq!(binomial_upper_tail(11.0, 10.0, 0.3), 0.0);
    // Symmetry of the incomplete beta function.
    close(
        incomplete_beta(3.5, 7.25, 0.4),
        1.0 - incomplete_beta(7.25, 3.5, 0.6),
        1e-12,
    );
}

#[test]
fn normal_tail_matches_tables() {
    close(normal_upper_tail(0.0), 0.5, 1e-7);
    close(normal_upper_tail(1.959_963_985), 0.025, 1e-6);
    close(normal_upper_tail(5.0), 2.866_515_7e-7, 1e-6);
    close(normal_upper_tail(-1.644_853_627), 0.95, 1e-6);
}

#[test]
fn mann_whitney_counts_pairs() {
    let separated = mann_whitney(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0]);
    assert_eq!(separated.u, 9.0);
    assert_eq!(separated.common_language, 1.0);
    let reversed = mann_whitney(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
    assert_eq!(reversed.u, 0.0);
    assert!(reversed.p > 0.9);
    // Ties count half: one tie between 2.0s, 2 > 1.
    let tied = mann_whitney(&[2.0], &[1.0, 2.0]);
    assert_eq!(tied.u, 1.5);
    // All values equal: no evidence either way.
    let flat = mann_whitney(&[0.0; 50], &[0.0; 80]);
    assert_eq!(flat.p, 1.0);
}

#[test]
fn mann_whitney_finds_a_shift_in_large_samples() {
    // Two interleaved arithmetic sequences, the first shifted up by 10 %
    // of their spread: clearly significant at these sizes.
    let first: Vec<f64> = (0..2_000).map(|k| f64::from(k) / 2_000.0 + 0.1).collect();
    let second: Vec<f64> = (0..20_000).map(|k| f64::from(k) / 20_000.0).collect();
    let result = mann_whitney(&first, &second);
    assert!(result.z > 8.0, "{result:?}");
    assert!(result.p < 1e-12, "{result:?}");
}

fn sample(devices: u64, events: f64, exposure_hours: f64) -> RateSample {
    let mut sample = RateSample::default();
    let per_device = events / devices as f64;
    for _ in 0..devices {
        sample.add(per_device, exposure_hours / devices as f64);
    }
    sample
}

#[test]
fn rate_test_separates_a_tripled_rate_from_noise() {
    let control = sample(100_000, 5_000.0, 100_000.0);
    let tripled = sample(800, 120.0, 800.0);
    // P(X >= 120) for X ~ Binomial(5120, 960 / 100960), summed term by term
    // in Python: 3.330e-18.
    close(rate_test(&tripled, &control, 1.2, 1.0), 3.330_014_673e-18, 1e-6);
    let same = sample(800, 40.0, 800.0);
    assert!(rate_test(&same, &control, 1.2, 1.0) > 0.3);
    // Overdispersion widens the test: the same excess is less surprising.
    let modest = sample(800, 70.0, 800.0);
    let poisson = rate_test(&modest, &control, 1.2, 1.0);
    let noisy = rate_test(&modest, &control, 1.2, 4.0);
    assert!(poisson < 0.01 && noisy > 0.05, "{poisson} {noisy}");
}

#[test]
fn dispersion_is_one_for_poisson_like_counts_and_grows_with_clumping() {
    let mut even = RateSample::default();
    let mut clumped = RateSample::default();
    for device in 0..1_000 {
        even.add(f64::from(device % 2), 1.0);
        clumped.add(if device % 50 == 0 { 25.0 } else { 0.0 }, 1.0);
    }
    assert!(even.dispersion() < 1.01);
    assert!(clumped.dispersion() > 20.0, "{}", clumped.dispersion());
}
