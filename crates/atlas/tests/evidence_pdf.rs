//! `report.pdf` in evidence packages, on SQLite and PostgreSQL: the package verifies with the
//! PDF in its manifest; Debian's `pdftotext` (poppler-utils, installed by `scripts/test.sh`)
//! reads back the Russian title, Kazakh letters, the attachment's hash and "page N of M" from
//! every page of a report long enough to need several; one flipped byte of report.pdf makes the
//! package-only verifier fail and name it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Kind, TestDb, actor};
use qalqan_atlas::evidence::verify::{self, Problem};
use qalqan_atlas::evidence::{self, Options};
use qalqan_atlas::i18n::Lang;
use qalqan_atlas::model::Role;
use qalqan_atlas::store::{IncidentIn, SightingIn};
use serde_json::json;

both_backends! {
    report_pdf_reads_back_and_is_verified => pdf_story,
}

fn pdftotext(pdf: &Path) -> String {
    let out = Command::new("pdftotext")
        .args(["-enc", "UTF-8"])
        .arg(pdf)
        .arg("-")
        .output()
        .expect("pdftotext (Debian poppler-utils) must be installed: scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "pdftotext failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 text")
}

fn pages(pdf: &Path) -> usize {
    let out = Command::new("pdfinfo").arg(pdf).output().expect("pdfinfo");
    assert!(
        out.status.success(),
        "pdfinfo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Pages:").map(|n| n.trim().parse().unwrap()))
        .expect("page count")
}

async fn pdf_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let o = db.create_outlet("alpha", "Alpha", "cli").await.unwrap();
    let alpha = actor(o.id, Role::Editor, "user:editor@alpha.kz");
    let input: IncidentIn = serde_json::from_value(json!({
        "kind": "http_flood", "title": "Флуд поиска на сайте «Азаттық»", "tlp": "green",
        "description": format!("Шабуыл әкімдік туралы мақаладан кейін басталды. Әңгіме: ғылым, қоғам, өңір, ұлт, үміт, һәм ірі. {}",
            "Қызметкерлер сайтқа кіре алмады, ғаламтор арқылы шағым түсті. ".repeat(150)),
        "started_at": "2024-03-05T10:00:00Z", "ended_at": "2024-03-05T14:30:00Z",
        "impact": {"downtime_minutes": 270},
        "targets": [{"kind": "website", "value": "https://alpha.kz"}],
    }))
    .unwrap();
    let id = db.create_incident(&alpha, &input).await.unwrap().id;
    let s: Vec<SightingIn> = (0..250)
        .map(|n| {
            serde_json::from_value(json!({"kind": "ip", "value": format!("198.51.{}.{}", n / 200, n % 200 + 1), "count": 1000 + n}))
                .unwrap()
        })
        .collect();
    db.add_sightings(&alpha, &id, &s).await.unwrap();
    let bytes = b"screenshot bytes".to_vec();
    let sha = verify::sha256_hex(&bytes);
    db.add_attachment(&alpha, &id, "скриншот.png", "image/png", &bytes)
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg.tar");
    evidence::build(
        &db,
        &alpha,
        std::slice::from_ref(&id),
        &Options::default(),
        &out,
    )
    .await
    .expect("package");
    let r = verify::verify_path(&out).unwrap();
    assert!(r.ok(), "{:?}", r.problems);

    let dir = tmp.path().join("x");
    tar::Archive::new(std::fs::File::open(&out).unwrap())
        .unpack(&dir)
        .unwrap();
    let pdf = dir.join("report.pdf");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let listed = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "report.pdf")
        .expect("report.pdf in the manifest");
    let data = std::fs::read(&pdf).unwrap();
    assert!(data.starts_with(b"%PDF-1.7"));
    assert_eq!(listed["sha256"], verify::sha256_hex(&data));
    assert_eq!(listed["size"], data.len());

    let text = pdftotext(&pdf);
    assert!(text.contains("Пакет доказательств"), "Russian by default");
    assert!(
        text.contains("Флуд поиска на сайте «Азаттық»"),
        "{}",
        &text[..text.len().min(800)]
    );
    for letter in ["ә", "ғ", "қ", "ң", "ө", "ұ", "ү", "һ", "і", "Ә"] {
        assert!(text.contains(letter), "Kazakh letter {letter} missing");
    }
    assert!(text.contains("2024-03-05 10:00:00 UTC (2024-03-05 15:00:00 Алматы, UTC+5)"));
    assert!(text.contains("198.51.1.50"), "indicators listed");
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        squeezed.contains(&sha),
        "attachment hash (wrapped in its cell)"
    );
    assert!(text.contains("скриншот.png"));
    let n = pages(&pdf);
    assert!(n >= 3, "a long report spans pages: {n}");
    for p in 1..=n {
        assert!(
            text.contains(&format!("Страница {p} из {n}")),
            "page {p} of {n}"
        );
    }
    // Kazakh on request.
    let kk = tmp.path().join("kk.tar");
    evidence::build(
        &db,
        &alpha,
        std::slice::from_ref(&id),
        &Options {
            lang: Lang::Kk,
            tsa: None,
        },
        &kk,
    )
    .await
    .unwrap();
    let kdir = tmp.path().join("kk");
    tar::Archive::new(std::fs::File::open(&kk).unwrap())
        .unpack(&kdir)
        .unwrap();
    let ktext = pdftotext(&kdir.join("report.pdf"));
    assert!(
        ktext.contains("Дәлелдер пакеті"),
        "{}",
        &ktext[..ktext.len().min(400)]
    );

    // One flipped byte of report.pdf: the verifier fails and names it.
    let mut b = data.clone();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(&pdf, b).unwrap();
    let r = verify::verify_path(&dir).unwrap();
    assert!(!r.ok());
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::Changed(f) if f == "report.pdf")),
        "{:?}",
        r.problems
    );
}
