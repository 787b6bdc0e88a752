//! `qalqan drill` against real servers on loopback: the sample origin (in this test process) and
//! the shield. What the drill says it sent must match what the origin saw; a target off
//! loopback and scenario files with mistakes are refused before anything is sent.

use std::process::Command;
use std::time::Duration;

use qalqan_drill::{Origin, OriginConfig};
use serde_json::Value;

fn qalqan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qalqan"))
}

fn scenario_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Runs the drill on a blocking thread (the origin serves on this test's runtime meanwhile).
async fn drill(args: Vec<String>) -> (bool, Value, String) {
    let out = tokio::task::spawn_blocking(move || qalqan().arg("drill").args(&args).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

const MIXED: &str = r#"
name = "mixed"
[run]
warmup = 1
baseline = 2
attack = 3
seed = 7
source = "SOURCE"

[[readers]]
name = "readers"
count = 20
rate = 20.0
search_share = 0.3
articles = 50

[[attackers]]
name = "admin-flood"
kind = "flood"
rate = 40.0
path = "/admin"
param = ""
addresses = 30

[[attackers]]
name = "search-flood"
kind = "flood"
rate = 60.0
fixed_queries = ["number one"]
fixed_share = 0.5
addresses = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_the_origin_saw() {
    let dir = tempfile::tempdir().unwrap();
    for source in ["forwarded", "addresses"] {
        let origin = Origin::start(
            "127.0.0.1:0".parse().unwrap(),
            OriginConfig {
                workers: 4,
                search_cost: Duration::from_millis(2),
                articles: 50,
                ..OriginConfig::default()
            },
        )
        .await
        .unwrap();
        let file = scenario_file(
            dir.path(),
            &format!("{source}.toml"),
            &MIXED.replace("SOURCE", source),
        );
        let (ok, v, err) = drill(vec![
            "--target".into(),
            origin.url(),
            "--origin".into(),
            origin.url(),
            "--scenario".into(),
            file,
            "--json".into(),
            "--quiet".into(),
        ])
        .await;
        assert!(ok, "{source}: {err}");
        let sent = &v["sent"];
        let seen = origin.stats();
        let n = |x: &Value| x.as_u64().unwrap();
        assert_eq!(n(&sent["article"]), seen.article.received, "{source}: {v}");
        assert_eq!(n(&sent["search"]), seen.search.received, "{source}: {v}");
        assert_eq!(n(&sent["admin"]), seen.admin.received, "{source}: {v}");
        assert_eq!(n(&sent["other"]), seen.other.received, "{source}: {v}");
        // The report's own reading of the origin agrees too.
        assert_eq!(
            n(&v["origin"]["total"]["search"]["received"]),
            seen.search.received
        );
        // Both floods ran at about their rates for 3 s, and readers read.
        assert!(seen.admin.received >= 90, "{source}: {seen:?}");
        assert!(seen.search.received >= 150, "{source}: {seen:?}");
        assert!(seen.article.received >= 30, "{source}: {seen:?}");
        assert!(n(&v["attackers"]["sent"]) >= 250, "{source}: {v}");
        assert!(
            v["attack_phase"]["success"].as_f64().unwrap() > 0.9,
            "{source}: {v}"
        );
        origin.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_bounds_the_run() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), OriginConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(
        dir.path(),
        "budget.toml",
        &MIXED
            .replace("SOURCE", "forwarded")
            .replace("seed = 7", "seed = 7\nmax_requests = 100"),
    );
    let (ok, v, err) = drill(vec![
        "--target".into(),
        origin.url(),
        "--scenario".into(),
        file,
        "--json".into(),
        "--quiet".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let seen = origin.stats().received();
    assert!(seen <= 100, "the origin saw {seen} requests");
    assert_eq!(
        v["sent"]["article"].as_u64().unwrap()
            + v["sent"]["search"].as_u64().unwrap()
            + v["sent"]["admin"].as_u64().unwrap()
            + v["sent"]["other"].as_u64().unwrap(),
        seen
    );
    assert!(v["origin"].is_null(), "no --origin, no origin figures: {v}");
    origin.stop().await;
}

#[test]
fn targets_off_loopback_are_refused_before_anything_is_sent() {
    for target in [
        "http://192.0.2.1:80",
        "http://10.0.0.1:8080",
        "http://example.com",
        "https://127.0.0.1:443",
        "http://[2001:db8::1]:80",
    ] {
        let out = qalqan()
            .args(["drill", "--target", target, "--scenario", "kursiv"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{target} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("loopback"),
            "{target}: the refusal should say why: {err}"
        );
        assert!(out.stdout.is_empty(), "{target}: a report was printed");
    }
}

#[test]
fn scenario_mistakes_are_reported_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bad = scenario_file(
        dir.path(),
        "bad.toml",
        r#"
name = "bad"
[run]
baseline = 5
attack = 5000

[[readers]]
name = "r"
count = 0
rate = 1.0

[[attackers]]
name = "f"
kind = "flood"
rate = 0.0
path = "search"
"#,
    );
    let out = qalqan()
        .args([
            "drill",
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            &bad,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "run: ",
        "readers[0].count",
        "attackers[0].rate",
        "attackers[0].path",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }

    let typo = scenario_file(
        dir.path(),
        "typo.toml",
        "name = \"t\"\n[run]\nbaseline = 1\nattack = 1\n[[attackers]]\nname = \"f\"\nkind = \"flod\"\n",
    );
    let out = qalqan()
        .args([
            "drill",
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            &typo,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("attackers[0].kind"), "{err}");

    let out = qalqan()
        .args([
            "drill",
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            "no-such-thing",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kursiv") && err.contains("slowloris"), "{err}");

    for name in ["kursiv", "slowloris"] {
        let out = qalqan()
            .args([
                "drill",
                "--target",
                "http://127.0.0.1:9",
                "--scenario",
                name,
                "--check",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Slowloris against the shield: its header timeout closes every slow connection, and readers
/// keep reading through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_against_the_shield_is_cut_off() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), OriginConfig::default())
        .await
        .unwrap();
    let toml = format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
[origin]\nurl = \"{}\"\n[client]\nheader_read_timeout = \"2s\"\n[access_log]\npath = \"\"\n",
        origin.url()
    );
    let cfg = qalqan_shield::RawConfig::from_toml(&toml).unwrap();
    let shield = qalqan_shield::start(cfg).await.unwrap();
    let site = format!("http://{}", shield.listen[0]);
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(
        dir.path(),
        "slow.toml",
        r#"
name = "slow"
[run]
warmup = 0
baseline = 2
attack = 6
source = "addresses"

[[readers]]
name = "readers"
count = 10
rate = 10.0
search_share = 0.0
articles = 20

[[attackers]]
name = "slowloris"
kind = "slow"
connections = 200
addresses = 100
interval = 1
"#,
    );
    let (ok, v, err) = drill(vec![
        "--target".into(),
        site,
        "--scenario".into(),
        file,
        "--json".into(),
        "--quiet".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let slow = &v["attackers"]["slow"]["slowloris"];
    let n = |k: &str| slow[k].as_u64().unwrap();
    assert_eq!(n("opened") + n("refused"), 200, "{slow}");
    assert!(n("opened") >= 150, "{slow}");
    // Opened over the first 2 s, cut at 2 s of header time: all gone before the 6 s are up.
    assert_eq!(n("closed_by_target"), n("opened"), "{slow}");
    assert_eq!(n("held_to_end"), 0, "{slow}");
    assert!(slow["mean_open_s"].as_f64().unwrap() < 4.0, "{slow}");
    assert!(
        v["attack_phase"]["success"].as_f64().unwrap() >= 0.99,
        "{v}"
    );
    shield.shutdown().await;
    origin.stop().await;
}
