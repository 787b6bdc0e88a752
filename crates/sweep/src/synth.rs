//! Deterministic synthetic data for tests and the benchmark (a fixed seed gives the same data
//! everywhere). Nothing here is used on real inputs.
//!
//! * [`comments`]: ordinary ru/kk/en comments over 30 days (sentences from word lists, a few
//!   common short phrases said by many readers at an ordinary rate, one reader repeating
//!   himself), optionally with an "R.I.P" flood of many spellings by bot accounts.
//! * [`joins`]: organic joins with a daily rhythm and a news spike, optionally with a wave of
//!   templated accounts.
//! * [`bench_comments`]: short comments for the clustering benchmark, a share of them
//!   near-duplicates of campaign texts with typos, homoglyphs, case and punctuation changes.

use crate::model::{Join, Message};

/// xorshift64*: small, fast, and stable across versions (unlike a crate's default RNG).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const RU: &[&str] = &[
    "спасибо",
    "за",
    "статью",
    "очень",
    "интересно",
    "когда",
    "будет",
    "продолжение",
    "власти",
    "опять",
    "молчат",
    "цены",
    "растут",
    "в",
    "Алматы",
    "Астане",
    "люди",
    "правда",
    "журналисты",
    "молодцы",
    "это",
    "позор",
    "кто",
    "ответит",
    "пишите",
    "больше",
    "про",
    "экологию",
    "дороги",
    "ремонт",
    "снова",
    "школа",
    "больница",
    "акимат",
    "бюджет",
    "деньги",
    "налоги",
    "тенге",
    "доллар",
    "работа",
    "зарплата",
    "пенсия",
    "семья",
    "дети",
    "город",
    "село",
    "вода",
    "газ",
    "свет",
    "зима",
    "весна",
    "новости",
    "сегодня",
    "вчера",
    "завтра",
    "думаю",
    "согласен",
    "не",
    "согласна",
    "ужас",
    "хорошо",
    "плохо",
    "надо",
    "проверить",
    "факты",
    "источник",
    "видео",
    "фото",
];
const KK: &[&str] = &[
    "рахмет",
    "жақсы",
    "мақала",
    "өте",
    "қызық",
    "бұл",
    "дұрыс",
    "емес",
    "біз",
    "сіз",
    "халық",
    "қала",
    "ауыл",
    "жол",
    "су",
    "үй",
    "бала",
    "мектеп",
    "аурухана",
    "ақша",
    "жұмыс",
    "жалақы",
    "зейнетақы",
    "әкімдік",
    "бүгін",
    "ертең",
    "кеше",
    "неге",
    "қашан",
    "кім",
    "жауап",
    "береді",
    "шындық",
    "жаңалық",
    "тілші",
    "рақмет",
    "көп",
    "аз",
    "үлкен",
    "кішкентай",
    "Алматы",
    "Астана",
    "Шымкент",
    "Қарағанды",
    "әділет",
    "заң",
    "сот",
    "ел",
];
const EN: &[&str] = &[
    "thanks",
    "for",
    "the",
    "article",
    "great",
    "reporting",
    "when",
    "will",
    "they",
    "answer",
    "prices",
    "keep",
    "rising",
    "in",
    "Almaty",
    "people",
    "deserve",
    "truth",
    "journalists",
    "brave",
    "this",
    "is",
    "a",
    "shame",
    "who",
    "pays",
    "more",
    "about",
    "roads",
    "schools",
    "hospitals",
    "budget",
    "money",
    "taxes",
    "work",
    "salary",
    "family",
    "city",
    "village",
    "water",
    "gas",
    "news",
    "today",
    "yesterday",
    "agree",
    "disagree",
    "check",
    "facts",
    "source",
    "video",
    "photo",
    "please",
    "follow",
    "up",
    "on",
    "story",
];
const COMMON: &[&str] = &[
    "Спасибо!",
    "Рахмет!",
    "Thanks!",
    "👍",
    "Согласен",
    "Жақсы",
    "+",
    "Класс",
    "Позор",
    "🔥",
];
const FIRST: &[&str] = &[
    "Алия",
    "Дана",
    "Айгерим",
    "Нурлан",
    "Ерлан",
    "Асель",
    "Мадина",
    "Арман",
    "Данияр",
    "Жанна",
    "Иван",
    "Ольга",
    "Сергей",
    "Анна",
    "Тимур",
    "Айдос",
    "Gulnara",
    "Aruzhan",
    "John",
    "Maria",
    "Dmitry",
    "Saule",
    "Bolat",
    "Kamila",
];
const LAST: &[&str] = &[
    "Серікова",
    "Нурланов",
    "Ахметова",
    "Иванов",
    "Петрова",
    "Касымов",
    "Жумабаев",
    "Смагулова",
    "Ким",
    "Ли",
    "Omarov",
    "Bekova",
    "Smith",
    "Tulegenov",
];

/// The flood's spellings: Latin, Cyrillic look-alikes (Р, І), extra spaces, invisible
/// characters, fullwidth, repeats, and emoji.
pub const RIP_SPELLINGS: &[&str] = &[
    "R.I.P",
    "RIP",
    "rip",
    "R.I.P.",
    "R I P",
    "  R.I.P  ",
    "Р.І.Р",
    "R.І.P",
    "R.І.Р",
    "RIP 🙏",
    "R.I.P 🕯️🕯️",
    "🥀 R.I.P 🥀",
    "RIIIP",
    "R\u{200B}.I.P",
    "ＲＩＰ",
    "r.i.p!!!",
    "R. I. P.",
    "Р І Р 🙏",
    "R.I.P😢",
    "rip.",
];

/// Ground truth with generated comments: which message indices the flood made.
pub struct Comments {
    pub messages: Vec<Message>,
    pub flood: Vec<bool>,
}

const DAY: i64 = 86_400;
/// 2024-03-01 00:00 UTC.
pub const EPOCH: i64 = 1_709_251_200;

fn sentence(r: &mut Rng) -> String {
    let words = match r.below(3) {
        0 => RU,
        1 => KK,
        _ => EN,
    };
    let n = 3 + r.below(9) as usize;
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        let w: &&str = r.pick(words);
        s.push_str(w);
    }
    match r.below(6) {
        0 => s.push('!'),
        1 => s.push('?'),
        2 => s.push_str(" 👍"),
        _ => {}
    }
    s
}

/// Ordinary comments over 30 days, plus an optional flood of `flood` comments by distinct bot
/// accounts within two hours on day 12. Messages come out in time order.
pub fn comments(seed: u64, ordinary: usize, flood: usize) -> Comments {
    let mut r = Rng::new(seed);
    let mut v: Vec<(Message, bool)> = Vec::with_capacity(ordinary + flood);
    let readers = (ordinary / 5).max(10) as u64;
    for i in 0..ordinary {
        // Activity follows the day: fewer comments at night (UTC+5 evening is busy).
        let day = r.below(30) as i64;
        let mut sec = r.below(DAY as u64) as i64;
        if (sec / 3600 + 5) % 24 < 7 && r.chance(0.7) {
            sec = (sec + 10 * 3600) % DAY;
        }
        let reader = r.below(readers).min(r.below(readers)); // some readers comment a lot
        let (author, text) = if i % 500 == 7 {
            // One reader who repeats himself.
            ("reader-loud".to_string(), "Позор акимату!".to_string())
        } else if r.chance(0.04) {
            (format!("reader{reader}"), (*r.pick(COMMON)).to_string())
        } else {
            (format!("reader{reader}"), sentence(&mut r))
        };
        v.push((
            Message {
                id: format!("m{i}"),
                author_name: format!("{} {}", r.pick(FIRST), r.pick(LAST)),
                author_id: author,
                time: EPOCH + day * DAY + sec,
                text,
            },
            false,
        ));
    }
    let start = EPOCH + 12 * DAY + 15 * 3600;
    for k in 0..flood {
        v.push((
            Message {
                id: format!("f{k}"),
                author_id: format!("bot{}", 7_900_000_000u64 + k as u64 * 13),
                author_name: format!("{} {}", r.pick(FIRST), 1000 + r.below(9000)),
                time: start + r.below(2 * 3600) as i64,
                text: r.pick(RIP_SPELLINGS).to_string(),
            },
            true,
        ));
    }
    v.sort_by_key(|(m, _)| m.time);
    let (messages, flood) = v.into_iter().unzip();
    Comments { messages, flood }
}

/// Ground truth with generated joins: which joins the bot wave made.
pub struct Joins {
    pub joins: Vec<Join>,
    pub bot: Vec<bool>,
}

/// About `organic` joins over 30 days with a daily rhythm and a news spike (400 extra organic
/// joins in one hour on day 20), plus `wave` templated accounts over three hours on day 9.
pub fn joins(seed: u64, organic: usize, wave: usize) -> Joins {
    let mut r = Rng::new(seed ^ 0xA11CE);
    let mut v: Vec<(Join, bool)> = Vec::with_capacity(organic + wave + 400);
    let person = |r: &mut Rng, t: i64| {
        let id = 100_000_000 + r.below(8_000_000_000);
        let name = if r.chance(0.6) {
            format!("{} {}", r.pick(FIRST), r.pick(LAST))
        } else if r.chance(0.05) {
            format!("{} {}", r.pick(FIRST), 1950 + r.below(60))
        } else {
            r.pick(FIRST).to_string()
        };
        let has_user = r.chance(0.7);
        Join {
            account_id: format!("user{id}"),
            name,
            username: Some(if has_user {
                format!("u{id}")
            } else {
                String::new()
            }),
            has_photo: Some(r.chance(0.65)),
            time: t,
            invite_link: r
                .chance(0.3)
                .then(|| "https://t.me/kursiv_media".to_string()),
        }
    };
    for _ in 0..organic {
        let day = r.below(30) as i64;
        let mut sec = r.below(DAY as u64) as i64;
        if (sec / 3600 + 5) % 24 < 7 && r.chance(0.7) {
            sec = (sec + 10 * 3600) % DAY;
        }
        let j = person(&mut r, EPOCH + day * DAY + sec);
        v.push((j, false));
    }
    let spike = EPOCH + 20 * DAY + 9 * 3600;
    for _ in 0..400 {
        let t = spike + r.below(3600) as i64;
        let j = person(&mut r, t);
        v.push((j, false));
    }
    let start = EPOCH + 9 * DAY + 2 * 3600;
    let mut id = 7_912_000_000u64;
    for k in 0..wave {
        id += 1 + r.below(40);
        v.push((
            Join {
                account_id: format!("user{id}"),
                name: format!("{} {}", r.pick(FIRST), 1000 + r.below(9000)),
                username: Some(if r.chance(0.03) {
                    format!("bot{k}")
                } else {
                    String::new()
                }),
                has_photo: Some(r.chance(0.08)),
                time: start + (k as i64 * 3 * 3600) / wave.max(1) as i64,
                invite_link: Some("https://t.me/+Qx7PpLw2".to_string()),
            },
            true,
        ));
    }
    v.sort_by_key(|(j, _)| j.time);
    let (joins, bot) = v.into_iter().unzip();
    Joins { joins, bot }
}

/// Short comments for the clustering benchmark: about 45 % ordinary sentences, 35 % copies of
/// 20,000 campaign texts with small edits, 20 % common short phrases with variations.
pub fn bench_comments(seed: u64, n: usize) -> Vec<Message> {
    let mut r = Rng::new(seed);
    let campaigns: Vec<String> = (0..20_000).map(|_| sentence(&mut r)).collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = match r.below(20) {
            0..=8 => sentence(&mut r),
            9..=15 => {
                let base = r.pick(&campaigns).clone();
                mutate(&mut r, base)
            }
            _ => {
                let base = (*r.pick(COMMON)).to_string();
                mutate(&mut r, base)
            }
        };
        out.push(Message {
            id: format!("m{i}"),
            author_id: format!("a{}", r.below(200_000)),
            author_name: String::new(),
            time: EPOCH + r.below(30 * DAY as u64) as i64,
            text,
        });
    }
    out
}

/// A copy as a person or a bot script would make it: case, punctuation, a typo, a homoglyph,
/// a repeated letter, an emoji, an extra word.
fn mutate(r: &mut Rng, s: String) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..r.below(3) {
        if chars.is_empty() {
            break;
        }
        let p = r.below(chars.len() as u64) as usize;
        match r.below(8) {
            0 => chars[p] = chars[p].to_uppercase().next().unwrap_or(chars[p]),
            1 => chars.insert(p, *r.pick(&['.', ',', '!', ' '])),
            2 => chars[p] = *r.pick(&['а', 'о', 'е', 'и', 'a', 'e', 'o']),
            3 => {
                chars.remove(p);
            }
            4 => {
                chars[p] = match chars[p] {
                    'а' => 'a',
                    'о' => 'o',
                    'е' => 'e',
                    'р' => 'p',
                    'с' => 'c',
                    c => c,
                }
            }
            5 => chars.insert(p, chars[p]),
            6 => chars.extend(" 🙏".chars()),
            _ => chars.insert(p, '\u{200B}'),
        }
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        let a = comments(7, 200, 50);
        let b = comments(7, 200, 50);
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.flood.iter().filter(|f| **f).count(), 50);
        assert_eq!(bench_comments(1, 100), bench_comments(1, 100));
    }
}
