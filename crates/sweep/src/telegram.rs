//! The Telegram Bot API, only as much of it as sweep needs: read updates and member counts,
//! and restrict, ban, unban and delete. Built on [`crate::http`] rather than teloxide: the
//! requests are few and sequential, the calls need exact control of 429 `retry_after`, and
//! teloxide would add its own HTTP stack to the tree.
//!
//! **Never posts.** [`BotApi::call`] refuses every method outside [`METHODS`], which has no
//! `send*`, `forward*`, `copy*` or `edit*` method: a raid must never be answered in the
//! channel (shieldy#185), and the bot cannot be made to do it by a bug elsewhere.
//!
//! The token is part of the request path; it is never logged and never put in an error.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Client, Endpoint, HttpError};
use crate::model::{Join, MAX_NAME_CHARS, MAX_TEXT_CHARS, Message, cap_chars};

/// The only methods this client will call.
pub const METHODS: &[&str] = &[
    "getMe",
    "getUpdates",
    "getChatMemberCount",
    "restrictChatMember",
    "banChatMember",
    "unbanChatMember",
    "banChatSenderChat",
    "unbanChatSenderChat",
    "deleteMessages",
];

/// The update types the watcher asks for. `chat_member` must be named: an empty list means
/// "everything except chat_member".
pub const ALLOWED_UPDATES: &[&str] = &["message", "channel_post", "chat_member"];

#[derive(Debug, thiserror::Error)]
pub enum TgError {
    #[error("{0}")]
    Net(#[from] HttpError),
    /// 429: wait this many seconds.
    #[error("too many requests; retry after {0} s")]
    RetryAfter(u64),
    /// The API said no (400 bad request, 401 bad token, 403 not an admin, 409 conflict...).
    #[error("the Bot API refused {method}: {code} {description}")]
    Api {
        method: &'static str,
        code: i64,
        description: String,
    },
    #[error("{0} is not a method this bot may call")]
    NotAllowed(String),
    #[error("unexpected answer from the Bot API (HTTP {0})")]
    BadAnswer(u16),
}

/// A Bot API token: `123456:ABC-def_...`. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Checks the shape without echoing the value.
    pub fn parse(s: &str) -> Result<Token, String> {
        let s = s.trim();
        let ok = match s.split_once(':') {
            Some((id, secret)) => {
                !id.is_empty()
                    && id.len() <= 20
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && (20..=100).contains(&secret.len())
                    && secret
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }
            None => false,
        };
        if ok {
            Ok(Token(s.to_string()))
        } else {
            Err("this is not a Bot API token (digits:secret, as BotFather gives it)".into())
        }
    }
}

pub struct BotApi {
    http: Client,
    token: Token,
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Params>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    retry_after: Option<u64>,
}

impl BotApi {
    pub fn new(api_url: &str, token: Token) -> Result<BotApi, HttpError> {
        let ep = Endpoint::parse(api_url)?;
        Ok(BotApi {
            http: Client::new(ep, None)?,
            token,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.http.endpoint()
    }

    /// Calls `method` with JSON `params`; the `result` on success.
    pub async fn call(&mut self, method: &str, params: &Value) -> Result<Value, TgError> {
        let Some(&method) = METHODS.iter().find(|m| **m == method) else {
            return Err(TgError::NotAllowed(method.chars().take(40).collect()));
        };
        let deadline = match method {
            "getUpdates" => {
                Duration::from_secs(params.get("timeout").and_then(Value::as_u64).unwrap_or(0) + 15)
            }
            _ => Duration::from_secs(30),
        };
        let path = format!("/bot{}/{method}", self.token.0);
        let body = serde_json::to_vec(params).unwrap_or_default();
        let ans = self
            .http
            .send(
                http::Method::POST,
                &path,
                &[(http::header::CONTENT_TYPE, "application/json".into())],
                body,
                deadline,
            )
            .await?;
        let env: Envelope = match serde_json::from_slice(&ans.body) {
            Ok(e) => e,
            Err(_) => {
                if ans.status == http::StatusCode::TOO_MANY_REQUESTS {
                    return Err(TgError::RetryAfter(ans.retry_after.unwrap_or(5)));
                }
                return Err(TgError::BadAnswer(ans.status.as_u16()));
            }
        };
        if env.ok {
            return Ok(env.result);
        }
        let code = env.error_code.unwrap_or(i64::from(ans.status.as_u16()));
        if code == 429 {
            let secs = env
                .parameters
                .and_then(|p| p.retry_after)
                .or(ans.retry_after)
                .unwrap_or(5);
            return Err(TgError::RetryAfter(secs.min(3600)));
        }
        Err(TgError::Api {
            method,
            code,
            description: clean_text(env.description.as_deref().unwrap_or(""), 200),
        })
    }
}

/// Text from the network made safe for one log line.
pub fn clean_text(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Parameters of `getUpdates` for a long poll.
pub fn get_updates_params(offset: i64, timeout_secs: u64) -> Value {
    json!({
        "offset": offset,
        "timeout": timeout_secs,
        "limit": 100,
        "allowed_updates": ALLOWED_UPDATES,
    })
}

// ---------------------------------------------------------------------------------------------
// Updates, in the Bot API's shapes (only the fields used; unknown fields ignored).

#[derive(Debug, Deserialize)]
pub struct Update {
    pub update_id: i64,
    #[serde(default)]
    pub message: Option<TgMessage>,
    #[serde(default)]
    pub channel_post: Option<TgMessage>,
    #[serde(default)]
    pub chat_member: Option<ChatMemberUpdated>,
}

#[derive(Debug, Deserialize)]
pub struct Chat {
    pub id: i64,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

impl User {
    fn display(&self) -> String {
        let mut s = self.first_name.clone();
        if let Some(l) = &self.last_name {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(l);
        }
        cap_chars(s, MAX_NAME_CHARS)
    }
}

#[derive(Debug, Deserialize)]
pub struct SenderChat {
    pub id: i64,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TgMessage {
    pub message_id: i64,
    pub chat: Chat,
    pub date: i64,
    #[serde(default)]
    pub from: Option<User>,
    #[serde(default)]
    pub sender_chat: Option<SenderChat>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub status: String,
    pub user: User,
}

#[derive(Debug, Deserialize)]
pub struct InviteLink {
    #[serde(default)]
    pub invite_link: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMemberUpdated {
    pub chat: Chat,
    pub date: i64,
    pub old_chat_member: Member,
    pub new_chat_member: Member,
    #[serde(default)]
    pub invite_link: Option<InviteLink>,
}

/// What one update means for sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Message {
        chat: i64,
        message: Message,
    },
    Join {
        chat: i64,
        join: Join,
    },
    Leave {
        chat: i64,
        account_id: String,
        time: i64,
    },
    Nothing,
}

fn is_in(status: &str) -> bool {
    matches!(
        status,
        "member" | "administrator" | "creator" | "restricted"
    )
}

impl Update {
    /// Turns an update into an event of the sweep model. Messages without text or caption
    /// (stickers, media, service messages) are `Nothing`.
    pub fn seen(&self) -> Seen {
        if let Some(m) = self.message.as_ref().or(self.channel_post.as_ref()) {
            let Some(text) = m.text.as_ref().or(m.caption.as_ref()) else {
                return Seen::Nothing;
            };
            let (author_id, author_name) = match (&m.sender_chat, &m.from) {
                // A post "as a channel" (the Channel_Bot trick) is that channel's, not the
                // placeholder user's.
                (Some(c), _) => (
                    format!("channel{}", c.id),
                    cap_chars(c.title.clone().unwrap_or_default(), MAX_NAME_CHARS),
                ),
                (None, Some(u)) => (format!("user{}", u.id), u.display()),
                (None, None) => return Seen::Nothing,
            };
            return Seen::Message {
                chat: m.chat.id,
                message: Message {
                    id: format!("{}/{}", m.chat.id, m.message_id),
                    author_id,
                    author_name,
                    time: m.date,
                    text: cap_chars(text.clone(), MAX_TEXT_CHARS),
                },
            };
        }
        if let Some(c) = &self.chat_member {
            let was = is_in(&c.old_chat_member.status);
            let now = is_in(&c.new_chat_member.status);
            let u = &c.new_chat_member.user;
            if !was && now {
                return Seen::Join {
                    chat: c.chat.id,
                    join: Join {
                        account_id: format!("user{}", u.id),
                        name: u.display(),
                        // The Bot API omits `username` when there is none: known to be empty.
                        username: Some(cap_chars(
                            u.username.clone().unwrap_or_default(),
                            MAX_NAME_CHARS,
                        )),
                        has_photo: None,
                        time: c.date,
                        invite_link: c.invite_link.as_ref().map(|l| {
                            cap_chars(
                                l.name.clone().unwrap_or_else(|| l.invite_link.clone()),
                                MAX_NAME_CHARS,
                            )
                        }),
                    },
                };
            }
            if was && !now {
                return Seen::Leave {
                    chat: c.chat.id,
                    account_id: format!("user{}", u.id),
                    time: c.date,
                };
            }
        }
        Seen::Nothing
    }
}

/// The numeric user id in `user123`.
pub fn user_id(account_id: &str) -> Option<i64> {
    account_id
        .strip_prefix("user")?
        .parse()
        .ok()
        .filter(|v| *v > 0)
}

/// The numeric chat id in `channel-100123` (a channel posting as itself).
pub fn channel_id(account_id: &str) -> Option<i64> {
    account_id
        .strip_prefix("channel")?
        .parse()
        .ok()
        .filter(|v| *v != 0)
}

/// Chat and message id in `-100123/77` (the live watcher's message ids), or a bare message id
/// (a Telegram export, whose chat the caller names).
pub fn message_ref(id: &str) -> (Option<i64>, Option<i64>) {
    match id.split_once('/') {
        Some((c, m)) => (c.parse().ok(), m.parse().ok().filter(|v| *v > 0)),
        None => (None, id.parse().ok().filter(|v| *v > 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::parse("123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw").unwrap();
        assert_eq!(format!("{t:?}"), "Token(…)");
        assert!(Token::parse("nope").is_err());
        assert!(Token::parse("12:short").is_err());
        assert!(Token::parse("12:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/../x").is_err());
    }

    #[test]
    fn posting_methods_are_refused_before_any_request() {
        let token = Token::parse("123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw").unwrap();
        // Port 9 (discard) would fail to connect: the refusal must come first.
        let mut api = BotApi::new("http://127.0.0.1:9", token).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for m in [
            "sendMessage",
            "forwardMessage",
            "copyMessage",
            "editMessageText",
            "x",
        ] {
            let r = rt.block_on(api.call(m, &json!({"chat_id": 1, "text": "hi"})));
            assert!(matches!(r, Err(TgError::NotAllowed(_))), "{m}: {r:?}");
        }
        assert!(METHODS.iter().all(|m| !m.starts_with("send")
            && !m.starts_with("forward")
            && !m.starts_with("copy")
            && !m.starts_with("edit")));
    }

    #[test]
    fn updates_become_events() {
        let u: Update = serde_json::from_value(json!({"update_id": 7, "message": {
            "message_id": 42, "date": 1_700_000_000,
            "chat": {"id": -100_555, "type": "supergroup", "title": "Comments"},
            "from": {"id": 9, "is_bot": false, "first_name": "Әсел", "last_name": "Б"},
            "text": "R.I.P"}}))
        .unwrap();
        match u.seen() {
            Seen::Message { chat, message } => {
                assert_eq!(chat, -100_555);
                assert_eq!(message.id, "-100555/42");
                assert_eq!(message.author_id, "user9");
                assert_eq!(message.author_name, "Әсел Б");
            }
            other => panic!("{other:?}"),
        }
        let u: Update = serde_json::from_value(json!({"update_id": 8, "chat_member": {
            "chat": {"id": -100_555, "type": "channel"}, "date": 1_700_000_100,
            "from": {"id": 10, "is_bot": false, "first_name": "x"},
            "old_chat_member": {"status": "left", "user": {"id": 10, "is_bot": false, "first_name": "Bot"}},
            "new_chat_member": {"status": "member", "user": {"id": 10, "is_bot": false, "first_name": "Bot"}},
            "invite_link": {"invite_link": "https://t.me/+AbC...", "creator": {"id": 1, "is_bot": false, "first_name": "a"},
                "creates_join_request": false, "is_primary": false, "is_revoked": false, "name": "promo"}}}))
        .unwrap();
        match u.seen() {
            Seen::Join { join, .. } => {
                assert_eq!(join.username.as_deref(), Some(""));
                assert_eq!(join.invite_link.as_deref(), Some("promo"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(user_id("user10"), Some(10));
        assert_eq!(user_id("channel10"), None);
        assert_eq!(message_ref("-100555/42"), (Some(-100_555), Some(42)));
        assert_eq!(message_ref("42"), (None, Some(42)));
    }
}
