//! End-to-end checks on generated fixtures (deterministic seeds): precision and recall on a
//! comment flood and on a join wave, legitimate repetition, the Telegram sample, bad files.

use qalqan_sweep::input::{Format, Limits, read_dataset};
use qalqan_sweep::report::{self, Lang, Source};
use qalqan_sweep::{Dataset, Params, analyze, synth};

fn no_progress(_: &str, _: u64, _: u64) {}

#[test]
fn rip_flood_recall_and_precision() {
    let c = synth::comments(2026, 50_000, 4_000);
    let ds = Dataset {
        messages: c.messages,
        ..Default::default()
    };
    let a = analyze(&ds, &Params::default(), &mut no_progress);
    let mut flagged = vec![false; ds.messages.len()];
    for f in &a.floods {
        for &i in &f.members {
            flagged[i as usize] = true;
        }
    }
    let flood_total = c.flood.iter().filter(|x| **x).count();
    let caught = c
        .flood
        .iter()
        .zip(&flagged)
        .filter(|(t, f)| **t && **f)
        .count();
    let ordinary_total = ds.messages.len() - flood_total;
    let false_pos = c
        .flood
        .iter()
        .zip(&flagged)
        .filter(|(t, f)| !**t && **f)
        .count();
    let recall = caught as f64 / flood_total as f64;
    let fp_rate = false_pos as f64 / ordinary_total as f64;
    eprintln!(
        "recall {recall:.4}, ordinary flagged {false_pos}/{ordinary_total} ({:.4}%)",
        fp_rate * 100.0
    );
    assert!(recall >= 0.99, "recall {recall}");
    assert!(fp_rate <= 0.001, "ordinary comments flagged: {false_pos}");
    // The flood is one cluster, and the loud reader repeating himself is none.
    assert_eq!(
        a.floods.len(),
        1,
        "{:?}",
        a.floods.iter().map(|f| f.members.len()).collect::<Vec<_>>()
    );
    let (_, keys) = qalqan_sweep::analyze::variants(&ds, &a, &a.floods[0].members, 3);
    assert_eq!(keys[0].0, "rip");

    // The report carries the members and renders in all three languages.
    let src = Source {
        file: "synthetic".into(),
        format: Format::YoutubeJson,
    };
    let r = report::build(&ds, &a, &src);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["clusters"][0]["kind"], "bot_comments");
    assert_eq!(
        json["clusters"][0]["members"].as_array().unwrap().len(),
        a.floods[0].members.len()
    );
    assert!(
        json["clusters"][0]["actions"][0]["quota_units"]
            .as_u64()
            .unwrap()
            >= 4000
    );
    for lang in [Lang::Ru, Lang::Kk, Lang::En] {
        let html = report::html(&r, &ds, &a, lang).unwrap();
        assert!(
            html.contains("<svg") && !html.contains("<script"),
            "{lang:?}"
        );
        assert!(html.contains("Р.І.Р"), "texts are shown as posted");
    }
}

#[test]
fn join_wave_of_90k_templated_accounts() {
    let j = synth::joins(9, 40_000, 90_000);
    let ds = Dataset {
        joins: j.joins,
        ..Default::default()
    };
    let a = analyze(&ds, &Params::default(), &mut no_progress);
    let mut flagged = vec![false; ds.joins.len()];
    for w in &a.waves {
        for &i in &w.members {
            flagged[i as usize] = true;
        }
    }
    let bots = j.bot.iter().filter(|b| **b).count();
    let caught = j
        .bot
        .iter()
        .zip(&flagged)
        .filter(|(b, f)| **b && **f)
        .count();
    let organic = ds.joins.len() - bots;
    let false_pos = j
        .bot
        .iter()
        .zip(&flagged)
        .filter(|(b, f)| !**b && **f)
        .count();
    eprintln!(
        "waves {:?}; recall {caught}/{bots}; organic flagged {false_pos}/{organic}",
        a.waves
            .iter()
            .map(|w| (w.joins, w.verdict, w.members.len()))
            .collect::<Vec<_>>()
    );
    assert!(caught as f64 / bots as f64 >= 0.99);
    assert!(false_pos as f64 / organic as f64 <= 0.001);
    // The news spike is a wave, but an organic one: nobody in it is flagged.
    assert!(
        a.waves
            .iter()
            .any(|w| w.verdict == qalqan_sweep::joins::Verdict::Organic && w.members.is_empty())
    );
    let r = report::build(
        &ds,
        &a,
        &Source {
            file: "x".into(),
            format: Format::Csv,
        },
    );
    assert!(
        r.clusters
            .iter()
            .any(|c| c.kind == report::Kind::BotFollowers)
    );
}

#[test]
fn telegram_sample_export() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/telegram-result.json");
    let f = std::fs::File::open(path).unwrap();
    let (format, ds) = read_dataset(
        std::io::BufReader::new(f),
        None,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(format, Format::TelegramExport);
    assert!(ds.messages.len() >= 40, "{}", ds.messages.len());
    assert!(!ds.joins.is_empty());
    let a = analyze(
        &ds,
        &Params {
            min_authors: 10,
            ..Default::default()
        },
        &mut no_progress,
    );
    assert_eq!(a.floods.len(), 1);
    let members: Vec<&str> = a.floods[0]
        .members
        .iter()
        .map(|&i| ds.messages[i as usize].text.as_str())
        .collect();
    assert!(members.iter().all(|t| !t.contains("статья")), "{members:?}");
}

#[test]
fn bad_files_give_positions_not_panics() {
    let cases: &[(&[u8], Option<Format>)] = &[
        (b"{\"messages\":[{\"id\":1,\"type\":\"message\",\"date_unixtime\":\"1\",\"text\":\"a\"}", Some(Format::TelegramExport)),
        (b"{\"messages\":[{\"id\":1,\"text\":[1,2,{\"type\":\"bold\"}]}, 7]}", Some(Format::TelegramExport)),
        (b"{\"items\":[{\"snippet\":{\"topLevelComment\":{\"snippet\":{\"publishedAt\":5}}}}]}", Some(Format::YoutubeJson)),
        (b"author_id,time,text\n\"unterminated,1,x\n", Some(Format::Csv)),
        (b"\x00\x01\x02", None),
    ];
    for (bytes, f) in cases {
        let e = read_dataset(*bytes, *f, &Limits::default(), &mut |_| {});
        if let Err(e) = e {
            let s = e.to_string();
            assert!(s.contains("line") || s.contains("format"), "{s}");
        }
    }
}

/// Produces a Telegram export of `n` messages on the fly, so the test never holds the file:
/// the reader must stream it.
struct LazyExport {
    n: usize,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl std::io::Read for LazyExport {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.buf.clear();
            self.pos = 0;
            if self.next == 0 {
                self.buf.extend_from_slice(
                    br#"{"name":"Big","type":"public_supergroup","id":1,"messages":["#,
                );
            }
            let end = (self.next + 1000).min(self.n);
            for i in self.next..end {
                let sep = if i == 0 { "" } else { "," };
                self.buf.extend_from_slice(
                    format!(
                        r#"{sep}{{"id":{i},"type":"message","date_unixtime":"{}","from":"U{i}","from_id":"user{}","text":["Комментарий номер {i} ",{{"type":"bold","text":"жақсы"}}]}}"#,
                        1_700_000_000 + i,
                        i % 5000
                    )
                    .as_bytes(),
                );
            }
            self.next = end;
            if end == self.n {
                self.buf.extend_from_slice(b"]}");
                self.done = true;
            }
        }
        let k = out.len().min(self.buf.len() - self.pos);
        out[..k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

#[test]
fn a_large_export_streams() {
    let n = 150_000;
    let src = LazyExport {
        n,
        next: 0,
        buf: Vec::new(),
        pos: 0,
        done: false,
    };
    let mut count = 0u64;
    let f = qalqan_sweep::input::read_events(
        std::io::BufReader::new(src),
        None,
        &Limits::default(),
        &mut |e| {
            if e.is_some() {
                count += 1;
            }
        },
    )
    .unwrap();
    assert_eq!(f, Format::TelegramExport);
    assert_eq!(count, n as u64);
    // The event limit stops a file that is too large, with its position.
    let src = LazyExport {
        n,
        next: 0,
        buf: Vec::new(),
        pos: 0,
        done: false,
    };
    let e = qalqan_sweep::input::read_events(
        std::io::BufReader::new(src),
        None,
        &Limits { max_events: 1000 },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("more than 1000 events") && e.to_string().contains("line 1"),
        "{e}"
    );
}
