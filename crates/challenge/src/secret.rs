//! Signing secrets and the current/previous pair used for rotation.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The smallest secret we accept, in bytes. HMAC-SHA256 gains nothing from longer keys (up to the
/// 64-byte block size), but a shorter one would be guessable offline from a single token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a secret could not be built. The messages never echo the offending input, because that
/// input is (a near miss of) the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Fewer than [`MIN_SECRET_BYTES`] bytes.
    #[error("secret is too short: need at least {MIN_SECRET_BYTES} bytes (64 hex digits)")]
    TooShort,
    /// `from_hex` was given something that is not an even number of hex digits.
    #[error("secret is not valid hex (expected an even number of 0-9, a-f digits)")]
    NotHex,
}

/// An HMAC-SHA256 signing secret, at least [`MIN_SECRET_BYTES`] long.
///
/// Several shield nodes may share one secret, so a token issued by one node verifies on another
/// with no shared state. The type holds only the keyed HMAC state (which is as sensitive as the
/// key) and deliberately has no `Display`; its `Debug` prints `Secret(…)` and nothing else, so a
/// stray `{:?}` of a config or of [`Keys`] cannot leak it into a log.
#[derive(Clone)]
pub struct Secret {
    /// HMAC state with the key already absorbed; cloning it per token saves hashing the key twice
    /// on every sign and verify.
    mac: HmacSha256,
}

impl Secret {
    /// Builds a secret from raw bytes (at least [`MIN_SECRET_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        // `new_from_slice` only fails for fixed-size-key MACs; HMAC takes any length.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| SecretError::TooShort)?;
        Ok(Self { mac })
    }

    /// Builds a secret from hex digits (upper or lower case; surrounding whitespace is ignored so
    /// that a secret file ending in a newline works).
    pub fn from_hex(hex: &str) -> Result<Self, SecretError> {
        let hex = hex.trim().as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err(SecretError::NotHex);
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            let hi = hex_digit(pair[0]).ok_or(SecretError::NotHex)?;
            let lo = hex_digit(pair[1]).ok_or(SecretError::NotHex)?;
            bytes.push(hi << 4 | lo);
        }
        let secret = Self::from_bytes(&bytes);
        bytes.fill(0);
        secret
    }

    /// Builds a fresh secret from 32 random bytes that the caller draws from the operating
    /// system's generator. This crate does no IO, so it cannot draw them itself.
    pub fn generate(random: [u8; 32]) -> Self {
        let mut random = random;
        let secret = Self::from_bytes(&random).expect("32 bytes is the minimum length");
        random.fill(0);
        secret
    }

    /// A fresh HMAC instance keyed with this secret.
    pub(crate) fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The secrets a node signs and verifies with.
///
/// New tokens are always signed with `current`. Verification tries `current` and then `previous`,
/// so rotating works without locking anyone out: deploy the new secret as `current` with the old
/// one as `previous` on every node, wait at least the longest clearance lifetime, then drop
/// `previous`.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Signs every new token; verifies too.
    pub current: Secret,
    /// Only verifies, during a rotation.
    pub previous: Option<Secret>,
}

impl Keys {
    /// Keys with a single secret and no rotation in progress.
    pub fn new(current: Secret) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// Keys in the middle of a rotation from `previous` to `current`.
    pub fn rotating(current: Secret, previous: Secret) -> Self {
        Self {
            current,
            previous: Some(previous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn hex_round_trip_and_errors() {
        assert!(Secret::from_hex(HEX).is_ok());
        assert!(Secret::from_hex(&format!("  {}\n", HEX.to_uppercase())).is_ok());
        assert_eq!(
            Secret::from_hex(&HEX[..62]).unwrap_err(),
            SecretError::TooShort
        );
        assert_eq!(
            Secret::from_hex(&HEX[..63]).unwrap_err(),
            SecretError::NotHex
        );
        let bad = format!("{}zz", &HEX[..62]);
        assert_eq!(Secret::from_hex(&bad).unwrap_err(), SecretError::NotHex);
        assert_eq!(
            Secret::from_bytes(&[7; 31]).unwrap_err(),
            SecretError::TooShort
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let keys = Keys::rotating(Secret::from_hex(HEX).unwrap(), Secret::generate([0xab; 32]));
        let shown = format!("{keys:?} {:#?}", keys);
        assert!(!shown.to_lowercase().contains("00112233"), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}"); // 0xab as decimal bytes
        assert!(shown.contains("Secret(…)"));
    }

    #[test]
    fn errors_do_not_echo_input() {
        let bad = format!("{}zz", &HEX[..62]);
        let msg = Secret::from_hex(&bad).unwrap_err().to_string();
        assert!(!msg.contains("0011"), "{msg}");
    }
}
