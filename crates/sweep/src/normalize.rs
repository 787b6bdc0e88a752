//! Matching keys for texts. **Never for display or storage**: Kazakh and Russian texts are
//! shown exactly as posted; only these keys are folded.
//!
//! Steps, in order:
//! 1. Unicode NFKC (fullwidth `Ｒ`, mathematical `𝐑`, ligatures become plain letters).
//! 2. Invisible characters are dropped: controls, format characters (zero-width space and
//!    joiner, bidi marks and overrides, soft hyphen, word joiner), variation selectors, tag
//!    characters, emoji skin-tone modifiers and combining marks (so "Zalgo" text folds).
//! 3. Case folding: lower case, plus `ß`→`ss` and final `ς`→`σ`.
//! 4. Confusable skeleton: letters that look like a Latin letter in either case become that
//!    Latin letter, so `Р.І.Р` (Cyrillic) and `R.I.P` (Latin) meet. The table is small and
//!    aimed at ru/kk/en: Cyrillic `а в е ё к м н о р с т у х і ї ј ѕ һ ԁ ӏ`, Greek
//!    `α β ε η ι κ μ ν ο ρ τ υ χ γ`, Latin `ı`. Cyrillic letters with no Latin twin (`б г д ж
//!    …`) stay Cyrillic. Kazakh letters: `і` → `i` and `һ` → `h` (true homoglyphs, and the
//!    reason Kazakh/Ukrainian `і` and Latin `i` match), `ү` → `y`, `ә` → Latin `ə` (U+0259),
//!    `ө` → Latin `ɵ` (U+0275); `ғ қ ң ұ` have no Latin look-alike and stay themselves. Both
//!    sides of every comparison go through the same table, so matching stays symmetric.
//! 5. Punctuation is removed without leaving a gap (`R.I.P` → `rip`); runs of white space
//!    become one space; a run of the same character becomes one (`riiiip` → `rip`).
//! 6. Emoji and other symbols are kept only when the text has no letter or digit at all, so an
//!    emoji-only flood still has a key while `RIP 🙏` and `RIP` meet.
//!
//! [`matching_text`] keeps single spaces between words (shingles for near-duplicate search);
//! [`exact_key`] drops them too (`R I P` = `RIP`), for grouping short texts by identity.

use unicode_normalization::UnicodeNormalization as _;

/// The folded form of `s` used for near-duplicate matching. Empty when nothing is left
/// (a text of punctuation only).
pub fn matching_text(s: &str) -> String {
    let mut words = String::with_capacity(s.len());
    let mut symbols = String::new();
    let mut last: Option<char> = None;
    let mut last_symbol: Option<char> = None;
    let mut pending_space = false;
    let mut has_alnum = false;
    // Most comments are already in NFKC; the quick check spares them the decomposition.
    let nfkc: Box<dyn Iterator<Item = char>> = if unicode_normalization::is_nfkc_quick(s.chars())
        == unicode_normalization::IsNormalized::Yes
    {
        Box::new(s.chars())
    } else {
        Box::new(s.nfkc())
    };
    for c in nfkc {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        for lc in fold_case(c) {
            let m = skeleton(lc);
            if m.is_alphanumeric() {
                if pending_space && !words.is_empty() {
                    words.push(' ');
                    last = Some(' ');
                }
                pending_space = false;
                if last != Some(m) {
                    words.push(m);
                    last = Some(m);
                }
                has_alnum = true;
            } else if is_kept_symbol(m) && last_symbol != Some(m) {
                symbols.push(m);
                last_symbol = Some(m);
            }
        }
    }
    if has_alnum { words } else { symbols }
}

/// [`matching_text`] without spaces: the identity of a short text.
pub fn exact_key(matching: &str) -> String {
    matching.chars().filter(|c| *c != ' ').collect()
}

/// Longest key (in characters) that gets a transliteration alias: short slogans are what
/// floods re-type in the other alphabet; for long texts a Cyrillic/Latin clash would only
/// merge unrelated texts.
const MAX_ALIAS_CHARS: usize = 16;

/// A second key for short texts written only in Cyrillic: their Latin transliteration,
/// folded like any text. `Р.І.Р` looks like `P.I.P` (so its skeleton is `pip`) but is typed
/// and read as `R.I.P`, and `РИП` sounds like it; this alias lets both meet `rip`. `None` for
/// texts with any Latin letter, without Cyrillic, or longer than a slogan.
pub fn transliteration_key(s: &str) -> Option<String> {
    let mut cyr = false;
    let mut out = String::with_capacity(s.len());
    for c in s.nfkc().flat_map(char::to_lowercase) {
        if c.is_ascii_alphabetic() {
            return None;
        }
        let t: &str = match c {
            'а' | 'ә' => "a",
            'б' => "b",
            'в' => "v",
            'г' | 'ғ' => "g",
            'д' => "d",
            'е' | 'ё' | 'э' | 'є' => "e",
            'ж' => "zh",
            'з' => "z",
            'и' | 'й' | 'і' | 'ї' => "i",
            'к' => "k",
            'қ' => "q",
            'л' => "l",
            'м' => "m",
            'н' | 'ң' => "n",
            'о' | 'ө' => "o",
            'п' => "p",
            'р' => "r",
            'с' => "s",
            'т' => "t",
            'у' | 'ұ' | 'ү' => "u",
            'ф' => "f",
            'х' | 'һ' => "h",
            'ц' => "c",
            'ч' => "ch",
            'ш' | 'щ' => "sh",
            'ъ' | 'ь' => "",
            'ы' => "y",
            'ю' => "yu",
            'я' => "ya",
            _ => {
                out.push(c);
                continue;
            }
        };
        cyr = true;
        out.push_str(t);
    }
    if !cyr {
        return None;
    }
    let k = exact_key(&matching_text(&out));
    (!k.is_empty() && k.chars().count() <= MAX_ALIAS_CHARS).then_some(k)
}

/// Alias keys of a short text (at most two, see [`transliteration_key`]), both *r/p-blind*:
/// Cyrillic `р` is read as R but looks like P, so a typist's `Р.І.Р` (skeleton `pip`) is
/// meant as `R.I.P`. In a slogan of a few letters, treating `r` and `p` as one letter costs
/// little (a flood still needs many accounts in a short window) and lets the spellings meet.
/// Empty for longer texts.
pub fn alias_keys(raw: &str, exact: &str) -> Vec<String> {
    let blind = |k: &str| -> String { k.chars().map(|c| if c == 'p' { 'r' } else { c }).collect() };
    let mut v = Vec::new();
    if !exact.is_empty()
        && exact.chars().count() <= MAX_ALIAS_CHARS
        && (exact.contains('p') || exact.contains('r'))
    {
        v.push(blind(exact));
    }
    // A transliteration is at most twice as long as the skeleton (ж → zh), so a long key
    // cannot give a short alias: skip the work.
    if exact.chars().count() > 2 * MAX_ALIAS_CHARS {
        return v;
    }
    if let Some(t) = transliteration_key(raw) {
        let b = blind(&t);
        if !v.contains(&b) {
            v.push(b);
        }
    }
    v
}

/// Both forms at once, for callers that need both.
pub fn keys(s: &str) -> (String, String) {
    let m = matching_text(s);
    let k = exact_key(&m);
    (m, k)
}

/// Characters that change nothing a reader sees, or only decorate a letter.
fn is_invisible(c: char) -> bool {
    let u = c as u32;
    if u < 0xAD {
        return c.is_control();
    }
    // Cyrillic letters, the bulk of ru/kk text.
    if (0x400..0x483).contains(&u) || (0x48A..0x530).contains(&u) {
        return false;
    }
    c.is_control()
        || matches!(u,
            0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180E | 0x3164 | 0xFEFF | 0xFFA0
            | 0x0300..=0x036F   // combining diacritical marks
            | 0x0483..=0x0489   // combining Cyrillic
            | 0x1AB0..=0x1AFF
            | 0x1DC0..=0x1DFF
            | 0x200B..=0x200F   // zero-width space, joiners, LRM/RLM
            | 0x202A..=0x202E   // bidi embeddings and overrides
            | 0x2060..=0x206F   // word joiner, invisible operators, bidi isolates
            | 0x20D0..=0x20FF   // combining marks for symbols
            | 0xFE00..=0xFE0F   // variation selectors
            | 0xFE20..=0xFE2F
            | 0x1F3FB..=0x1F3FF // emoji skin tones
            | 0xE0000..=0xE007F // tags
            | 0xE0100..=0xE01EF)
}

/// Lower case with the two full case-folding differences that matter here.
fn fold_case(c: char) -> impl Iterator<Item = char> {
    if c.is_ascii() {
        return FoldCase::One(Some(c.to_ascii_lowercase()));
    }
    FoldCase::Many(fold_case_slow(c))
}

/// Avoids the general path for ASCII, which most Latin text is.
enum FoldCase<I> {
    One(Option<char>),
    Many(I),
}

impl<I: Iterator<Item = char>> Iterator for FoldCase<I> {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        match self {
            FoldCase::One(c) => c.take(),
            FoldCase::Many(i) => i.next(),
        }
    }
}

fn fold_case_slow(c: char) -> impl Iterator<Item = char> {
    let special: Option<[char; 2]> = match c {
        'ß' | 'ẞ' => Some(['s', 's']),
        _ => None,
    };
    let (a, b) = match special {
        Some([x, y]) => (Some(x), Some(y)),
        None => (None, None),
    };
    let lower = if special.is_some() {
        None
    } else {
        Some(c.to_lowercase())
    };
    a.into_iter()
        .chain(b)
        .chain(lower.into_iter().flatten())
        .map(|c| if c == 'ς' { 'σ' } else { c })
}

/// The confusable skeleton of one lower-case character (see the module documentation).
fn skeleton(c: char) -> char {
    match c {
        // Cyrillic: the letter or its capital looks like this Latin letter.
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' | 'є' => 'e',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'х' => 'x',
        'і' | 'ї' => 'i',
        'ј' => 'j',
        'ѕ' => 's',
        'ԁ' => 'd',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ӏ' => 'l',
        // Kazakh-specific letters with a Latin twin.
        'һ' => 'h',
        'ү' => 'y',
        'ә' => 'ə',
        'ө' => 'ɵ',
        // Greek.
        'α' => 'a',
        'β' => 'b',
        'ε' => 'e',
        'η' => 'h',
        'ι' => 'i',
        'κ' => 'k',
        'μ' => 'm',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'γ' => 'y',
        'ϲ' => 'c',
        'ϳ' => 'j',
        // Latin look-alikes of Latin letters.
        'ı' => 'i',
        'ɑ' => 'a',
        'ǝ' => 'ə',
        _ => c,
    }
}

/// Emoji, pictographs, dingbats, arrows and other symbols (kept for emoji-only texts);
/// punctuation is not kept. The test is by block, which is enough for a matching key.
fn is_kept_symbol(c: char) -> bool {
    let u = c as u32;
    u >= 0x2100
        && !matches!(u,
            0x2E00..=0x2E7F | 0x3000..=0x303F | 0xFE10..=0xFE1F | 0xFE30..=0xFE6F | 0xFF00..=0xFF65)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rip_spellings_meet() {
        let spellings = [
            "R.I.P",
            "RIP",
            "rip",
            "R.I.P.",
            "R I P",
            "  R.I.P  ",
            "Р.І.Р", // Cyrillic Р, Kazakh/Ukrainian І
            "R.І.P", // Latin R and P, Kazakh/Ukrainian І
            "R.I.P 🙏",
            "🕯️ R.I.P 🕯️",
            "RIIIIP!!!",
            "R\u{200B}.I\u{200D}.P",
            "ＲＩＰ",        // fullwidth
            "𝐑.𝐈.𝐏",         // mathematical bold
            "R̸I̸P̸",           // combining overlay
            "\u{202E}R.I.P", // bidi override
        ];
        for s in spellings {
            let k = exact_key(&matching_text(s));
            let aliases = alias_keys(s, &k);
            assert!(
                k == "rip" || aliases.contains(&"rir".to_string()),
                "{s:?}: {k} / {aliases:?}"
            );
            assert!(aliases.contains(&"rir".to_string()), "{s:?}: {aliases:?}");
        }
        // Cyrillic Р looks like Latin P: the skeleton says so; the r/p-blind alias lets the
        // typist's R meet.
        assert_eq!(exact_key(&matching_text("Р.І.Р")), "pip");
        assert_eq!(alias_keys("Р.І.Р 🙏", "pip"), vec!["rir".to_string()]);
        assert_eq!(transliteration_key("РИП").as_deref(), Some("rip"));
        assert!(
            alias_keys(
                "Спасибо за подробную статью о бюджете",
                "x".repeat(30).as_str()
            )
            .is_empty()
        );
        assert_eq!(transliteration_key("R.I.P"), None);
        assert_eq!(transliteration_key("Р.I.P"), None);
        assert_eq!(
            transliteration_key("Это очень длинный комментарий про политику"),
            None
        );
    }

    #[test]
    fn kazakh_i_matches_latin_i_and_other_letters_stay() {
        assert_eq!(matching_text("і"), matching_text("i"));
        assert_eq!(matching_text("І"), matching_text("I"));
        // ғ қ ң ұ have no Latin twin and must not be folded into one.
        for c in ["ғ", "қ", "ң", "ұ"] {
            assert_eq!(matching_text(c), c);
        }
        assert_ne!(matching_text("қ"), matching_text("к"));
        assert_ne!(matching_text("ң"), matching_text("н"));
        assert_ne!(matching_text("ұ"), matching_text("ү"));
        // Kazakh text keeps its word boundaries and its own letters.
        assert_eq!(matching_text("Рахмет, ағай!"), "paxmet aғaй");
    }

    #[test]
    fn case_and_repeats_and_spaces() {
        assert_eq!(
            matching_text("СПАСИБООО   за   статью!!!"),
            "cпacибo зa ctatью"
        );
        assert_eq!(matching_text("Straße"), "strase");
        assert_eq!(matching_text("Σοφός"), matching_text("σοφόσ"));
    }

    #[test]
    fn emoji_only_texts_keep_a_key() {
        assert_eq!(matching_text("🙏🙏🙏"), "🙏");
        assert_eq!(matching_text("👍🏻👍🏿"), "👍");
        assert_eq!(matching_text("..."), "");
        assert_eq!(matching_text(""), "");
    }

    #[test]
    fn display_text_is_untouched() {
        let shown = String::from("Рақмет, Әлия!");
        let _ = matching_text(&shown);
        assert_eq!(shown, "Рақмет, Әлия!");
    }

    proptest! {
        #[test]
        fn never_panics_and_spaces_are_clean(s in "\\PC{0,64}") {
            let m = matching_text(&s);
            prop_assert!(!m.starts_with(' ') && !m.ends_with(' '));
            prop_assert!(!m.contains("  "));
            prop_assert!(!exact_key(&m).contains(' '));
        }

        #[test]
        fn idempotent_on_ru_kk_en_text(s in "[a-zA-Zа-яА-ЯёЁәғқңөұүһіӘҒҚҢӨҰҮҺІ0-9 .,!?🙏\u{200B}]{0,40}") {
            // Folding again changes nothing: the key is a fixed point. (Not true of every
            // script: deleting punctuation can let NFKC compose two marks that were apart.)
            let m = matching_text(&s);
            prop_assert_eq!(matching_text(&m), m.clone());
        }

        #[test]
        fn arbitrary_unicode_never_panics(v in proptest::collection::vec(any::<char>(), 0..64)) {
            let s: String = v.into_iter().collect();
            let (m, k) = keys(&s);
            prop_assert!(k.chars().count() <= m.chars().count());
        }
    }
}
