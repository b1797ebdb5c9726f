use std::collections::BTreeMap;

use crate::release::{AgentSpec, PolicySpec, config_pairs, parse_agent, parse_policy, parse_version};

fn check_policy(input: &str, expect: Result<(&str, &str, &str, Option<&str>), &str>) {
    let expect = expect
        .map(|(name, path, version, config)| PolicySpec {
            name: name.to_owned(),
            path: path.into(),
            version: version.to_owned(),
            config: config.map(Into::into),
        })
        .map_err(str::to_owned);
    assert_eq!(parse_policy(input), expect, "input `{input}`");
}

fn check_agent(input: &str, expect: Result<(&str, &str, &str), &str>) {
    let expect = expect
        .map(|(class, path, version)| AgentSpec {
            hardware_class: class.to_owned(),
            path: path.into(),
            version: version.to_owned(),
        })
        .map_err(str::to_owned);
    assert_eq!(parse_agent(input), expect, "input `{input}`");
}

const POLICY_SYNTAX: &str =
    "expected NAME=PATH@VERSION[:CONFIG], e.g. threshold=./threshold.wasm@0.1.0:./threshold.json";
const AGENT_SYNTAX: &str = "expected CLASS=PATH@VERSION, e.g. rpi4=./agent.img@1.2.0";

#[test]
fn policy_syntax() {
    check_policy("threshold=./t.wasm@0.1.0", Ok(("threshold", "./t.wasm", "0.1.0", None)));
    check_policy(
        "threshold=./t.wasm@0.1.0:./t.json",
        Ok(("threshold", "./t.wasm", "0.1.0", Some("./t.json"))),
    );
    // A path may hold `@` and `=`; the version is the last `@` that parses.
    check_policy(
        "a=./builds@2/t=1.wasm@1.2.3",
        Ok(("a", "./builds@2/t=1.wasm", "1.2.3", None)),
    );
    check_policy(
        "a=./t.wasm@1.2.3:./cfg@v2.json",
        Ok(("a", "./t.wasm", "1.2.3", Some("./cfg@v2.json"))),
    );
    check_policy("threshold=./t.wasm", Err(POLICY_SYNTAX));
    check_policy("threshold=./t.wasm@0.1", Err(POLICY_SYNTAX));
    check_policy("threshold=./t.wasm@0.1.0:", Err(POLICY_SYNTAX));
    check_policy("threshold=@0.1.0", Err(POLICY_SYNTAX));
    check_policy("./t.wasm@0.1.0", Err(POLICY_SYNTAX));
    check_policy(
        "=./t.wasm@0.1.0",
        Err(&format!(
            "policy name `` must be 1 to 64 letters, digits, '-', '_' or '.'; {POLICY_SYNTAX}"
        )),
    );
    check_policy(
        "a b=./t.wasm@0.1.0",
        Err(&format!(
            "policy name `a b` must be 1 to 64 letters, digits, '-', '_' or '.'; {POLICY_SYNTAX}"
        )),
    );
}

#[test]
fn agent_syntax() {
    check_agent("rpi4=./agent.img@1.0.0", Ok(("rpi4", "./agent.img", "1.0.0")));
    check_agent(
        "rpi4=/srv/a@b/agent.img@10.20.30",
        Ok(("rpi4", "/srv/a@b/agent.img", "10.20.30")),
    );
    // Agents take no configuration, so `:` belongs to nothing.
    check_agent("rpi4=./agent.img@1.0.0:x.json", Err(AGENT_SYNTAX));
    check_agent("rpi4", Err(AGENT_SYNTAX));
    check_agent("rpi4=./agent.img@latest", Err(AGENT_SYNTAX));
}

#[test]
fn versions() {
    assert_eq!(parse_version("1.2.3"), Ok("1.2.3".to_owned()));
    for bad in [
        "1.2",
        "1.2.3.4",
        "a.b.c",
        "1..3",
        "-1.2.3",
        "1.2.3-rc1",
        "1234567890.0.0",
    ] {
        assert_eq!(
            parse_version(bad),
            Err(format!(
                "expected a version major.minor.patch such as 1.2.0, got `{bad}`"
            )),
            "input `{bad}`"
        );
    }
}

fn check_config(json: &str, expect: Result<&[(&str, &str)], &str>) {
    let value: serde_json::Value = serde_json::from_str(json).expect("test JSON parses");
    let expect = expect
        .map(|pairs| {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect::<BTreeMap<_, _>>()
        })
        .map_err(str::to_owned);
    assert_eq!(config_pairs(&value), expect, "config {json}");
}

#[test]
fn config_is_a_flat_object_of_scalars() {
    check_config("{}", Ok(&[]));
    check_config(
        r#"{"min_step": 0.5, "sensor": "t1", "enabled": true, "count": 3}"#,
        Ok(&[
            ("count", "3"),
            ("enabled", "true"),
            ("min_step", "0.5"),
            ("sensor", "t1"),
        ]),
    );
    check_config("[1, 2]", Err("is not a JSON object such as {\"min_step\": 0.5}"));
    check_config(
        r#"{"nested": {"a": 1}}"#,
        Err("has `nested` set to null, an array or an object; values must be strings, numbers or booleans"),
    );
    check_config(
        r#"{"gone": null}"#,
        Err("has `gone` set to null, an array or an object; values must be strings, numbers or booleans"),
    );
}
