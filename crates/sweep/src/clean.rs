//! Clean-up in reversible steps: restrict, then ban, then delete messages; undo with
//! unrestrict and unban. Dry-run is the default: [`build_plan`] says what would be done and
//! what it costs, and nothing talks to a platform until [`execute`] is called (`--apply`).
//!
//! The queue is checkpointed: `clean-<plan key>.json` in the state directory holds how many
//! actions are done, replaced atomically after each one. A restart with the same report,
//! clusters, step and chat resumes where it stopped; at most the one action in flight when the
//! process died is sent again, and every action here is idempotent on Telegram's side.
//!
//! Budgets: Telegram publishes no limit for bans and deletions; we stay at or under
//! [`MAX_RATE`] calls a second (tg-spam uses 30), obey 429 `retry_after`, and use
//! `deleteMessages` with at most 100 ids. YouTube: `comments.setModerationStatus` takes at
//! most 50 ids and costs 50 units of the default 10,000 a day; a YouTube plan is a plan only
//! (there is no YouTube API to test against here).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::input::Platform;
use crate::live::write_atomic;
use crate::telegram::{BotApi, TgError, channel_id, message_ref, user_id};

/// Highest call rate allowed, per second.
pub const MAX_RATE: f64 = 30.0;
/// Ids per `deleteMessages` call.
pub const TG_DELETE_BATCH: usize = 100;
/// Ids per `comments.setModerationStatus` call, and its cost in quota units.
pub const YT_BATCH: usize = 50;
pub const YT_UNITS_PER_CALL: usize = 50;
pub const YT_DAILY_QUOTA: usize = 10_000;
/// A queue whose first this many calls are all refused stops.
const FAIL_FAST: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Restrict,
    Ban,
    Delete,
    Unrestrict,
    Unban,
}

impl Step {
    pub fn from_name(s: &str) -> Option<Step> {
        Some(match s {
            "restrict" => Step::Restrict,
            "ban" => Step::Ban,
            "delete" => Step::Delete,
            "unrestrict" => Step::Unrestrict,
            "unban" => Step::Unban,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Step::Restrict => "restrict",
            Step::Ban => "ban",
            Step::Delete => "delete",
            Step::Unrestrict => "unrestrict",
            Step::Unban => "unban",
        }
    }
    /// Whether the platform can undo it.
    pub fn reversible(self) -> bool {
        self != Step::Delete
    }
}

/// One API call of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "call", rename_all = "camelCase")]
pub enum Action {
    RestrictChatMember {
        user_id: i64,
    },
    BanChatMember {
        user_id: i64,
    },
    UnbanChatMember {
        user_id: i64,
    },
    /// Unrestrict: the same method with every permission given back.
    LiftRestrictions {
        user_id: i64,
    },
    /// A channel posting "as itself" in the comments (the Channel_Bot trick) is banned as a
    /// sender chat: it has no user id to restrict or ban.
    BanChatSenderChat {
        sender_chat_id: i64,
    },
    UnbanChatSenderChat {
        sender_chat_id: i64,
    },
    DeleteMessages {
        message_ids: Vec<i64>,
    },
    /// YouTube `comments.setModerationStatus?moderationStatus=rejected` (plan only).
    YoutubeReject {
        comment_ids: Vec<String>,
    },
}

/// What a clean-up would do.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub platform: Platform,
    pub chat: Option<i64>,
    pub step: Step,
    pub clusters: Vec<String>,
    /// Accounts or messages the step acts on.
    pub targets: usize,
    /// Members that cannot be acted on by this step (channel identities, ids of another chat,
    /// ids that are not numbers), with the reason.
    pub skipped: Vec<(String, usize)>,
    pub actions: Vec<Action>,
    pub api_calls: usize,
    /// YouTube quota units, and days of the default daily quota they take.
    pub quota_units: Option<usize>,
    pub quota_days: Option<usize>,
    pub reversible: bool,
    /// Identifies the queue's checkpoint file.
    pub key: String,
}

impl Plan {
    /// Time the Telegram calls take at `rate` per second, without 429 pauses.
    pub fn duration_at(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(self.api_calls as f64 / rate.clamp(0.1, MAX_RATE))
    }
}

/// Builds the queue for `step` on `clusters` of a `report.json`.
pub fn build_plan(
    report: &Value,
    clusters: &[String],
    step: Step,
    chat: Option<i64>,
) -> Result<Plan, String> {
    let platform = match report.pointer("/input/platform").and_then(Value::as_str) {
        Some("telegram") => Platform::Telegram,
        Some("youtube") => Platform::Youtube,
        _ => {
            return Err(
                "the report's platform is neither Telegram nor YouTube: nothing to clean (CSV input)"
                    .into(),
            );
        }
    };
    let all = report
        .get("clusters")
        .and_then(Value::as_array)
        .ok_or("the report has no clusters array")?;
    if clusters.is_empty() {
        return Err("name at least one cluster (--cluster c1)".into());
    }
    let mut chosen = Vec::new();
    for id in clusters {
        let c = all
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id.as_str()))
            .ok_or_else(|| format!("the report has no cluster {id:?}"))?;
        chosen.push(c);
    }
    let mut skipped: std::collections::BTreeMap<String, usize> = Default::default();
    let mut skip = |why: &str| *skipped.entry(why.to_string()).or_insert(0) += 1;
    let mut actions = Vec::new();
    let mut targets = 0;
    let mut chat = chat;
    match (platform, step) {
        (Platform::Youtube, Step::Delete) => {
            let mut ids: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for c in &chosen {
                for m in c
                    .get("members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match m.get("message_id").and_then(Value::as_str) {
                        Some(id) if !id.is_empty() && id.len() <= 100 => {
                            if seen.insert(id.to_string()) {
                                ids.push(id.to_string());
                            }
                        }
                        _ => skip("no comment id"),
                    }
                }
            }
            targets = ids.len();
            actions = ids
                .chunks(YT_BATCH)
                .map(|c| Action::YoutubeReject {
                    comment_ids: c.to_vec(),
                })
                .collect();
        }
        (Platform::Youtube, _) => {
            return Err(
                "YouTube has no restrict or ban call for commenters; use --step delete (reject with banAuthor)"
                    .into(),
            );
        }
        (Platform::Telegram, Step::Delete) => {
            let mut ids = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for c in &chosen {
                for m in c
                    .get("members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(raw) = m.get("message_id").and_then(Value::as_str) else {
                        skip("not a message (a join)");
                        continue;
                    };
                    match message_ref(raw) {
                        (c, Some(id)) => {
                            if let Some(c) = c {
                                match chat {
                                    None => chat = Some(c),
                                    Some(x) if x != c => {
                                        skip("message of another chat");
                                        continue;
                                    }
                                    Some(_) => {}
                                }
                            }
                            if seen.insert(id) {
                                ids.push(id);
                            }
                        }
                        _ => skip("message id is not a number"),
                    }
                }
            }
            targets = ids.len();
            actions = ids
                .chunks(TG_DELETE_BATCH)
                .map(|c| Action::DeleteMessages {
                    message_ids: c.to_vec(),
                })
                .collect();
        }
        (Platform::Telegram, _) => {
            let mut seen = std::collections::HashSet::new();
            let mut seen_channels = std::collections::HashSet::new();
            for c in &chosen {
                // Where messages name their chat, that is the chat to act in.
                if chat.is_none() {
                    chat = c
                        .get("members")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m.get("message_id").and_then(Value::as_str))
                        .find_map(|id| message_ref(id).0);
                }
                for a in c
                    .get("accounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = a.get("id").and_then(Value::as_str).unwrap_or("");
                    match user_id(id) {
                        Some(u) => {
                            if seen.insert(u) {
                                actions.push(match step {
                                    Step::Restrict => Action::RestrictChatMember { user_id: u },
                                    Step::Ban => Action::BanChatMember { user_id: u },
                                    Step::Unban => Action::UnbanChatMember { user_id: u },
                                    _ => Action::LiftRestrictions { user_id: u },
                                });
                            }
                        }
                        None => match channel_id(id) {
                            Some(c) if matches!(step, Step::Ban | Step::Unban) => {
                                if seen_channels.insert(c) {
                                    actions.push(if step == Step::Ban {
                                        Action::BanChatSenderChat { sender_chat_id: c }
                                    } else {
                                        Action::UnbanChatSenderChat { sender_chat_id: c }
                                    });
                                }
                            }
                            Some(_) => skip(
                                "a channel identity cannot be restricted; its step is ban (banChatSenderChat)",
                            ),
                            None => skip("account id is not a Telegram user id"),
                        },
                    }
                }
            }
            targets = actions.len();
        }
        (Platform::Unknown, _) => unreachable_plan()?,
    }
    if platform == Platform::Telegram && chat.is_none() && !actions.is_empty() {
        return Err("name the chat to act in with --chat (the report does not say)".into());
    }
    let api_calls = actions.len();
    let (quota_units, quota_days) = if platform == Platform::Youtube {
        let u = api_calls * YT_UNITS_PER_CALL;
        (Some(u), Some(u.div_ceil(YT_DAILY_QUOTA)))
    } else {
        (None, None)
    };
    let mut h = Sha256::new();
    h.update(
        serde_json::to_vec(&json!({"p": platform, "chat": chat, "step": step, "a": &actions}))
            .unwrap_or_default(),
    );
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Plan {
        platform,
        chat,
        step,
        clusters: clusters.to_vec(),
        targets,
        skipped: skipped.into_iter().collect(),
        actions,
        api_calls,
        quota_units,
        quota_days,
        reversible: step.reversible(),
        key,
    })
}

fn unreachable_plan() -> Result<(), String> {
    Err("nothing to clean on an unknown platform".into())
}

/// The checkpoint of one queue.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub failed: usize,
    pub retries_429: u64,
    pub waited_429_secs: u64,
}

/// Reads the checkpoint of `plan` in `dir` (zero if there is none).
pub fn progress(dir: &Path, plan: &Plan) -> Result<Progress, String> {
    let p = dir.join(format!("clean-{}.json", plan.key));
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress {
            total: plan.actions.len(),
            ..Progress::default()
        }),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Runs the queue from its checkpoint at no more than `rate` calls a second. Stops with an
/// error (resumable) when the bot lacks rights or the API stays unreachable; a refusal of a
/// single action (a user who left, a message already gone) is recorded and skipped.
pub async fn execute(
    api: &mut BotApi,
    plan: &Plan,
    dir: &Path,
    rate: f64,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Progress, String> {
    if plan.platform != Platform::Telegram {
        return Err(
            "only Telegram clean-ups are carried out; a YouTube plan is for the YouTube Studio or a tool holding the channel's OAuth token"
                .into(),
        );
    }
    let chat = plan.chat.ok_or("no chat")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cp = dir.join(format!("clean-{}.json", plan.key));
    let failures_log = dir.join(format!("clean-{}.failures.jsonl", plan.key));
    let mut prog = progress(dir, plan)?;
    prog.total = plan.actions.len();
    let gap = Duration::from_secs_f64(1.0 / rate.clamp(0.1, MAX_RATE));
    let mut next_at = Instant::now();
    let mut net_failures = 0u32;
    while prog.done < plan.actions.len() {
        let action = &plan.actions[prog.done];
        tokio::time::sleep_until(next_at.into()).await;
        next_at = Instant::now() + gap;
        let (method, params) = call_of(action, chat)?;
        match api.call(method, &params).await {
            Ok(_) => net_failures = 0,
            Err(TgError::RetryAfter(s)) => {
                prog.retries_429 += 1;
                prog.waited_429_secs += s;
                tracing::warn!(retry_after = s, "the Bot API asks to slow down; waiting");
                tokio::time::sleep(Duration::from_secs(s.max(1))).await;
                next_at = Instant::now();
                continue;
            }
            Err(TgError::Api {
                code: 401 | 403,
                description,
                ..
            }) => {
                return Err(format!(
                    "the bot may not do this in the chat ({description}); make it an admin with the rights to restrict, ban and delete. Progress is saved: {}/{}",
                    prog.done,
                    plan.actions.len()
                ));
            }
            Err(TgError::Api {
                code, description, ..
            }) => {
                prog.failed += 1;
                // Refused from the very start: the step does not fit this chat (restricting
                // in a broadcast channel, say), not a user who left. Stop rather than log
                // thousands of refusals.
                if prog.failed == FAIL_FAST && prog.done + 1 == FAIL_FAST {
                    return Err(format!(
                        "the first {FAIL_FAST} calls were all refused ({code} {description}); stopping. Nothing was done"
                    ));
                }
                let line = json!({"action": action, "code": code, "description": description});
                append_line(&failures_log, &line)?;
            }
            Err(e) => {
                net_failures += 1;
                if net_failures > 5 {
                    return Err(format!(
                        "the Bot API is unreachable ({e}); progress is saved: {}/{}",
                        prog.done,
                        plan.actions.len()
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1 << net_failures)).await;
                continue;
            }
        }
        prog.done += 1;
        write_atomic(&cp, &serde_json::to_vec(&prog).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        on_progress(&prog);
    }
    Ok(prog)
}

fn append_line(path: &Path, v: &Value) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    f.write_all(&line)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The Bot API method and parameters of one action.
pub fn call_of(a: &Action, chat: i64) -> Result<(&'static str, Value), String> {
    let perms = |on: bool| {
        json!({
            "can_send_messages": on, "can_send_audios": on, "can_send_documents": on,
            "can_send_photos": on, "can_send_videos": on, "can_send_video_notes": on,
            "can_send_voice_notes": on, "can_send_polls": on, "can_send_other_messages": on,
            "can_add_web_page_previews": on, "can_invite_users": on,
        })
    };
    Ok(match a {
        Action::RestrictChatMember { user_id } => (
            "restrictChatMember",
            json!({"chat_id": chat, "user_id": user_id, "permissions": perms(false),
                   "use_independent_chat_permissions": true}),
        ),
        Action::LiftRestrictions { user_id } => (
            "restrictChatMember",
            json!({"chat_id": chat, "user_id": user_id, "permissions": perms(true),
                   "use_independent_chat_permissions": true}),
        ),
        // revoke_messages false: deleting is its own, irreversible step.
        Action::BanChatMember { user_id } => (
            "banChatMember",
            json!({"chat_id": chat, "user_id": user_id, "revoke_messages": false}),
        ),
        Action::UnbanChatMember { user_id } => (
            "unbanChatMember",
            json!({"chat_id": chat, "user_id": user_id, "only_if_banned": true}),
        ),
        Action::BanChatSenderChat { sender_chat_id } => (
            "banChatSenderChat",
            json!({"chat_id": chat, "sender_chat_id": sender_chat_id}),
        ),
        Action::UnbanChatSenderChat { sender_chat_id } => (
            "unbanChatSenderChat",
            json!({"chat_id": chat, "sender_chat_id": sender_chat_id}),
        ),
        Action::DeleteMessages { message_ids } => (
            "deleteMessages",
            json!({"chat_id": chat, "message_ids": message_ids}),
        ),
        Action::YoutubeReject { .. } => return Err("YouTube actions are plan only".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(platform: &str, n: usize) -> Value {
        let members: Vec<Value> = (0..n)
            .map(|i| json!({"message_id": format!("-100777/{}", i + 1), "account_id": format!("user{}", i % 40 + 1), "time": 0}))
            .collect();
        let accounts: Vec<Value> = (0..40)
            .map(|i| json!({"id": format!("user{}", i + 1), "name": "x", "count": 1}))
            .chain([json!({"id": "channel-1005", "name": "c", "count": 1})])
            .collect();
        json!({"input": {"platform": platform}, "clusters": [
            {"id": "c1", "members": members, "accounts": accounts}]})
    }

    #[test]
    fn telegram_plans_batch_deletes_and_take_the_chat_from_message_ids() {
        let r = report("telegram", 250);
        let p = build_plan(&r, &["c1".into()], Step::Delete, None).unwrap();
        assert_eq!(p.chat, Some(-100_777));
        assert_eq!((p.targets, p.api_calls), (250, 3));
        assert!(!p.reversible);
        let p = build_plan(&r, &["c1".into()], Step::Ban, None).unwrap();
        // 40 users and the channel that posted as itself.
        assert_eq!((p.targets, p.api_calls), (41, 41));
        assert!(p.skipped.is_empty());
        assert_eq!(
            p.actions.last(),
            Some(&Action::BanChatSenderChat {
                sender_chat_id: -1_005
            })
        );
        let p = build_plan(&r, &["c1".into()], Step::Restrict, None).unwrap();
        assert_eq!((p.targets, p.skipped.len()), (40, 1));
        assert!(p.reversible);
        let q = build_plan(&r, &["c1".into()], Step::Unban, None).unwrap();
        assert_ne!(p.key, q.key);
        assert!(build_plan(&r, &["c9".into()], Step::Ban, None).is_err());
        // Messages of another chat are not touched.
        let p = build_plan(&r, &["c1".into()], Step::Delete, Some(-1)).unwrap();
        assert_eq!(p.targets, 0);
    }

    #[test]
    fn youtube_plans_count_quota() {
        let mut r = report("youtube", 4000);
        r["clusters"][0]["members"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
            .for_each(|(i, m)| m["message_id"] = json!(format!("Ugx{i}")));
        let p = build_plan(&r, &["c1".into()], Step::Delete, None).unwrap();
        assert_eq!(p.api_calls, 80);
        assert_eq!(p.quota_units, Some(4000));
        assert_eq!(p.quota_days, Some(1));
        assert!(build_plan(&r, &["c1".into()], Step::Ban, None).is_err());
    }
}
