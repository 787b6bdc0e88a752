//! `qalqan evidence verify` as a recipient runs it: the real binary on a package built from a
//! real SQLite store. Exit 0 and the OK line for an intact package; exit 1 and the changed
//! file's name after one flipped byte.

use std::process::Command;

use qalqan_atlas::evidence::{self, Options};
use qalqan_atlas::model::Role;
use qalqan_atlas::store::IncidentIn;
use qalqan_atlas::{Actor, Db};

const MARKER: &[u8] = b"evidence bytes: flood log excerpt 203.0.113.7 x 5000";

fn verify(path: &std::path::Path) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_qalqan"))
        .args(["evidence", "verify"])
        .arg(path)
        .output()
        .expect("run qalqan");
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command_accepts_intact_and_names_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("atlas.db").display()
    ))
    .await
    .unwrap();
    let o = db.create_outlet("alpha", "Alpha", "cli").await.unwrap();
    let who = Actor {
        outlet_id: o.id,
        role: Role::Editor,
        label: "user:editor@alpha.kz".into(),
        user_id: None,
    };
    let input: IncidentIn = serde_json::from_value(serde_json::json!({
        "kind": "http_flood", "title": "Флуд", "started_at": "2024-03-05T10:00:00Z",
    }))
    .unwrap();
    let id = db.create_incident(&who, &input).await.unwrap().id;
    db.add_attachment(&who, &id, "log.txt", "text/plain", MARKER)
        .await
        .unwrap();
    let pkg = dir.path().join("package.tar");
    let p = evidence::build(&db, &who, &[id], &Options::default(), &pkg)
        .await
        .unwrap();

    let (code, out) = verify(&pkg);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "OK: {} files verified, custody chain intact (2 entries), timestamp: none",
            p.files
        )),
        "{out}"
    );
    assert!(
        out.contains(&p.manifest_sha256),
        "prints the manifest hash to compare: {out}"
    );

    // One flipped byte inside the attachment's data in the tar.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("attachment in tar");
    bytes[at + 10] ^= 0x01;
    let bad = dir.path().join("changed.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, out) = verify(&bad);
    assert_eq!(code, 1, "{out}");
    let sha = qalqan_atlas::evidence::verify::sha256_hex(MARKER);
    assert!(
        out.contains(&format!("FAILED: changed: attachments/{sha}-log.txt")),
        "{out}"
    );

    // One flipped byte inside report.pdf: named too.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"%PDF-1.7")
        .expect("report.pdf in tar");
    bytes[at + 100] ^= 0x01;
    let bad = dir.path().join("pdf-changed.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, out) = verify(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED: changed: report.pdf"), "{out}");

    let (code, out) = verify(&dir.path().join("missing.tar"));
    assert_eq!(code, 1, "{out}");
}
