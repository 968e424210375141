//! Webhook signing secrets: made, shown once, and stored sealed.
//!
//! A signing key cannot be stored hashed (the server must sign with it), so
//! it is stored encrypted (ChaCha20-Poly1305) under the server's own key,
//! which lives in a file beside the database, not in it: a copy of the
//! database alone signs nothing. Each sealed secret is bound to its
//! webhook's name, so one row's secret cannot be moved to another.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a webhook secret, per the Standard Webhooks specification.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// The first byte of a sealed secret: how it was sealed.
const SEALED_V1: u8 = 1;

/// The server's key for sealing secrets: 32 random bytes.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Why a key or a sealed secret was refused. Never shows key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the key must be 64 hex digits (32 bytes)")]
    KeyFormat,
    #[error("the system's random source failed")]
    Random,
    #[error("the sealed secret does not open with this server's key")]
    Open,
}

impl SecretKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<SecretKey, SealError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random)?;
        Ok(SecretKey(key))
    }

    /// A key written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SecretKey, SealError> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SealError::KeyFormat);
        }
        let mut key = [0u8; 32];
        for (slot, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| SealError::KeyFormat)?;
            *slot = u8::from_str_radix(digits, 16).map_err(|_| SealError::KeyFormat)?;
        }
        Ok(SecretKey(key))
    }

    /// The key as 64 hex digits, for the file it is kept in.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| SealError::KeyFormat)
    }

    /// Seals `secret`, bound to `context` (the webhook's name).
    pub fn seal(&self, context: &str, secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = secret.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`SecretKey::seal`] sealed with this key and `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Open)?;
        if version != SEALED_V1 || rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = body.to_vec();
        let opened = self
            .aead()?
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?;
        Ok(opened.to_vec())
    }
}

/// A new webhook signing key (32 random bytes) and its `whsec_…` form.
pub fn new_webhook_secret() -> Result<(Vec<u8>, String), SealError> {
    let mut key = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError::Random)?;
    let shown = format!("{WEBHOOK_SECRET_PREFIX}{}", BASE64.encode(&key));
    Ok((key, shown))
}

/// The Standard Webhooks signature of a delivery: `v1,` and the base64 of
/// HMAC-SHA256 over `<id>.<timestamp>.<body>` with the signing key.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1,{}", BASE64.encode(context.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_context() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("orders", b"signing key").unwrap();
        assert_eq!(key.open("orders", &sealed).unwrap(), b"signing key");
        assert_eq!(key.open("other", &sealed), Err(SealError::Open));
        let other = SecretKey::generate().unwrap();
        assert_eq!(other.open("orders", &sealed), Err(SealError::Open));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open("orders", &tampered), Err(SealError::Open));
        assert!(!sealed.windows(11).any(|w| w == b"signing key"));
    }

    #[test]
    fn keys_round_trip_as_hex_and_do_not_print() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::from_hex(&format!(" {}\n", key.to_hex())).unwrap();
        assert_eq!(again.0, key.0);
        assert_eq!(format!("{key:?}"), "SecretKey(…)");
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63)] {
            assert_eq!(
                SecretKey::from_hex(bad).map(|_| ()),
                Err(SealError::KeyFormat)
            );
        }
    }

    /// The example of the Standard Webhooks specification's test vectors.
    #[test]
    fn signatures_match_the_specification() {
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn webhook_secrets_are_prefixed_base64_of_32_bytes() {
        let (key, shown) = new_webhook_secret().unwrap();
        assert_eq!(key.len(), 32);
        let encoded = shown.strip_prefix(WEBHOOK_SECRET_PREFIX).unwrap();
        assert_eq!(BASE64.decode(encoded).unwrap(), key);
    }
}
