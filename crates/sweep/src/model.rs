//! The event model every input format is read into. It knows nothing of files: the offline
//! parsers in [`crate::input`] produce it today, a live bot can produce it later.

use serde::{Deserialize, Serialize};

/// Longest text kept from one message, in characters. Telegram's own limit is 4,096; a longer
/// field in a file is cut here so one crafted record cannot cost unbounded memory.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest identifier or display name kept, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// One comment or chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The platform's message or comment id, as text (unique within one input).
    pub id: String,
    /// Stable account id (Telegram `user123`, YouTube channel id, CSV `author_id`).
    pub author_id: String,
    /// Display name at the time of the export; shown, never matched.
    pub author_name: String,
    /// Unix seconds, UTC.
    pub time: i64,
    /// The text exactly as posted (after the length cap), for display.
    pub text: String,
}

/// One account joining the channel or group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub account_id: String,
    pub name: String,
    /// `Some(None)`-like states are folded: `None` means "not known from this source",
    /// `Some("")` means "known to have none".
    pub username: Option<String>,
    /// Whether the account has a profile photo, when the source says.
    pub has_photo: Option<bool>,
    /// Unix seconds, UTC.
    pub time: i64,
    /// The invite link (or, in a Telegram export, who created the link) it joined through.
    pub invite_link: Option<String>,
}

/// What an input yields, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    Join(Join),
}

/// Everything read from one input.
#[derive(Debug, Default, Clone)]
pub struct Dataset {
    pub messages: Vec<Message>,
    pub joins: Vec<Join>,
    /// Records that were read but carried nothing to analyse (media without caption, service
    /// messages other than joins, rows without text or join time).
    pub skipped: u64,
}

impl Dataset {
    pub fn push(&mut self, e: Event) {
        match e {
            Event::Message(m) => self.messages.push(m),
            Event::Join(j) => self.joins.push(j),
        }
    }
}

/// Cuts `s` to at most `max` characters on a character boundary.
pub fn cap_chars(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_chars_respects_boundaries() {
        assert_eq!(cap_chars("әбв".to_string(), 2), "әб");
        assert_eq!(cap_chars("ab".to_string(), 5), "ab");
        assert_eq!(cap_chars(String::new(), 0), "");
    }
}
