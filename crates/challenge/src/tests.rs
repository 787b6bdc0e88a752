//! Unit and property tests for tokens; the secret, binding, pow and replay modules test
//! themselves.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

const NOW: u64 = 1_800_000_000;
const TTL: u64 = 120;
const UA: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0";

fn keys() -> Keys {
    Keys::new(Secret::generate([0x11; 32]))
}

fn other_keys() -> Keys {
    Keys::new(Secret::generate([0x22; 32]))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn client() -> Binding {
    Binding::new(ip("198.51.100.23"), UA)
}

fn guard() -> ReplayGuard {
    ReplayGuard::new(1024, 300, NOW)
}

fn challenge(difficulty: u8) -> Challenge {
    Challenge::new([7; 16], difficulty, 3, client(), NOW, TTL)
}

/// A signed token and a counter that solves it.
fn solved(keys: &Keys, difficulty: u8) -> (String, u64) {
    let token = challenge(difficulty).sign(keys);
    let counter = solve(&token, difficulty, 1 << 24).expect("solvable");
    (token, counter)
}

fn verify(keys: &Keys, token: &str, counter: u64, g: &ReplayGuard) -> Result<Verified, Reject> {
    verify_solution(keys, token, counter, &client(), NOW + 1, 8, g)
}

#[test]
fn good_solution_verifies_once() {
    let k = keys();
    let (token, counter) = solved(&k, 8);
    assert_eq!(token.len(), CHALLENGE_TOKEN_CHARS);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let g = guard();
    let v = verify(&k, &token, counter, &g).unwrap();
    assert_eq!(v.challenge, challenge(8));
    assert!(v.work_bits >= 8);
    assert_eq!(verify(&k, &token, counter, &g), Err(Reject::Replayed));
}

#[test]
fn malformed_tokens() {
    let k = keys();
    let g = guard();
    let (token, counter) = solved(&k, 8);
    for bad in [
        String::new(),
        "x".repeat(CHALLENGE_TOKEN_CHARS),
        format!("{}!", &token[1..]),
        format!("{token}A"),
        token[1..].to_string(),
        // A clearance is not a challenge.
        issue_clearance(&k, client(), [1; 16], NOW, TTL),
    ] {
        assert_eq!(
            verify(&k, &bad, counter, &g),
            Err(Reject::Malformed),
            "{bad}"
        );
    }
    assert!(g.is_empty());
}

#[test]
fn non_canonical_trailing_bits_are_malformed() {
    // 67 bytes encode to 90 characters whose last one carries 4 unused bits; setting one of them
    // spells the same bytes differently, which must not be a second valid token.
    let k = keys();
    let (token, counter) = solved(&k, 8);
    let last = token.as_bytes()[token.len() - 1];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.iter().position(|&c| c == last).unwrap();
    let twin = alphabet[idx ^ 1];
    let mut respelled = token[..token.len() - 1].to_string();
    respelled.push(twin as char);
    assert_eq!(
        verify(&k, &respelled, counter, &guard()),
        Err(Reject::Malformed)
    );
}

#[test]
fn forged_token_is_bad_signature() {
    let (token, counter) = solved(&other_keys(), 8);
    assert_eq!(
        verify(&keys(), &token, counter, &guard()),
        Err(Reject::BadSignature)
    );
}

#[test]
fn expired_is_rejected() {
    let k = keys();
    let (token, counter) = solved(&k, 8);
    let g = guard();
    for now in [NOW + TTL, NOW + TTL + 1, u64::MAX] {
        assert_eq!(
            verify_solution(&k, &token, counter, &client(), now, 8, &g),
            Err(Reject::Expired)
        );
    }
    assert!(verify_solution(&k, &token, counter, &client(), NOW + TTL - 1, 8, &g).is_ok());
}

#[test]
fn lifetime_longer_than_replay_window_is_refused() {
    let k = keys();
    let token = Challenge::new([9; 16], 0, 0, client(), NOW, 301).sign(&k);
    let g = guard();
    assert_eq!(
        verify_solution(&k, &token, 0, &client(), NOW, 0, &g),
        Err(Reject::OutlivesReplayWindow)
    );
    // One second later it fits.
    assert!(verify_solution(&k, &token, 0, &client(), NOW + 1, 0, &g).is_ok());
}

#[test]
fn binding_is_loose_but_not_absent() {
    let k = keys();
    let (token, counter) = solved(&k, 8);
    let check = |b: Binding| verify_solution(&k, &token, counter, &b, NOW, 8, &guard());
    assert_eq!(
        check(Binding::new(ip("198.51.101.23"), UA)),
        Err(Reject::WrongBinding)
    );
    assert_eq!(
        check(Binding::new(ip("198.51.100.23"), b"curl/8.0")),
        Err(Reject::WrongBinding)
    );
    assert_eq!(
        check(Binding::new(ip("2001:db8::1"), UA)),
        Err(Reject::WrongBinding)
    );
    assert!(check(Binding::new(ip("198.51.100.200"), UA)).is_ok());
}

#[test]
fn difficulty_below_current_requirement_is_too_easy() {
    let k = keys();
    let (token, counter) = solved(&k, 8);
    assert_eq!(
        verify_solution(&k, &token, counter, &client(), NOW, 9, &guard()),
        Err(Reject::TooEasy)
    );
}

#[test]
fn fewer_zero_bits_is_insufficient_work() {
    let k = keys();
    let token = challenge(12).sign(&k);
    let weak = (0..).find(|&c| work_bits(&token, c) < 12).unwrap();
    let g = guard();
    assert_eq!(
        verify_solution(&k, &token, weak, &client(), NOW, 12, &g),
        Err(Reject::InsufficientWork)
    );
    // A failed attempt does not spend the nonce.
    let good = solve(&token, 12, 1 << 24).unwrap();
    assert!(verify_solution(&k, &token, good, &client(), NOW, 12, &g).is_ok());
}

#[test]
fn lowering_difficulty_by_editing_the_token_breaks_the_signature() {
    let k = keys();
    let token = challenge(20).sign(&k);
    let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    assert_eq!(raw[17], 20);
    raw[17] = 1;
    let edited = URL_SAFE_NO_PAD.encode(&raw);
    let counter = solve(&edited, 1, 1 << 16).unwrap();
    assert_eq!(
        verify_solution(&k, &edited, counter, &client(), NOW, 0, &guard()),
        Err(Reject::BadSignature)
    );
}

#[test]
fn key_rotation() {
    let old = Secret::generate([0x33; 32]);
    let new = Secret::generate([0x44; 32]);
    let (token, counter) = solved(&Keys::new(old.clone()), 8);
    let rotating = Keys::rotating(new.clone(), old);
    assert!(verify(&rotating, &token, counter, &guard()).is_ok());
    assert_eq!(
        verify(&Keys::new(new.clone()), &token, counter, &guard()),
        Err(Reject::BadSignature)
    );
    // New tokens are signed with the current secret only.
    let fresh = issue_clearance(&rotating, client(), [5; 16], NOW, TTL);
    assert!(verify_clearance(&Keys::new(new), &fresh, &client(), NOW).is_ok());
    let cookie = issue_clearance(&rotating, client(), [5; 16], NOW, TTL);
    let unknown = Keys::rotating(Secret::generate([0x55; 32]), Secret::generate([0x66; 32]));
    assert_eq!(
        verify_clearance(&unknown, &cookie, &client(), NOW),
        Err(Reject::BadSignature)
    );
}

#[test]
fn clearance_round_trip_and_rejections() {
    let k = keys();
    let cookie = issue_clearance(&k, client(), [9; 16], NOW, 3600);
    assert_eq!(cookie.len(), CLEARANCE_TOKEN_CHARS);
    let c = verify_clearance(&k, &cookie, &client(), NOW + 10).unwrap();
    assert_eq!(c.id, [9; 16]);
    assert_eq!(c.expires_unix, NOW + 3600);
    // Reusable until it expires.
    assert!(verify_clearance(&k, &cookie, &client(), NOW + 3599).is_ok());
    assert_eq!(
        verify_clearance(&k, &cookie, &client(), NOW + 3600),
        Err(Reject::Expired)
    );
    assert_eq!(
        verify_clearance(&k, &cookie, &Binding::new(ip("198.51.100.23"), b"x"), NOW),
        Err(Reject::WrongBinding)
    );
    assert_eq!(
        verify_clearance(&other_keys(), &cookie, &client(), NOW),
        Err(Reject::BadSignature)
    );
    // A challenge is not a clearance.
    assert_eq!(
        verify_clearance(&k, &challenge(1).sign(&k), &client(), NOW),
        Err(Reject::Malformed)
    );
    assert_eq!(
        verify_clearance(&k, "", &client(), NOW),
        Err(Reject::Malformed)
    );
}

#[test]
fn reasons_match_display_and_suspicion() {
    let all = [
        Reject::Malformed,
        Reject::BadSignature,
        Reject::Expired,
        Reject::WrongBinding,
        Reject::TooEasy,
        Reject::InsufficientWork,
        Reject::Replayed,
        Reject::OutlivesReplayWindow,
    ];
    for r in all {
        assert_eq!(r.to_string(), r.reason());
    }
    let suspicious: Vec<_> = all.iter().filter(|r| r.is_suspicious()).collect();
    assert_eq!(
        suspicious,
        [
            &Reject::Malformed,
            &Reject::BadSignature,
            &Reject::InsufficientWork,
            &Reject::Replayed
        ]
    );
}

fn arb_binding() -> impl Strategy<Value = Binding> {
    (any::<[u8; 4]>(), any::<Vec<u8>>()).prop_map(|(v4, ua)| Binding::new(IpAddr::from(v4), &ua))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single-bit change of a token's characters is either not a token any more or fails
    /// the signature; it never verifies and never panics.
    #[test]
    fn single_bit_flip_never_verifies(nonce: [u8; 16], difficulty in 0u8..4, pos in 0usize..CHALLENGE_TOKEN_CHARS, bit in 0u8..8) {
        let k = keys();
        let token = Challenge::new(nonce, difficulty, 0, client(), NOW, TTL).sign(&k);
        let mut bytes = token.into_bytes();
        bytes[pos] ^= 1 << bit;
        // Flipping the top bit of an ASCII byte makes invalid UTF-8; such a header never
        // reaches us as &str, so skip it.
        if let Ok(flipped) = String::from_utf8(bytes) {
            let counter = solve(&flipped, difficulty, 1 << 12).unwrap_or(0);
            let r = verify_solution(&k, &flipped, counter, &client(), NOW, 0, &guard());
            prop_assert!(matches!(r, Err(Reject::BadSignature) | Err(Reject::Malformed)), "{r:?}");
        }
    }

    /// Single-bit flips in the decoded bytes, re-encoded canonically: always caught by the tag
    /// (or the kind byte).
    #[test]
    fn single_bit_flip_in_raw_bytes_is_caught(pos in 0usize..CLEARANCE_LEN, bit in 0u8..8, id: [u8; 16]) {
        let k = keys();
        let cookie = issue_clearance(&k, client(), id, NOW, TTL);
        let mut raw = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
        raw[pos] ^= 1 << bit;
        let r = verify_clearance(&k, &URL_SAFE_NO_PAD.encode(&raw), &client(), NOW);
        prop_assert!(matches!(r, Err(Reject::BadSignature) | Err(Reject::Malformed)), "{r:?}");
    }

    /// Random strings and random well-formed-looking tokens never verify.
    #[test]
    fn random_tokens_never_verify(s in ".{0,120}", raw in proptest::collection::vec(any::<u8>(), CHALLENGE_LEN), counter: u64) {
        let k = keys();
        let g = guard();
        prop_assert!(verify_solution(&k, &s, counter, &client(), NOW, 0, &g).is_err());
        prop_assert!(verify_clearance(&k, &s, &client(), NOW).is_err());
        let mut raw = raw;
        raw[0] = KIND_CHALLENGE_V1;
        let looks_right = URL_SAFE_NO_PAD.encode(&raw);
        prop_assert_eq!(
            verify_solution(&k, &looks_right, counter, &client(), NOW, 0, &g),
            Err(Reject::BadSignature)
        );
        prop_assert!(g.is_empty());
    }

    /// A token issued to one client is refused for a client with another binding.
    #[test]
    fn wrong_binding_is_rejected(a in arb_binding(), b in arb_binding(), nonce: [u8; 16]) {
        prop_assume!(a != b);
        let k = keys();
        let token = Challenge::new(nonce, 0, 0, a, NOW, TTL).sign(&k);
        prop_assert_eq!(verify_solution(&k, &token, 0, &b, NOW, 0, &guard()), Err(Reject::WrongBinding));
        let cookie = issue_clearance(&k, a, nonce, NOW, TTL);
        prop_assert_eq!(verify_clearance(&k, &cookie, &b, NOW), Err(Reject::WrongBinding));
    }

    /// Same /24, any host, same agent: accepted.
    #[test]
    fn same_prefix_any_host_is_accepted(net: [u8; 3], h1: u8, h2: u8, ua: Vec<u8>, nonce: [u8; 16]) {
        let k = keys();
        let at = |h: u8| Binding::new(IpAddr::from([net[0], net[1], net[2], h]), &ua);
        let token = Challenge::new(nonce, 0, 0, at(h1), NOW, TTL).sign(&k);
        prop_assert!(verify_solution(&k, &token, 0, &at(h2), NOW, 0, &guard()).is_ok());
    }

    /// Expired at or after the expiry second, whatever the lifetime.
    #[test]
    fn expired_is_always_rejected(ttl in 0u64..300, late in 0u64..1_000_000, nonce: [u8; 16]) {
        let k = keys();
        let token = Challenge::new(nonce, 0, 0, client(), NOW, ttl).sign(&k);
        prop_assert_eq!(
            verify_solution(&k, &token, 0, &client(), NOW + ttl + late, 0, &guard()),
            Err(Reject::Expired)
        );
        let cookie = issue_clearance(&k, client(), nonce, NOW, ttl);
        prop_assert_eq!(verify_clearance(&k, &cookie, &client(), NOW + ttl + late), Err(Reject::Expired));
    }

    /// A spent challenge is refused the second time, with any counter.
    #[test]
    fn replay_is_rejected(nonce: [u8; 16], again: u64, later in 0u64..TTL) {
        let k = keys();
        let g = guard();
        let token = Challenge::new(nonce, 0, 0, client(), NOW, TTL).sign(&k);
        prop_assert!(verify_solution(&k, &token, 0, &client(), NOW, 0, &g).is_ok());
        prop_assert_eq!(
            verify_solution(&k, &token, again, &client(), NOW + later, 0, &g),
            Err(Reject::Replayed)
        );
    }

    /// Raising the required difficulty above the token's gives TooEasy; editing the token's
    /// difficulty down gives BadSignature.
    #[test]
    fn wrong_difficulty_is_rejected(issued in 0u8..=250, more in 1u8..=5, lowered in 0u8..=255, nonce: [u8; 16]) {
        let k = keys();
        let token = Challenge::new(nonce, issued, 0, client(), NOW, TTL).sign(&k);
        prop_assert_eq!(
            verify_solution(&k, &token, 0, &client(), NOW, issued + more, &guard()),
            Err(Reject::TooEasy)
        );
        prop_assume!(lowered != issued);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[17] = lowered;
        let edited = URL_SAFE_NO_PAD.encode(&raw);
        prop_assert_eq!(
            verify_solution(&k, &edited, 0, &client(), NOW, 0, &guard()),
            Err(Reject::BadSignature)
        );
    }

    /// A counter with fewer zero bits than required is InsufficientWork and does not spend.
    #[test]
    fn fewer_bits_is_insufficient(nonce: [u8; 16], difficulty in 4u8..16, counter in 0u64..1000) {
        let k = keys();
        let g = guard();
        let token = Challenge::new(nonce, difficulty, 0, client(), NOW, TTL).sign(&k);
        prop_assume!(work_bits(&token, counter) < u32::from(difficulty));
        prop_assert_eq!(
            verify_solution(&k, &token, counter, &client(), NOW, 0, &g),
            Err(Reject::InsufficientWork)
        );
        prop_assert!(g.is_empty());
    }
}
