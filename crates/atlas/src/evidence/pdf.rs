//! `report.pdf`: the facts of `report.html` as a PDF for people who print (police, courts).
//!
//! A small PDF 1.7 writer of our own: A4 pages, one embedded font (DejaVu Sans cut to Latin,
//! Greek and Cyrillic with Kazakh letters, `data/fonts/`), headings, paragraphs and ruled tables
//! whose cells wrap, and "page N of M" at the foot of each page. Text is written as glyph ids
//! (Identity-H) with a ToUnicode map, so copying and `pdftotext` give the letters back. The output
//! depends only on its input (no clock, no random ids), so the same facts give the same bytes.
//! Letters the font lacks are printed as `?`; the HTML report shows them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use super::{Facts, time_of, w};
use crate::i18n::{Lang, t};

/// The embedded font (see `data/fonts/README.md`).
static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans-subset.ttf");

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 48.0;
/// Room kept at the bottom for the page number.
const FOOT: f32 = 28.0;
const BODY: f32 = 9.0;
const SMALL: f32 = 7.5;
const PAD: f32 = 3.0;

/// The font's metrics and character map, read once per report.
struct Font<'a> {
    face: ttf_parser::Face<'a>,
    upem: f32,
    fallback: u16,
}

impl<'a> Font<'a> {
    fn load() -> Option<Font<'static>> {
        let face = ttf_parser::Face::parse(FONT, 0).ok()?;
        let upem = f32::from(face.units_per_em().max(1));
        let fallback = face.glyph_index('?').map_or(0, |g| g.0);
        Some(Font {
            face,
            upem,
            fallback,
        })
    }

    /// The glyph for a character (`?` when the font lacks it) and its advance in font units.
    fn glyph(&self, c: char) -> (u16, char, f32) {
        let (g, c) = match self.face.glyph_index(c) {
            Some(g) if g.0 != 0 => (g.0, c),
            _ => (self.fallback, '?'),
        };
        let adv = self
            .face
            .glyph_hor_advance(ttf_parser::GlyphId(g))
            .unwrap_or(0);
        (g, c, f32::from(adv))
    }

    fn width(&self, s: &str, size: f32) -> f32 {
        s.chars().map(|c| self.glyph(c).2).sum::<f32>() * size / self.upem
    }
}

enum Item {
    Text {
        x: f32,
        y: f32,
        size: f32,
        glyphs: Vec<u16>,
    },
    Line {
        x1: f32,
        y1: f32,
        x2: f32,
        y2: f32,
    },
}

/// Lays text out top to bottom over as many pages as it needs.
struct Layout<'f> {
    font: &'f Font<'f>,
    pages: Vec<Vec<Item>>,
    y: f32,
    /// Every glyph used, with the character it stands for (for widths and ToUnicode).
    used: BTreeMap<u16, char>,
}

impl<'f> Layout<'f> {
    fn new(font: &'f Font<'f>) -> Layout<'f> {
        Layout {
            font,
            pages: vec![Vec::new()],
            y: PAGE_H - MARGIN,
            used: BTreeMap::new(),
        }
    }

    fn bottom() -> f32 {
        MARGIN + FOOT
    }

    fn new_page(&mut self) {
        self.pages.push(Vec::new());
        self.y = PAGE_H - MARGIN;
    }

    /// Starts a new page unless the current one is still empty.
    fn fresh_page(&mut self) {
        if self.pages.last().is_some_and(|p| !p.is_empty()) {
            self.new_page();
        }
    }

    fn room(&self) -> f32 {
        self.y - Self::bottom()
    }

    fn text_at(&mut self, x: f32, y: f32, size: f32, s: &str) {
        let mut glyphs = Vec::with_capacity(s.len());
        for c in s.chars() {
            let (g, shown, _) = self.font.glyph(c);
            self.used.entry(g).or_insert(shown);
            glyphs.push(g);
        }
        if let Some(p) = self.pages.last_mut() {
            p.push(Item::Text { x, y, size, glyphs });
        }
    }

    fn line(&mut self, x1: f32, y1: f32, x2: f32, y2: f32) {
        if let Some(p) = self.pages.last_mut() {
            p.push(Item::Line { x1, y1, x2, y2 });
        }
    }

    /// Breaks text into lines no wider than `width`: at spaces, and inside words too long for
    /// one line (hashes, URLs).
    fn wrap(&self, text: &str, size: f32, width: f32) -> Vec<String> {
        let mut out = Vec::new();
        for para in text.split('\n') {
            let mut line = String::new();
            for word in para.split(' ') {
                let candidate = if line.is_empty() {
                    word.to_string()
                } else {
                    format!("{line} {word}")
                };
                if self.font.width(&candidate, size) <= width {
                    line = candidate;
                    continue;
                }
                if !line.is_empty() {
                    out.push(std::mem::take(&mut line));
                }
                // The word alone: split it by characters when it is too wide.
                for c in word.chars() {
                    line.push(c);
                    if self.font.width(&line, size) > width && line.chars().count() > 1 {
                        line.pop();
                        out.push(std::mem::take(&mut line));
                        line.push(c);
                    }
                }
            }
            out.push(line);
        }
        out
    }

    fn leading(size: f32) -> f32 {
        size * 1.3
    }

    fn heading(&mut self, text: &str, size: f32) {
        let width = PAGE_W - 2.0 * MARGIN;
        let lines = self.wrap(text, size, width);
        let need = Self::leading(size) * lines.len().min(3) as f32 + size;
        if self.room() < need + 3.0 * Self::leading(BODY) {
            self.new_page();
        }
        self.y -= size * 0.6;
        for l in lines {
            if self.room() < Self::leading(size) {
                self.new_page();
            }
            self.y -= Self::leading(size);
            self.text_at(MARGIN, self.y + size * 0.25, size, &l);
        }
        self.y -= size * 0.4;
    }

    fn paragraph(&mut self, text: &str, size: f32) {
        let width = PAGE_W - 2.0 * MARGIN;
        for l in self.wrap(text, size, width) {
            if self.room() < Self::leading(size) {
                self.new_page();
            }
            self.y -= Self::leading(size);
            self.text_at(MARGIN, self.y + size * 0.25, size, &l);
        }
        self.y -= size * 0.5;
    }

    /// A ruled table; `widths` are fractions of the text width. A row taller than what is left
    /// of the page continues on the next one.
    fn table(&mut self, widths: &[f32], header: Option<&[&str]>, rows: &[Vec<String>], size: f32) {
        let total = PAGE_W - 2.0 * MARGIN;
        let cols: Vec<f32> = widths.iter().map(|f| f * total).collect();
        let lead = Self::leading(size);
        let head: Option<Vec<String>> = header.map(|h| h.iter().map(|s| s.to_string()).collect());
        for (n, row) in head.iter().chain(rows.iter()).enumerate() {
            let cells: Vec<Vec<String>> = cols
                .iter()
                .enumerate()
                .map(|(i, wd)| {
                    let text = row.get(i).map(String::as_str).unwrap_or("");
                    self.wrap(text, size, (wd - 2.0 * PAD).max(size))
                })
                .collect();
            let height = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
            // Keep short rows whole: move them to a new page rather than split them.
            if height <= 6 && self.room() < height as f32 * lead + 2.0 * PAD {
                self.new_page();
            }
            let mut start = 0;
            while start < height {
                let fits = ((self.room() - 2.0 * PAD) / lead).floor();
                if fits < 1.0 {
                    self.new_page();
                    continue;
                }
                let take = (fits as usize).min(height - start);
                let top = self.y;
                let bottom = top - take as f32 * lead - 2.0 * PAD;
                let mut x = MARGIN;
                for (i, wd) in cols.iter().enumerate() {
                    for (k, l) in cells[i].iter().skip(start).take(take).enumerate() {
                        let baseline = top - PAD - (k as f32 + 1.0) * lead + size * 0.3;
                        self.text_at(x + PAD, baseline, size, l);
                    }
                    self.line(x, top, x, bottom);
                    x += wd;
                }
                self.line(x, top, x, bottom);
                self.line(MARGIN, top, MARGIN + total, top);
                self.line(MARGIN, bottom, MARGIN + total, bottom);
                // The header row is underlined twice to set it apart.
                if n == 0 && head.is_some() {
                    self.line(MARGIN, bottom - 1.0, MARGIN + total, bottom - 1.0);
                }
                self.y = bottom;
                start += take;
            }
        }
        self.y -= BODY;
    }
}

/// The report as PDF bytes, in the same order and with the same facts as `report.html`.
pub(super) fn report_pdf(
    facts: &[Facts],
    paths: &BTreeMap<String, String>,
    lang: Lang,
    created_ms: i64,
    creator: &str,
    creator_outlet: &str,
) -> Vec<u8> {
    let Some(font) = Font::load() else {
        // The font is compiled in and checked by a test; this cannot happen in a release.
        return Vec::new();
    };
    let mut l = Layout::new(&font);
    let title = w(lang, "title");
    l.heading(title, 16.0);
    l.paragraph(
        &format!(
            "{}: {}. {}: {} ({}).",
            w(lang, "created"),
            super::both_times(created_ms, lang),
            w(lang, "by"),
            creator,
            creator_outlet
        ),
        BODY,
    );
    l.paragraph(w(lang, "times"), BODY);
    l.paragraph(w(lang, "verify"), BODY);
    l.paragraph(w(lang, "pdf_note"), BODY);

    for (n, f) in facts.iter().enumerate() {
        let i = &f.incident;
        if n > 0 {
            l.fresh_page();
        }
        l.heading(
            &format!("{} {}: {}", w(lang, "incident"), n + 1, i.title),
            13.0,
        );
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut row = |k: &str, v: String| rows.push(vec![w(lang, k).to_string(), v]);
        row("id", i.id.clone());
        row("outlet", i.outlet.clone());
        row("kind", format!("{} ({})", f.kind_name, i.kind));
        row(
            "status",
            t(lang, &format!("status.{}", i.status.as_str())).to_string(),
        );
        row(
            "confidence",
            t(lang, &format!("confidence.{}", i.confidence.as_str())).to_string(),
        );
        row(
            "tlp",
            format!(
                "{} — {}",
                i.tlp.as_str().to_uppercase(),
                t(lang, &format!("tlp.{}", i.tlp.as_str().replace('+', "_")))
            ),
        );
        row("started", time_of(&i.started_at, lang));
        row(
            "ended",
            i.ended_at
                .as_deref()
                .map_or_else(|| w(lang, "ongoing").to_string(), |e| time_of(e, lang)),
        );
        if i.date_unknown {
            row("date_unknown", "✓".into());
        }
        row("source", i.source.clone());
        row(
            "recorded",
            format!("{}, {}", time_of(&i.created_at, lang), i.created_by),
        );
        let mut impact = Vec::new();
        for (key, v) in [
            ("impact.downtime_minutes", i.impact.downtime_minutes),
            ("impact.requests", i.impact.requests),
            ("impact.followers_added", i.impact.followers_added),
            ("impact.comments", i.impact.comments),
        ] {
            if let Some(v) = v {
                impact.push(format!("{}: {v}", t(lang, key)));
            }
        }
        row(
            "impact",
            if impact.is_empty() {
                w(lang, "none").to_string()
            } else {
                impact.join("\n")
            },
        );
        let targets: Vec<String> = i
            .targets
            .iter()
            .map(|x| {
                let p = x
                    .platform
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                format!("{}{p}: {}", t(lang, &format!("target.{}", x.kind)), x.value)
            })
            .collect();
        row(
            "targets",
            if targets.is_empty() {
                w(lang, "none").to_string()
            } else {
                targets.join("\n")
            },
        );
        l.table(&[0.3, 0.7], None, &rows, BODY);

        if !i.description.is_empty() {
            l.heading(w(lang, "description"), 11.0);
            l.paragraph(&i.description, BODY);
        }

        l.heading(w(lang, "indicators"), 11.0);
        if f.sightings.is_empty() {
            l.paragraph(w(lang, "none"), BODY);
        } else {
            let rows: Vec<Vec<String>> = f
                .sightings
                .iter()
                .map(|s| {
                    vec![
                        s.kind.clone(),
                        s.value.clone(),
                        s.count.to_string(),
                        time_of(&s.first_seen, lang),
                        time_of(&s.last_seen, lang),
                    ]
                })
                .collect();
            l.table(
                &[0.1, 0.28, 0.12, 0.25, 0.25],
                Some(&[
                    w(lang, "kind"),
                    w(lang, "value"),
                    w(lang, "count"),
                    w(lang, "first_seen"),
                    w(lang, "last_seen"),
                ]),
                &rows,
                SMALL,
            );
        }

        l.heading(w(lang, "timeline"), 11.0);
        let mut rows = vec![vec![
            time_of(&i.created_at, lang),
            i.created_by.clone(),
            w(lang, "created_entry").to_string(),
        ]];
        for u in &i.updates {
            let status = u
                .new_status
                .as_deref()
                .map(|s| {
                    format!(
                        " [{}: {}]",
                        w(lang, "status"),
                        t(lang, &format!("status.{s}"))
                    )
                })
                .unwrap_or_default();
            rows.push(vec![
                time_of(&u.at, lang),
                u.author.clone(),
                format!("{}{status}", u.body),
            ]);
        }
        l.table(
            &[0.28, 0.22, 0.5],
            Some(&[w(lang, "at"), w(lang, "author"), w(lang, "entry")]),
            &rows,
            SMALL,
        );

        l.heading(w(lang, "attachments"), 11.0);
        if f.attachments.is_empty() {
            l.paragraph(w(lang, "none"), BODY);
        } else {
            let rows: Vec<Vec<String>> = f
                .attachments
                .iter()
                .map(|a| {
                    vec![
                        format!("{}\n{}", a.name, a.media_type),
                        a.size.to_string(),
                        a.sha256.clone(),
                        paths.get(&a.sha256).cloned().unwrap_or_default(),
                        format!("{}, {}", time_of(&a.added_at, lang), a.added_by),
                    ]
                })
                .collect();
            l.table(
                &[0.18, 0.1, 0.24, 0.24, 0.24],
                Some(&[
                    w(lang, "name"),
                    w(lang, "size"),
                    "SHA-256",
                    w(lang, "path"),
                    w(lang, "recorded"),
                ]),
                &rows,
                SMALL,
            );
        }

        l.heading(w(lang, "publications"), 11.0);
        if f.publications.is_empty() {
            l.paragraph(w(lang, "none"), BODY);
        } else {
            for p in &f.publications {
                l.paragraph(
                    &format!(
                        "• {}: {} {}",
                        time_of(&p.published_at, lang),
                        p.title,
                        p.url
                    ),
                    BODY,
                );
            }
        }
    }

    // Page numbers, now that the count is known.
    let m = l.pages.len();
    for n in 0..m {
        let s = w(lang, "page")
            .replace("{n}", &(n + 1).to_string())
            .replace("{m}", &m.to_string());
        let x = (PAGE_W - font.width(&s, SMALL)) / 2.0;
        let mut glyphs = Vec::new();
        for c in s.chars() {
            let (g, shown, _) = font.glyph(c);
            l.used.entry(g).or_insert(shown);
            glyphs.push(g);
        }
        l.pages[n].push(Item::Text {
            x,
            y: MARGIN - 4.0,
            size: SMALL,
            glyphs,
        });
    }
    write_pdf(&font, &l, title, created_ms)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// A PDF text string: UTF-16BE with a byte-order mark, in hex.
fn pdf_text(s: &str) -> String {
    let mut o = String::from("<FEFF");
    for u in s.encode_utf16() {
        let _ = write!(o, "{u:04X}");
    }
    o.push('>');
    o
}

/// Serialises the laid-out pages: catalog, page tree, one Type0 font with its CID font,
/// descriptor, embedded file and ToUnicode map, the pages and their content streams, the
/// cross-reference table.
fn write_pdf(font: &Font, l: &Layout, title: &str, created_ms: i64) -> Vec<u8> {
    let n_pages = l.pages.len();
    // Objects: 1 catalog, 2 pages, 3 font, 4 CID font, 5 descriptor, 6 font file, 7 ToUnicode,
    // 8 info, then a page and its content per page.
    let n_objects = 8 + 2 * n_pages;
    let mut out: Vec<u8> = Vec::new();
    let mut offsets = vec![0usize; n_objects + 1];
    out.extend_from_slice(b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n");

    fn obj(out: &mut Vec<u8>, offsets: &mut [usize], n: usize, body: &[u8]) {
        offsets[n] = out.len();
        out.extend_from_slice(format!("{n} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut b = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        b.extend_from_slice(data);
        b.extend_from_slice(b"\nendstream");
        b
    }

    obj(
        &mut out,
        &mut offsets,
        1,
        b"<< /Type /Catalog /Pages 2 0 R >>",
    );
    let kids: Vec<String> = (0..n_pages).map(|i| format!("{} 0 R", 9 + 2 * i)).collect();
    obj(
        &mut out,
        &mut offsets,
        2,
        format!(
            "<< /Type /Pages /Kids [{}] /Count {n_pages} /MediaBox [0 0 {PAGE_W} {PAGE_H}] >>",
            kids.join(" ")
        )
        .as_bytes(),
    );
    obj(
        &mut out,
        &mut offsets,
        3,
        b"<< /Type /Font /Subtype /Type0 /BaseFont /DejaVuSans /Encoding /Identity-H /DescendantFonts [4 0 R] /ToUnicode 7 0 R >>",
    );
    let scale = 1000.0 / font.upem;
    let mut widths = String::new();
    for g in l.used.keys() {
        let adv = font
            .face
            .glyph_hor_advance(ttf_parser::GlyphId(*g))
            .unwrap_or(0);
        let _ = write!(widths, "{g} [{}] ", (f32::from(adv) * scale).round());
    }
    obj(
        &mut out,
        &mut offsets,
        4,
        format!(
            "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /DejaVuSans /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /FontDescriptor 5 0 R /DW 600 /W [{widths}] /CIDToGIDMap /Identity >>"
        )
        .as_bytes(),
    );
    let bb = font.face.global_bounding_box();
    let sc = |v: i16| (f32::from(v) * scale).round();
    obj(
        &mut out,
        &mut offsets,
        5,
        format!(
            "<< /Type /FontDescriptor /FontName /DejaVuSans /Flags 32 /FontBBox [{} {} {} {}] /ItalicAngle 0 /Ascent {} /Descent {} /CapHeight {} /StemV 80 /FontFile2 6 0 R >>",
            sc(bb.x_min),
            sc(bb.y_min),
            sc(bb.x_max),
            sc(bb.y_max),
            sc(font.face.ascender()),
            sc(font.face.descender()),
            sc(font.face.capital_height().unwrap_or(font.face.ascender())),
        )
        .as_bytes(),
    );
    obj(
        &mut out,
        &mut offsets,
        6,
        &stream(
            &format!("/Filter /FlateDecode /Length1 {}", FONT.len()),
            &deflate(FONT),
        ),
    );
    let mut cmap = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    let used: Vec<(&u16, &char)> = l.used.iter().collect();
    for chunk in used.chunks(100) {
        let _ = writeln!(cmap, "{} beginbfchar", chunk.len());
        for (g, c) in chunk {
            let mut u = String::new();
            let mut buf = [0u16; 2];
            for x in c.encode_utf16(&mut buf) {
                let _ = write!(u, "{x:04X}");
            }
            let _ = writeln!(cmap, "<{g:04X}> <{u}>");
        }
        cmap.push_str("endbfchar\n");
    }
    cmap.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    obj(&mut out, &mut offsets, 7, &stream("", cmap.as_bytes()));
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(created_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = date
        .format(time::macros::format_description!(
            "D:[year][month][day][hour][minute][second]Z"
        ))
        .unwrap_or_default();
    obj(
        &mut out,
        &mut offsets,
        8,
        format!(
            "<< /Title {} /Producer (Qalqan) /Creator (Qalqan atlas) /CreationDate ({date}) >>",
            pdf_text(title)
        )
        .as_bytes(),
    );
    for (i, items) in l.pages.iter().enumerate() {
        let page = 9 + 2 * i;
        let content = page + 1;
        obj(
            &mut out,
            &mut offsets,
            page,
            format!(
                "<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>"
            )
            .as_bytes(),
        );
        let mut c = String::from("0.5 w 0.55 G\n");
        for it in items {
            match it {
                Item::Line { x1, y1, x2, y2 } => {
                    let _ = writeln!(c, "{x1:.2} {y1:.2} m {x2:.2} {y2:.2} l S");
                }
                Item::Text { x, y, size, glyphs } => {
                    let _ = write!(c, "BT /F1 {size:.1} Tf {x:.2} {y:.2} Td <");
                    for g in glyphs {
                        let _ = write!(c, "{g:04X}");
                    }
                    c.push_str("> Tj ET\n");
                }
            }
        }
        obj(
            &mut out,
            &mut offsets,
            content,
            &stream("/Filter /FlateDecode", &deflate(c.as_bytes())),
        );
    }
    let xref = out.len();
    let mut x = format!("xref\n0 {}\n0000000000 65535 f \n", n_objects + 1);
    for off in offsets.iter().skip(1) {
        let _ = writeln!(x, "{off:010} 00000 n ");
    }
    let _ = write!(
        x,
        "trailer\n<< /Size {} /Root 1 0 R /Info 8 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        n_objects + 1
    );
    out.extend_from_slice(x.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_font_has_every_kazakh_letter() {
        let f = Font::load().expect("embedded font parses");
        for c in "АаӘәБбҒғҚқҢңӨөҰұҮүҺһІіЁё№—«»ÄäĞğÑñÖöŞşŪūÜüİı".chars()
        {
            assert_ne!(f.glyph(c).1, '?', "{c} missing");
        }
        assert_eq!(f.glyph('漢').1, '?');
    }

    #[test]
    fn long_words_wrap_inside_the_width() {
        let f = Font::load().unwrap();
        let l = Layout::new(&f);
        let sha = "ab".repeat(32);
        let lines = l.wrap(&format!("хеш {sha} конец"), SMALL, 80.0);
        assert!(lines.len() > 2, "{lines:?}");
        for line in &lines {
            assert!(f.width(line, SMALL) <= 80.0, "{line}");
        }
        assert_eq!(lines.concat().replace(' ', ""), format!("хеш{sha}конец"));
    }
}
