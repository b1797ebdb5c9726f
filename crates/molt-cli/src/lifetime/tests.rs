use std::time::Duration;

fn check(input: &str, expect: Result<Duration, &str>) {
    let parsed = crate::lifetime::parse(input);
    assert_eq!(parsed, expect.map_err(str::to_owned), "input `{input}`");
}

#[test]
fn parses_each_unit() {
    check("45s", Ok(Duration::from_secs(45)));
    check("90m", Ok(Duration::from_secs(90 * 60)));
    check("12h", Ok(Duration::from_secs(12 * 3600)));
    check("30d", Ok(Duration::from_secs(30 * 24 * 3600)));
    check("2w", Ok(Duration::from_secs(14 * 24 * 3600)));
}

#[test]
fn refuses_malformed_and_out_of_range() {
    check(
        "30",
        Err("expected a number and a unit s, m, h, d or w (e.g. 30d), got `30`"),
    );
    check("d", Err("expected a number before the unit (e.g. 30d), got `d`"));
    check(
        "3 d",
        Err("expected a number and a unit s, m, h, d or w (e.g. 30d), got `3 d`"),
    );
    check("0h", Err("a lifetime must be longer than zero"));
    check("99999w", Err("`99999w` is longer than lifetime_max (10 years)"));
    check(
        "99999999999999999999d",
        Err("expected a number before the unit (e.g. 30d), got `99999999999999999999d`"),
    );
}

#[test]
fn formats_in_the_largest_unit() {
    for (secs, expect) in [
        (1, "1s"),
        (90, "90s"),
        (3600, "1h"),
        (86400, "1d"),
        (30 * 86400, "30d"),
        (14 * 86400, "2w"),
    ] {
        assert_eq!(crate::lifetime::format(Duration::from_secs(secs)), expect);
    }
}
