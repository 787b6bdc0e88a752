//! Streaming readers for the formats an admin can export today. Each turns a file into
//! [`Event`]s one record at a time: a Telegram export of hundreds of megabytes is never held
//! whole in memory (only the events it yields are kept, up to [`Limits::max_events`]).
//!
//! * `telegram-export`: Telegram Desktop's JSON export of one chat (`result.json` with a
//!   top-level `messages` array) or of the whole account (`chats.list[].messages`). Messages
//!   become [`Message`]s (`text` may be a string or an array of strings and entities;
//!   a sticker's emoji stands in for an empty text); `join_group_by_link`,
//!   `join_group_by_request` and `invite_members` service messages become [`Join`]s.
//! * `youtube-json`: a YouTube Data API `commentThreads.list` (or `comments.list`) response,
//!   or a JSON array of such pages; replies inside `replies.comments` are read too.
//! * `youtube-csv` and `csv`: one comment per row, with a header. Columns are matched by name,
//!   case-insensitively, in any order: `id` (or `comment_id`; default: the row number),
//!   `author_id` (or `authorChannelId`), `author_name` (or `authorDisplayName`), `time` (or
//!   `publishedAt`; unix seconds or RFC 3339), `text` (or `textOriginal`, `textDisplay`),
//!   and optionally `join_time`, `username`, `has_photo` (`true`/`false`/`1`/`0`),
//!   `invite_link`. A row with a `join_time` also records that account's join; a row with a
//!   join time and no text is a join only. `youtube-csv` is the same reader, recognised by the
//!   YouTube API's column names.
//!
//! Errors name the position (line and column for JSON; line, record and byte for CSV).

use std::io::BufRead;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::{Event, Join, MAX_NAME_CHARS, MAX_TEXT_CHARS, Message, cap_chars};
use crate::time_fmt::parse_time;

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TelegramExport,
    YoutubeJson,
    YoutubeCsv,
    Csv,
    /// The journal of `qalqan sweep watch` (`events.jsonl`, see [`crate::live`]).
    SweepLive,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::TelegramExport,
        Format::YoutubeJson,
        Format::YoutubeCsv,
        Format::Csv,
        Format::SweepLive,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::TelegramExport => "telegram-export",
            Format::YoutubeJson => "youtube-json",
            Format::YoutubeCsv => "youtube-csv",
            Format::Csv => "csv",
            Format::SweepLive => "sweep-live",
        }
    }

    pub fn from_name(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The platform the clean-up plan talks about.
    pub fn platform(self) -> Platform {
        match self {
            Format::TelegramExport | Format::SweepLive => Platform::Telegram,
            Format::YoutubeJson | Format::YoutubeCsv => Platform::Youtube,
            Format::Csv => Platform::Unknown,
        }
    }
}

/// Where the data came from, for the dry-run plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Telegram,
    Youtube,
    Unknown,
}

/// Bounds on what one input may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most messages plus joins kept from one input; beyond it reading stops with an error.
    pub max_events: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // About 3 GB of events at the worst; a large channel's year of comments fits.
        Limits {
            max_events: 20_000_000,
        }
    }
}

/// Why an input could not be read. Always says where.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{format}: {msg} (line {line}, column {column})")]
    Json {
        format: &'static str,
        msg: String,
        line: usize,
        column: usize,
    },
    #[error("{format}: {msg} (line {line}, record {record}, byte {byte})")]
    Csv {
        format: &'static str,
        msg: String,
        line: u64,
        record: u64,
        byte: u64,
    },
    #[error("cannot tell the format of this file ({0}); name it with --format")]
    UnknownFormat(String),
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
}

/// Guesses the format from the first bytes of a file.
pub fn detect(head: &[u8]) -> Result<Format, InputError> {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start();
    // The watcher's journal: JSON lines, each tagged `"sweep":"message"` (or join, leave,
    // count); the tag comes first when the watcher writes it, anywhere when a person does.
    if trimmed.starts_with('{')
        && ["message", "join", "leave", "count"]
            .iter()
            .any(|k| trimmed.contains(&format!("\"sweep\":\"{k}\"")))
    {
        return Ok(Format::SweepLive);
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if text.contains("youtube#")
            || text.contains("\"topLevelComment\"")
            || text.contains("\"authorDisplayName\"")
        {
            return Ok(Format::YoutubeJson);
        }
        if text.contains("\"messages\"")
            || text.contains("\"chats\"")
            || text.contains("\"date_unixtime\"")
        {
            return Ok(Format::TelegramExport);
        }
        return Err(InputError::UnknownFormat(
            "JSON, but neither a Telegram export nor YouTube comment threads".into(),
        ));
    }
    let first_line = trimmed.lines().next().unwrap_or("").to_ascii_lowercase();
    if first_line.contains("authordisplayname")
        || first_line.contains("textoriginal")
        || first_line.contains("publishedat")
    {
        return Ok(Format::YoutubeCsv);
    }
    if first_line.contains(',') || first_line.contains(';') || first_line.contains('\t') {
        return Ok(Format::Csv);
    }
    Err(InputError::UnknownFormat(
        "not JSON and no CSV header".into(),
    ))
}

/// Reads every event of `r` (in `format`, or detected from the first bytes when `None`),
/// calling `on_event` with each event, or with `None` for a record that carried nothing to
/// analyse. Returns the format read.
pub fn read_events<R: BufRead>(
    mut r: R,
    format: Option<Format>,
    limits: &Limits,
    on_event: &mut dyn FnMut(Option<Event>),
) -> Result<Format, InputError> {
    let format = match format {
        Some(f) => f,
        None => detect(r.fill_buf()?)?,
    };
    let mut count: u64 = 0;
    let max = limits.max_events;
    let mut sink = |e: Option<Event>| -> Result<(), String> {
        if e.is_some() {
            count += 1;
            if count > max {
                return Err(format!(
                    "more than {max} events; split the file or raise the limit"
                ));
            }
        }
        on_event(e);
        Ok(())
    };
    match format {
        Format::TelegramExport | Format::YoutubeJson => {
            // A byte-order mark is not JSON; skip it if an editor added one.
            if r.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
                r.consume(3);
            }
            let mut de = serde_json::Deserializer::from_reader(r);
            let result = if format == Format::TelegramExport {
                TelegramRoot {
                    on: &mut sink,
                    chat: None,
                }
                .deserialize(&mut de)
            } else {
                YoutubeRoot { on: &mut sink }.deserialize(&mut de)
            };
            result
                .and_then(|()| de.end())
                .map_err(|e| json_error(format, e))?;
        }
        Format::YoutubeCsv | Format::Csv => read_csv(r, format, &mut sink)?,
        Format::SweepLive => read_live(r, &mut sink)?,
    }
    Ok(format)
}

/// Reads a whole input into a [`crate::Dataset`].
pub fn read_dataset<R: BufRead>(
    r: R,
    format: Option<Format>,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<(Format, crate::Dataset), InputError> {
    let mut ds = crate::Dataset::default();
    let mut n: u64 = 0;
    let f = read_events(r, format, limits, &mut |e| {
        n += 1;
        match e {
            Some(e) => ds.push(e),
            None => ds.skipped += 1,
        }
        if n.is_multiple_of(65_536) {
            progress(n);
        }
    })?;
    progress(n);
    Ok((f, ds))
}

fn json_error(format: Format, e: serde_json::Error) -> InputError {
    if e.is_io() {
        return InputError::Io(e.into());
    }
    let mut msg = e.to_string();
    // serde_json appends " at line L column C"; the position is reported separately.
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    if e.is_eof() {
        msg = format!("the file ends too early, it may be truncated: {msg}");
    }
    InputError::Json {
        format: format.name(),
        msg,
        line: e.line(),
        column: e.column(),
    }
}

type Sink<'a> = &'a mut dyn FnMut(Option<Event>) -> Result<(), String>;

fn name(s: Option<String>) -> String {
    cap_chars(s.unwrap_or_default(), MAX_NAME_CHARS)
}

/// A JSON scalar that exporters write either as a string or as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::S(s) => s.clone(),
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Telegram Desktop export

/// The top level of `result.json`, or one entry of `chats.list` (then `chat` is its index, and
/// message ids are prefixed with it so they stay unique across chats).
struct TelegramRoot<'a> {
    on: Sink<'a>,
    chat: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for TelegramRoot<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TelegramRoot<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Telegram export object with \"messages\" or \"chats\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "messages" => map.next_value_seed(TelegramMessages {
                    on: &mut *self.on,
                    chat: self.chat,
                })?,
                "chats" | "left_chats" if self.chat.is_none() => {
                    map.next_value_seed(TelegramChats { on: &mut *self.on })?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `"chats": {"list": [chat, …]}` of a whole-account export.
struct TelegramChats<'a> {
    on: Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for TelegramChats<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TelegramChats<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with a \"list\" of chats")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "list" {
                map.next_value_seed(ChatList { on: &mut *self.on })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ChatList<'a> {
    on: Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for ChatList<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChatList<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of chats")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(TelegramRoot {
                on: &mut *self.on,
                chat: Some(i),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
}

struct TelegramMessages<'a> {
    on: Sink<'a>,
    chat: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for TelegramMessages<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TelegramMessages<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0u64;
        while let Some(m) = seq.next_element::<TgMessage>()? {
            n += 1;
            for e in m.into_events(self.chat, n) {
                (self.on)(e).map_err(de::Error::custom)?;
            }
        }
        Ok(())
    }
}

/// One entry of `messages`. Unknown fields are ignored: exports gain fields over time.
#[derive(Deserialize)]
struct TgMessage {
    id: Option<Scalar>,
    #[serde(rename = "type")]
    kind: Option<String>,
    date: Option<String>,
    date_unixtime: Option<Scalar>,
    from: Option<String>,
    from_id: Option<String>,
    actor: Option<String>,
    actor_id: Option<String>,
    action: Option<String>,
    inviter: Option<String>,
    members: Option<Vec<Option<String>>>,
    #[serde(default)]
    text: TgText,
    sticker_emoji: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TgText {
    Plain(String),
    Parts(Vec<TgPart>),
}

impl Default for TgText {
    fn default() -> Self {
        TgText::Plain(String::new())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TgPart {
    Plain(String),
    Entity {
        #[serde(default)]
        text: String,
    },
    /// Anything else in the array is skipped rather than failing the whole file.
    #[allow(dead_code)]
    Other(IgnoredAny),
}

impl TgText {
    fn flatten(self) -> String {
        match self {
            TgText::Plain(s) => s,
            TgText::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        TgPart::Plain(s) | TgPart::Entity { text: s } => out.push_str(&s),
                        TgPart::Other(_) => {}
                    }
                    // Stop copying once the cap is certainly reached (4 bytes per char).
                    if out.len() > MAX_TEXT_CHARS * 4 {
                        break;
                    }
                }
                out
            }
        }
    }
}

impl TgMessage {
    fn into_events(self, chat: Option<usize>, n: u64) -> Vec<Option<Event>> {
        let raw_id = self
            .id
            .as_ref()
            .map(Scalar::text)
            .unwrap_or_else(|| format!("#{n}"));
        let id = match chat {
            Some(c) => format!("c{c}:{raw_id}"),
            None => raw_id,
        };
        let time = self
            .date_unixtime
            .as_ref()
            .and_then(|s| parse_time(&s.text()))
            .or_else(|| self.date.as_deref().and_then(parse_time));
        let Some(time) = time else {
            return vec![None];
        };
        match self.kind.as_deref() {
            Some("service") => {
                let link = self
                    .inviter
                    .map(|i| cap_chars(format!("link by {i}"), MAX_NAME_CHARS));
                match self.action.as_deref() {
                    Some("join_group_by_link") | Some("join_group_by_request") => {
                        let actor = name(self.actor);
                        let account_id = match self.actor_id {
                            Some(a) => name(Some(a)),
                            None => format!("name:{actor}"),
                        };
                        vec![Some(Event::Join(Join {
                            account_id,
                            name: actor,
                            username: None,
                            has_photo: None,
                            time,
                            invite_link: link,
                        }))]
                    }
                    Some("invite_members") => {
                        // The export names invited members but gives no ids.
                        let by = name(self.actor);
                        self.members
                            .unwrap_or_default()
                            .into_iter()
                            .take(10_000)
                            .map(|m| {
                                let n = name(m);
                                Some(Event::Join(Join {
                                    account_id: format!("name:{n}"),
                                    name: n,
                                    username: None,
                                    has_photo: None,
                                    time,
                                    invite_link: Some(cap_chars(
                                        format!("invited by {by}"),
                                        MAX_NAME_CHARS,
                                    )),
                                }))
                            })
                            .collect()
                    }
                    _ => vec![None],
                }
            }
            _ => {
                let mut text = self.text.flatten();
                if text.trim().is_empty() {
                    text = self.sticker_emoji.unwrap_or_default();
                }
                if text.trim().is_empty() {
                    return vec![None];
                }
                let author_name = name(self.from);
                let author_id = match self.from_id {
                    Some(a) => name(Some(a)),
                    None => format!("name:{author_name}"),
                };
                vec![Some(Event::Message(Message {
                    id,
                    author_id,
                    author_name,
                    time,
                    text: cap_chars(text, MAX_TEXT_CHARS),
                }))]
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// YouTube Data API JSON

/// A `commentThreads.list` page (an object with `items`) or an array of pages.
struct YoutubeRoot<'a> {
    on: Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for YoutubeRoot<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for YoutubeRoot<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YouTube API response with \"items\", or an array of them")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(YoutubeItems { on: &mut *self.on })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(YoutubePage { on: &mut *self.on })?
            .is_some()
        {}
        Ok(())
    }
}

/// One page inside an array of pages (only objects; no nesting beyond that).
struct YoutubePage<'a> {
    on: Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for YoutubePage<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(YoutubeRoot { on: self.on })
    }
}

struct YoutubeItems<'a> {
    on: Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for YoutubeItems<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for YoutubeItems<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of comment threads")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0u64;
        while let Some(item) = seq.next_element::<YtItem>()? {
            n += 1;
            let (top, replies) = item.split();
            if let Some(c) = top {
                (self.on)(c.into_event(n)).map_err(de::Error::custom)?;
            }
            for c in replies {
                (self.on)(c.into_event(n)).map_err(de::Error::custom)?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct YtItem {
    id: Option<String>,
    snippet: Option<YtItemSnippet>,
    replies: Option<YtReplies>,
}

/// A thread's snippet holds `topLevelComment`; a bare comment's snippet holds the fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct YtItemSnippet {
    top_level_comment: Option<YtComment>,
    #[serde(flatten)]
    fields: YtSnippet,
}

#[derive(Deserialize)]
struct YtReplies {
    #[serde(default)]
    comments: Vec<YtComment>,
}

#[derive(Deserialize)]
struct YtComment {
    id: Option<String>,
    snippet: Option<YtSnippet>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct YtSnippet {
    author_display_name: Option<String>,
    author_channel_id: Option<YtChannelId>,
    text_original: Option<String>,
    text_display: Option<String>,
    published_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum YtChannelId {
    Object { value: Option<String> },
    Plain(String),
}

impl YtItem {
    fn split(self) -> (Option<YtComment>, Vec<YtComment>) {
        let replies = self.replies.map(|r| r.comments).unwrap_or_default();
        let top = match self.snippet {
            Some(YtItemSnippet {
                top_level_comment: Some(c),
                ..
            }) => Some(c),
            Some(YtItemSnippet { fields, .. }) => Some(YtComment {
                id: self.id,
                snippet: Some(fields),
            }),
            None => None,
        };
        (top, replies)
    }
}

impl YtComment {
    fn into_event(self, n: u64) -> Option<Event> {
        let s = self.snippet?;
        let time = s.published_at.as_deref().and_then(parse_time)?;
        let text = match s.text_original {
            Some(t) if !t.trim().is_empty() => t,
            _ => strip_html(&s.text_display.unwrap_or_default()),
        };
        if text.trim().is_empty() {
            return None;
        }
        let author_name = name(s.author_display_name);
        let author_id = match s.author_channel_id {
            Some(YtChannelId::Object { value: Some(v) }) | Some(YtChannelId::Plain(v)) => {
                name(Some(v))
            }
            _ => format!("name:{author_name}"),
        };
        Some(Event::Message(Message {
            id: name(self.id.or_else(|| Some(format!("#{n}")))),
            author_id,
            author_name,
            time,
            text: cap_chars(text, MAX_TEXT_CHARS),
        }))
    }
}

/// `textDisplay` is HTML: drop tags and decode the entities YouTube writes.
fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------------------------
// CSV

const COLUMNS: &[(&str, &[&str])] = &[
    ("id", &["id", "message_id", "comment_id", "commentid"]),
    (
        "author_id",
        &[
            "author_id",
            "authorchannelid",
            "author_channel_id",
            "user_id",
        ],
    ),
    (
        "author_name",
        &["author_name", "authordisplayname", "author", "name"],
    ),
    (
        "time",
        &["time", "publishedat", "published_at", "date", "timestamp"],
    ),
    ("text", &["text", "textoriginal", "textdisplay", "comment"]),
    ("join_time", &["join_time", "joined_at"]),
    ("username", &["username"]),
    ("has_photo", &["has_photo"]),
    ("invite_link", &["invite_link"]),
];

/// The watcher's journal: one record a line. Member counts and leaves carry nothing to
/// analyse. A last line without its newline is being written (or was torn by a crash) and is
/// left out.
fn read_live<R: BufRead>(mut r: R, sink: Sink<'_>) -> Result<(), InputError> {
    use crate::live::Record;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec: Record = serde_json::from_slice(&line).map_err(|e| InputError::Json {
            format: Format::SweepLive.name(),
            msg: json_error(Format::SweepLive, e).to_string(),
            line: n,
            column: 0,
        })?;
        let e = match rec {
            Record::Message { message, .. } => Some(Event::Message(message)),
            Record::Join { join, .. } => Some(Event::Join(join)),
            Record::Leave { .. } | Record::Count { .. } => None,
        };
        sink(e).map_err(|msg| InputError::Json {
            format: Format::SweepLive.name(),
            msg,
            line: n,
            column: 0,
        })?;
    }
}

fn read_csv<R: BufRead>(r: R, format: Format, sink: Sink<'_>) -> Result<(), InputError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(r);
    let csv_err = |e: csv::Error| -> InputError {
        if let csv::ErrorKind::Io(_) = e.kind() {
            if let csv::ErrorKind::Io(io) = e.into_kind() {
                return InputError::Io(io);
            }
            return InputError::UnknownFormat("csv".into());
        }
        let pos = e.position().cloned();
        let msg = match e.kind() {
            csv::ErrorKind::Utf8 { .. } => "a field is not valid UTF-8".to_string(),
            _ => e.to_string(),
        };
        InputError::Csv {
            format: format.name(),
            msg,
            line: pos.as_ref().map_or(0, |p| p.line()),
            record: pos.as_ref().map_or(0, |p| p.record()),
            byte: pos.as_ref().map_or(0, |p| p.byte()),
        }
    };
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let lower: Vec<String> = headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    // For each logical column, the index of the first alias present (aliases in priority order).
    let col: Vec<Option<usize>> = COLUMNS
        .iter()
        .map(|(_, aliases)| {
            aliases
                .iter()
                .find_map(|a| lower.iter().position(|h| h == a))
        })
        .collect();
    let [
        id,
        author_id,
        author_name,
        time,
        text,
        join_time,
        username,
        has_photo,
        invite_link,
    ] = col[..]
    else {
        return Err(InputError::UnknownFormat("internal column table".into()));
    };
    let header_err = |what: &str| InputError::Csv {
        format: format.name(),
        msg: format!(
            "the header has no {what} column (found: {})",
            lower.join(", ")
        ),
        line: 1,
        record: 0,
        byte: 0,
    };
    if author_id.is_none() && author_name.is_none() {
        return Err(header_err("author_id or author_name"));
    }
    let time = time.ok_or_else(|| header_err("time"))?;
    if text.is_none() && join_time.is_none() {
        return Err(header_err("text or join_time"));
    }
    let mut rec = csv::StringRecord::new();
    let mut n: u64 = 0;
    while rdr.read_record(&mut rec).map_err(csv_err)? {
        n += 1;
        let get = |i: Option<usize>| {
            i.and_then(|i| rec.get(i))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let row_err = |msg: String| {
            let pos = rec.position();
            InputError::Csv {
                format: format.name(),
                msg,
                line: pos.map_or(0, |p| p.line()),
                record: pos.map_or(n, |p| p.record()),
                byte: pos.map_or(0, |p| p.byte()),
            }
        };
        let aname = cap_chars(get(author_name).unwrap_or("").to_string(), MAX_NAME_CHARS);
        let aid = match get(author_id) {
            Some(a) => cap_chars(a.to_string(), MAX_NAME_CHARS),
            None if !aname.is_empty() => format!("name:{aname}"),
            None => return Err(row_err("the row has no author".into())),
        };
        let mut any = false;
        if let Some(jt) = get(join_time) {
            let jt =
                parse_time(jt).ok_or_else(|| row_err(format!("join_time {jt:?} is not a time")))?;
            let photo = match get(has_photo).map(str::to_ascii_lowercase).as_deref() {
                None => None,
                Some("true" | "1" | "yes") => Some(true),
                Some("false" | "0" | "no") => Some(false),
                Some(other) => {
                    return Err(row_err(format!("has_photo {other:?} is not true/false")));
                }
            };
            sink(Some(Event::Join(Join {
                account_id: aid.clone(),
                name: aname.clone(),
                username: username.map(|i| {
                    cap_chars(rec.get(i).unwrap_or("").trim().to_string(), MAX_NAME_CHARS)
                }),
                has_photo: photo,
                time: jt,
                invite_link: get(invite_link).map(|s| cap_chars(s.to_string(), MAX_NAME_CHARS)),
            })))
            .map_err(row_err)?;
            any = true;
        }
        if let Some(t) = get(text) {
            let raw_time = get(Some(time)).unwrap_or("");
            let ts = parse_time(raw_time)
                .ok_or_else(|| row_err(format!("time {raw_time:?} is not a time")))?;
            sink(Some(Event::Message(Message {
                id: cap_chars(
                    get(id).map_or_else(|| format!("row{n}"), str::to_string),
                    MAX_NAME_CHARS,
                ),
                author_id: aid,
                author_name: aname,
                time: ts,
                text: cap_chars(t.to_string(), MAX_TEXT_CHARS),
            })))
            .map_err(row_err)?;
            any = true;
        }
        if !any {
            sink(None).map_err(row_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(s: &str, f: Option<Format>) -> Result<(Format, crate::Dataset), InputError> {
        read_dataset(s.as_bytes(), f, &Limits::default(), &mut |_| {})
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            detect(br#"{"name":"x","type":"public_channel","id":1,"messages":[]}"#).unwrap(),
            Format::TelegramExport
        );
        assert_eq!(
            detect(b"\xEF\xBB\xBF{\"kind\":\"youtube#commentThreadListResponse\"}").unwrap(),
            Format::YoutubeJson
        );
        assert_eq!(
            detect(b"id,authorDisplayName,textOriginal,publishedAt\n").unwrap(),
            Format::YoutubeCsv
        );
        assert_eq!(
            detect(b"author_id,author_name,time,text\n").unwrap(),
            Format::Csv
        );
        assert!(detect(b"hello").is_err());
        assert!(detect(b"{\"foo\":1}").is_err());
    }

    #[test]
    fn telegram_text_arrays_and_joins() {
        let json = r#"{"name":"Test","type":"public_supergroup","id":42,"messages":[
          {"id":1,"type":"service","date":"2024-01-01T12:00:00","date_unixtime":"1704110400","actor":"Bot 1","actor_id":"user7000000001","action":"join_group_by_link","inviter":"Admin"},
          {"id":2,"type":"message","date":"2024-01-01T12:00:05","date_unixtime":"1704110405","from":"Bot 1","from_id":"user7000000001",
           "text":["R.I.P ",{"type":"bold","text":"бауырым"},{"type":"custom_emoji","text":"🙏","document_id":"5"}],"text_entities":[]},
          {"id":3,"type":"message","date":"2024-01-01T12:00:06","date_unixtime":"1704110406","from":null,"from_id":"user9","text":"","sticker_emoji":"😢"},
          {"id":4,"type":"message","date":"2024-01-01T12:00:07","date_unixtime":"1704110407","from":"A","from_id":"user10","text":"","photo":"photos/1.jpg"},
          {"id":5,"type":"service","date":"2024-01-01T12:00:08","date_unixtime":"1704110408","actor":"Admin","actor_id":"user1","action":"invite_members","members":["Ann",null]}
        ]}"#;
        let (f, ds) = read(json, None).unwrap();
        assert_eq!(f, Format::TelegramExport);
        assert_eq!(ds.messages.len(), 2);
        assert_eq!(ds.messages[0].text, "R.I.P бауырым🙏");
        assert_eq!(ds.messages[0].author_id, "user7000000001");
        assert_eq!(ds.messages[1].text, "😢");
        assert_eq!(ds.joins.len(), 3);
        assert_eq!(ds.joins[0].invite_link.as_deref(), Some("link by Admin"));
        assert_eq!(ds.joins[1].account_id, "name:Ann");
        assert_eq!(ds.skipped, 1);
    }

    #[test]
    fn telegram_whole_account_export() {
        let json = r#"{"about":"x","chats":{"about":"y","list":[
            {"name":"A","id":1,"messages":[{"id":1,"type":"message","date_unixtime":"100","from":"x","from_id":"user1","text":"hi"}]},
            {"name":"B","id":2,"messages":[{"id":1,"type":"message","date_unixtime":"200","from":"y","from_id":"user2","text":"yo"}]}
        ]}}"#;
        let (_, ds) = read(json, None).unwrap();
        let ids: Vec<_> = ds.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["c0:1", "c1:1"]);
    }

    #[test]
    fn truncated_json_names_the_position() {
        let json = "{\"messages\":[\n{\"id\":1,\"type\":\"message\",\"date_unixtime\":\"100\",\"text\":\"a\"},\n{\"id\":2,\"ty";
        let e = read(json, Some(Format::TelegramExport)).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, InputError::Json { line: 3, .. }), "{s}");
        assert!(s.contains("truncated"), "{s}");
        let e = read(
            "{\"messages\":[{\"id\":1,,}]}",
            Some(Format::TelegramExport),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                InputError::Json {
                    line: 1,
                    column: 22,
                    ..
                }
            ),
            "{e}"
        );
        let e = read("{\"messages\":{}}", Some(Format::TelegramExport)).unwrap_err();
        assert!(e.to_string().contains("array of messages"), "{e}");
    }

    #[test]
    fn youtube_threads_and_replies() {
        let json = r#"{"kind":"youtube#commentThreadListResponse","items":[
          {"kind":"youtube#commentThread","id":"T1","snippet":{"videoId":"v","topLevelComment":{"kind":"youtube#comment","id":"C1",
            "snippet":{"authorDisplayName":"@a","authorChannelId":{"value":"UCa"},"textDisplay":"R.I.P&lt;3","textOriginal":"R.I.P<3","publishedAt":"2024-01-01T12:00:00Z"}}},
           "replies":{"comments":[{"id":"C1.r","snippet":{"authorDisplayName":"@b","authorChannelId":{"value":"UCb"},"textDisplay":"<b>RIP</b>","publishedAt":"2024-01-01T12:01:00Z"}}]}}
        ]}"#;
        let (f, ds) = read(json, None).unwrap();
        assert_eq!(f, Format::YoutubeJson);
        assert_eq!(ds.messages.len(), 2);
        assert_eq!(ds.messages[0].id, "C1");
        assert_eq!(ds.messages[0].text, "R.I.P<3");
        assert_eq!(ds.messages[1].author_id, "UCb");
        assert_eq!(ds.messages[1].text.trim(), "RIP");
        // An array of pages.
        let pages = format!("[{json},{json}]");
        assert_eq!(
            read(&pages, Some(Format::YoutubeJson))
                .unwrap()
                .1
                .messages
                .len(),
            4
        );
    }

    #[test]
    fn csv_generic_and_youtube() {
        let csv = "author_id,author_name,time,text,join_time,username,has_photo,invite_link\n\
                   u1,Ann,2024-01-01T12:00:00Z,\"hello, world\",,,,\n\
                   u2,Bot 7,,,1704110400,,false,https://t.me/+x\n\
                   u3,Bob,1704110400,hi,1704000000,bob,true,\n";
        let (f, ds) = read(csv, None).unwrap();
        assert_eq!(f, Format::Csv);
        assert_eq!(ds.messages.len(), 2);
        assert_eq!(ds.messages[0].text, "hello, world");
        assert_eq!(ds.messages[0].id, "row1");
        assert_eq!(ds.joins.len(), 2);
        assert_eq!(ds.joins[0].has_photo, Some(false));
        assert_eq!(ds.joins[0].username.as_deref(), Some(""));
        let yt = "\u{feff}id,authorDisplayName,authorChannelId,textOriginal,publishedAt\nC1,@a,UCa,RIP,2024-01-01T12:00:00Z\n";
        let (f, ds) = read(yt, None).unwrap();
        assert_eq!(f, Format::YoutubeCsv);
        assert_eq!(ds.messages[0].author_id, "UCa");
    }

    #[test]
    fn csv_errors_name_the_row() {
        let e = read("author_id,time,text\nu1,not-a-time,hi\n", Some(Format::Csv)).unwrap_err();
        assert!(matches!(e, InputError::Csv { line: 2, .. }), "{e}");
        let e = read("foo,bar\n1,2\n", Some(Format::Csv)).unwrap_err();
        assert!(e.to_string().contains("no author_id"), "{e}");
        let e = read_dataset(
            &b"author_id,time,text\nu1,1,\xff\xfe\n"[..],
            Some(Format::Csv),
            &Limits::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, InputError::Csv { line: 2, .. }), "{e}");
    }

    #[test]
    fn the_event_limit_holds() {
        let csv = "author_id,time,text\nu1,1,a\nu2,2,b\nu3,3,c\n";
        let e =
            read_dataset(csv.as_bytes(), None, &Limits { max_events: 2 }, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("more than 2 events"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), fmt in 0usize..5) {
            let f = Format::ALL.get(fmt).copied();
            let _ = read_dataset(&bytes[..], f, &Limits::default(), &mut |_| {});
        }

        #[test]
        fn cut_telegram_exports_error_cleanly(cut in 0usize..600) {
            let json = r#"{"name":"T","type":"public_supergroup","id":1,"messages":[{"id":1,"type":"message","date":"2024-01-01T12:00:00","date_unixtime":"1704110400","from":"Әлия","from_id":"user1","text":["R.I.P ",{"type":"bold","text":"x"}]},{"id":2,"type":"service","date_unixtime":"1704110401","actor":"b","actor_id":"user2","action":"join_group_by_link","inviter":"Group"}]}"#;
            let cut = cut.min(json.len());
            if json.is_char_boundary(cut) {
                let r = read_dataset(&json.as_bytes()[..cut], Some(Format::TelegramExport), &Limits::default(), &mut |_| {});
                prop_assert_eq!(r.is_ok(), cut == json.len());
            }
        }
    }
}
