//! `qalqan sweep analyze` end to end: the real binary on files, reports read back.

use std::path::Path;
use std::process::Command;

fn qalqan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qalqan"))
}

fn sample() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sweep/testdata/telegram-result.json"
    ))
}

#[test]
fn analyze_telegram_export_writes_both_reports() {
    let out = tempfile::tempdir().unwrap();
    let st = qalqan()
        .args(["sweep", "analyze"])
        .arg(sample())
        .args(["--out"])
        .arg(out.path())
        .args(["--min-authors", "10", "--lang", "kk"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Not a terminal and no --progress: nothing on stderr.
    assert!(
        st.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["input"]["format"], "telegram-export");
    let c = &json["clusters"][0];
    assert_eq!(c["kind"], "bot_comments");
    let ids: Vec<&str> = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 18, "{ids:?}");
    assert!(
        c["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "delete_messages")
    );
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(
        html.contains("<html lang=\"kk\">") && html.contains("<svg") && !html.contains("<script")
    );
    assert!(html.contains("Бірдей пікірлер толқыны"));
}

#[test]
fn analyze_reports_bad_input_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("result.json");
    let text = std::fs::read_to_string(sample()).unwrap();
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    let st = qalqan()
        .args(["sweep", "analyze"])
        .arg(&bad)
        .args(["--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("truncated") && err.contains("line"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn analyze_csv_with_progress_flag() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("c.csv");
    let mut s = String::from("author_id,author_name,time,text,join_time\n");
    for i in 0..30 {
        s.push_str(&format!("bot{i},Bot {i},{},RIP,\n", 1_700_000_000 + i));
    }
    s.push_str("reader,Reader,1700000000,\"Спасибо, отличная статья\",\n");
    std::fs::write(&csv, s).unwrap();
    let st = qalqan()
        .args(["sweep", "analyze"])
        .arg(&csv)
        .args(["--format", "csv", "--lang", "en", "--progress", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(json["summary"]["flagged_messages"], 30);
    assert_eq!(json["clusters"][0]["actions"][0]["action"], "review");
}
