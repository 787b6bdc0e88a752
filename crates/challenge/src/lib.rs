//! Stateless proof-of-work challenges and clearance cookies for the Qalqan shield.
//!
//! When the shield decides a client must prove it is a browser, it issues a [`Challenge`]: a
//! compact, URL-safe token signed with HMAC-SHA256 that carries a random nonce, the difficulty,
//! an expiry, a scope tag and a loose [`Binding`] to the client. The browser finds a counter such
//! that SHA-256(`token ":" counter`) has at least `difficulty` leading zero bits (see [`pow`]) and
//! sends token and counter back. [`verify_solution`] checks everything with no lookup except the
//! fixed-size [`ReplayGuard`], so any node that shares the [`Keys`] can verify any other node's
//! challenge. A verified solution earns a [`Clearance`] cookie, also signed, whose id the shield
//! rate-limits like a client of its own.
//!
//! What this crate must never do:
//!
//! - **Accept a token it did not sign.** Every token is checked against an HMAC tag with a
//!   constant-time comparison before any field in it is believed, and a challenge can never pass
//!   as a clearance or the other way round (each kind has its own leading byte and length).
//! - **Print the secret.** [`Secret`] has no `Display`, its `Debug` is `Secret(…)`, errors never
//!   echo input, and the crate does not log at all.
//! - **Grow memory with the number of clients.** Verification is stateless; the only state is the
//!   [`ReplayGuard`], whose capacity is fixed when it is built.
//!
//! The crate does no IO and draws no randomness: nonces, clearance ids and secrets come from the
//! caller, and so does the time.
//!
//! Token layout (before base64url without padding), all integers big-endian:
//!
//! ```text
//! challenge: 0x01 | nonce[16] | difficulty | scope | expires_unix u64 | binding u64 | tag[32]
//! clearance: 0x02 | id[16]    | expires_unix u64  | binding u64                    | tag[32]
//! ```
//!
//! The tag is HMAC-SHA256 over everything before it.
//!
//! ```
//! use qalqan_challenge::*;
//! use std::net::IpAddr;
//!
//! let keys = Keys::new(Secret::generate([0x5a; 32])); // use OS randomness in real code
//! let guard = ReplayGuard::new(100_000, 300, 1_800_000_000);
//! let ip: IpAddr = "198.51.100.7".parse().unwrap();
//! let client = Binding::new(ip, b"Mozilla/5.0");
//!
//! // Shield: issue a challenge (nonce from the OS generator) and put it in the page.
//! let token = Challenge::new([1; 16], 8, 0, client, 1_800_000_000, 120).sign(&keys);
//! // Browser: find the counter.
//! let counter = solve(&token, 8, 1 << 20).unwrap();
//! // Shield, on submit (the client moved to another host in the same /24):
//! let now_client = Binding::new("198.51.100.99".parse().unwrap(), b"Mozilla/5.0");
//! let ok = verify_solution(&keys, &token, counter, &now_client, 1_800_000_010, 8, &guard);
//! assert!(ok.is_ok());
//! let cookie = issue_clearance(&keys, now_client, [2; 16], 1_800_000_010, 3600);
//! assert_eq!(verify_clearance(&keys, &cookie, &now_client, 1_800_000_020).unwrap().id, [2; 16]);
//! // The same solution again is a replay.
//! let again = verify_solution(&keys, &token, counter, &now_client, 1_800_000_011, 8, &guard);
//! assert_eq!(again, Err(Reject::Replayed));
//! ```

mod binding;
pub mod pow;
mod replay;
mod secret;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;

pub use binding::{Binding, IPV4_PREFIX_BITS, IPV6_PREFIX_BITS, user_agent_hash};
pub use pow::{leading_zero_bits, solve, work_bits};
pub use replay::ReplayGuard;
pub use secret::{Keys, MIN_SECRET_BYTES, Secret, SecretError};

const KIND_CHALLENGE_V1: u8 = 0x01;
const KIND_CLEARANCE_V1: u8 = 0x02;
const TAG_LEN: usize = 32;
const CHALLENGE_BODY: usize = 1 + 16 + 1 + 1 + 8 + 8;
const CLEARANCE_BODY: usize = 1 + 16 + 8 + 8;
const CHALLENGE_LEN: usize = CHALLENGE_BODY + TAG_LEN;
const CLEARANCE_LEN: usize = CLEARANCE_BODY + TAG_LEN;

/// Length of a challenge token in characters.
pub const CHALLENGE_TOKEN_CHARS: usize = encoded_len(CHALLENGE_LEN);
/// Length of a clearance cookie value in characters.
pub const CLEARANCE_TOKEN_CHARS: usize = encoded_len(CLEARANCE_LEN);

const fn encoded_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// Why a challenge solution or clearance cookie was refused.
///
/// The `Display` text is the public reason: short, safe to show the client, and never containing
/// any part of the input. [`Reject::is_suspicious`] says whether the shield should count it as a
/// failed attempt that escalates towards a block, or whether an honest reader could have caused
/// it and should simply be challenged again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// Not a token of the expected kind: wrong length, not base64url, or wrong leading byte.
    #[error("malformed token")]
    Malformed,
    /// The tag does not match under the current or previous secret: forged or altered.
    #[error("bad signature")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("expired")]
    Expired,
    /// The token was issued to a different network prefix or user agent.
    #[error("issued to a different client")]
    WrongBinding,
    /// The challenge's difficulty is below what the shield requires now (it escalated since).
    #[error("difficulty too low")]
    TooEasy,
    /// The counter does not give enough leading zero bits.
    #[error("insufficient work")]
    InsufficientWork,
    /// This challenge was already solved and spent.
    #[error("already used")]
    Replayed,
    /// The token lives longer than the replay guard remembers nonces, so it could not be kept
    /// single-use. This is a shield misconfiguration (challenge lifetime above the guard window),
    /// not the client's fault.
    #[error("challenge lifetime exceeds replay window")]
    OutlivesReplayWindow,
}

impl Reject {
    /// The public reason, the same text as `Display`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed token",
            Self::BadSignature => "bad signature",
            Self::Expired => "expired",
            Self::WrongBinding => "issued to a different client",
            Self::TooEasy => "difficulty too low",
            Self::InsufficientWork => "insufficient work",
            Self::Replayed => "already used",
            Self::OutlivesReplayWindow => "challenge lifetime exceeds replay window",
        }
    }

    /// Whether this rejection should count as a failed or forged attempt. Browsers never produce
    /// malformed or forged tokens, wrong work or replays; but a slow phone lets a token expire, a
    /// reader moves networks, and the shield itself raises the difficulty, so those are innocent
    /// and answered with a fresh challenge instead of a step towards a block.
    pub fn is_suspicious(&self) -> bool {
        match self {
            Self::Malformed | Self::BadSignature | Self::InsufficientWork | Self::Replayed => true,
            Self::Expired | Self::WrongBinding | Self::TooEasy | Self::OutlivesReplayWindow => {
                false
            }
        }
    }
}

/// A proof-of-work challenge, before signing or after verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Random bytes from the caller; makes every challenge unique and is what gets spent.
    pub nonce: [u8; 16],
    /// Required leading zero bits of SHA-256(`token ":" counter`).
    pub difficulty: u8,
    /// A tag the shield chooses (for example which rule or route issued it), signed but otherwise
    /// not interpreted here.
    pub scope: u8,
    /// Unix seconds at which the challenge stops being accepted.
    pub expires_unix: u64,
    /// Who it was issued to.
    pub binding: Binding,
}

impl Challenge {
    /// A challenge valid for `ttl_secs` from `now_unix`. Keep `ttl_secs` at most the
    /// [`ReplayGuard`] window, or every solution is refused with
    /// [`Reject::OutlivesReplayWindow`].
    pub fn new(
        nonce: [u8; 16],
        difficulty: u8,
        scope: u8,
        binding: Binding,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            nonce,
            difficulty,
            scope,
            expires_unix: now_unix.saturating_add(ttl_secs),
            binding,
        }
    }

    /// The signed token, [`CHALLENGE_TOKEN_CHARS`] URL-safe characters. It is also the string the
    /// client hashes.
    pub fn sign(&self, keys: &Keys) -> String {
        let mut body = [0u8; CHALLENGE_BODY];
        body[0] = KIND_CHALLENGE_V1;
        body[1..17].copy_from_slice(&self.nonce);
        body[17] = self.difficulty;
        body[18] = self.scope;
        body[19..27].copy_from_slice(&self.expires_unix.to_be_bytes());
        body[27..35].copy_from_slice(&self.binding.fingerprint().to_be_bytes());
        seal(keys, &body)
    }

    fn parse(raw: &[u8; CHALLENGE_LEN]) -> Self {
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&raw[1..17]);
        Self {
            nonce,
            difficulty: raw[17],
            scope: raw[18],
            expires_unix: be_u64(&raw[19..27]),
            binding: Binding::from_fingerprint(be_u64(&raw[27..35])),
        }
    }
}

/// A successfully verified and now spent challenge solution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The challenge as it was signed.
    pub challenge: Challenge,
    /// Leading zero bits the client actually found (at least the challenge's difficulty).
    pub work_bits: u32,
}

/// Checks a submitted solution and, if it is good, spends its nonce.
///
/// Checks run from cheapest and least trusting to most: shape, signature (constant time, current
/// then previous secret), expiry, replay-window fit, binding against the client as it is *now*,
/// difficulty against `min_difficulty` (what the shield demands now), the work itself, and last the
/// replay guard, so only solutions that cost real work ever take a slot in it.
pub fn verify_solution(
    keys: &Keys,
    token: &str,
    counter: u64,
    binding_now: &Binding,
    now_unix: u64,
    min_difficulty: u8,
    replay: &ReplayGuard,
) -> Result<Verified, Reject> {
    let raw: [u8; CHALLENGE_LEN] = open(keys, token, KIND_CHALLENGE_V1)?;
    let challenge = Challenge::parse(&raw);
    if now_unix >= challenge.expires_unix {
        return Err(Reject::Expired);
    }
    if challenge.expires_unix - now_unix > replay.window_secs() {
        return Err(Reject::OutlivesReplayWindow);
    }
    if challenge.binding != *binding_now {
        return Err(Reject::WrongBinding);
    }
    if challenge.difficulty < min_difficulty {
        return Err(Reject::TooEasy);
    }
    let bits = work_bits(token, counter);
    if bits < u32::from(challenge.difficulty) {
        return Err(Reject::InsufficientWork);
    }
    if !replay.spend(challenge.nonce, now_unix) {
        return Err(Reject::Replayed);
    }
    Ok(Verified {
        challenge,
        work_bits: bits,
    })
}

/// Proof that a client solved a challenge, carried in a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clearance {
    /// Random id from the caller. The shield rate-limits per clearance id, so one solution cannot
    /// be shared by a thousand bots for free.
    pub id: [u8; 16],
    /// Unix seconds at which the cookie stops being accepted.
    pub expires_unix: u64,
    /// Who it was issued to.
    pub binding: Binding,
}

impl Clearance {
    /// A clearance valid for `ttl_secs` from `now_unix`.
    pub fn new(id: [u8; 16], binding: Binding, now_unix: u64, ttl_secs: u64) -> Self {
        Self {
            id,
            expires_unix: now_unix.saturating_add(ttl_secs),
            binding,
        }
    }

    /// The signed cookie value, [`CLEARANCE_TOKEN_CHARS`] URL-safe characters.
    pub fn sign(&self, keys: &Keys) -> String {
        let mut body = [0u8; CLEARANCE_BODY];
        body[0] = KIND_CLEARANCE_V1;
        body[1..17].copy_from_slice(&self.id);
        body[17..25].copy_from_slice(&self.expires_unix.to_be_bytes());
        body[25..33].copy_from_slice(&self.binding.fingerprint().to_be_bytes());
        seal(keys, &body)
    }

    fn parse(raw: &[u8; CLEARANCE_LEN]) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&raw[1..17]);
        Self {
            id,
            expires_unix: be_u64(&raw[17..25]),
            binding: Binding::from_fingerprint(be_u64(&raw[25..33])),
        }
    }
}

/// Signs a clearance cookie: shorthand for [`Clearance::new`] then [`Clearance::sign`].
pub fn issue_clearance(
    keys: &Keys,
    binding: Binding,
    id: [u8; 16],
    now_unix: u64,
    ttl_secs: u64,
) -> String {
    Clearance::new(id, binding, now_unix, ttl_secs).sign(keys)
}

/// Checks a clearance cookie: shape, signature, expiry and binding. Stateless; a clearance may be
/// presented many times until it expires (rate limits per [`Clearance::id`] bound its use).
pub fn verify_clearance(
    keys: &Keys,
    cookie: &str,
    binding_now: &Binding,
    now_unix: u64,
) -> Result<Clearance, Reject> {
    let raw: [u8; CLEARANCE_LEN] = open(keys, cookie, KIND_CLEARANCE_V1)?;
    let clearance = Clearance::parse(&raw);
    if now_unix >= clearance.expires_unix {
        return Err(Reject::Expired);
    }
    if clearance.binding != *binding_now {
        return Err(Reject::WrongBinding);
    }
    Ok(clearance)
}

/// Appends the tag under the current secret and encodes.
fn seal(keys: &Keys, body: &[u8]) -> String {
    let mut mac = keys.current.mac();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut raw = Vec::with_capacity(body.len() + TAG_LEN);
    raw.extend_from_slice(body);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a token of exactly `N` bytes whose first byte is `kind` and checks its tag against the
/// current and then the previous secret.
fn open<const N: usize>(keys: &Keys, token: &str, kind: u8) -> Result<[u8; N], Reject> {
    // Length first: an attacker's megabyte of junk is refused before any decoding.
    if token.len() != encoded_len(N) {
        return Err(Reject::Malformed);
    }
    // Room for the decoder's conservative size estimate. The default engine rejects
    // non-canonical trailing bits, so each token has exactly one spelling.
    let mut buf = [0u8; 80];
    let written = URL_SAFE_NO_PAD
        .decode_slice(token.as_bytes(), &mut buf)
        .map_err(|_| Reject::Malformed)?;
    if written != N || buf[0] != kind {
        return Err(Reject::Malformed);
    }
    let mut raw = [0u8; N];
    raw.copy_from_slice(&buf[..N]);
    let (body, tag) = raw.split_at(N - TAG_LEN);
    let signed_by = |secret: &Secret| {
        let mut mac = secret.mac();
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    };
    if signed_by(&keys.current) || keys.previous.as_ref().is_some_and(signed_by) {
        Ok(raw)
    } else {
        Err(Reject::BadSignature)
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests;
