use std::time::Duration;

use reqwest::StatusCode;

use crate::download::DownloadLimits;
use crate::download::http::{StatusClass, backoff_delay, classify};

#[test]
fn backoff_doubles_up_to_the_cap() {
    let limits = DownloadLimits {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(700),
        ..DownloadLimits::default()
    };
    let delays: Vec<u128> = (0..6)
        .map(|retry_idx| backoff_delay(&limits, retry_idx).as_millis())
        .collect();
    assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
    assert_eq!(backoff_delay(&limits, 40), Duration::from_millis(700));
}

#[test]
fn status_classes_follow_tough() {
    let class = |code| classify(StatusCode::from_u16(code).expect("valid status"));
    assert_eq!(class(200), StatusClass::Whole);
    assert_eq!(class(206), StatusClass::Partial);
    assert_eq!(class(416), StatusClass::RangeNotSatisfiable);
    assert_eq!(class(404), StatusClass::NotFound);
    assert_eq!(class(403), StatusClass::NotFound);
    assert_eq!(class(503), StatusClass::Retryable);
    assert_eq!(class(429), StatusClass::Retryable);
    assert_eq!(class(400), StatusClass::Fatal);
    assert_eq!(class(301), StatusClass::Fatal);
}
