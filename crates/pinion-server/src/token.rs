//! Token secrets: how they are made and how they are recognised.
//!
//! A secret is `pinion_` followed by 64 hex digits (256 random bits). The
//! prefix lets secret scanners find leaked ones. Only the SHA-256 of a secret
//! is stored; a slow password hash is not needed because the secret is random
//! and long, not chosen by a person.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The prefix every secret carries.
pub const SECRET_PREFIX: &str = "pinion_";

/// A freshly generated secret. It is shown once, to whoever created it.
pub struct NewSecret {
    pub secret: String,
    pub hash: [u8; 32],
}

/// Makes a new secret from the operating system's random source.
pub fn generate() -> Result<NewSecret, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 64);
    secret.push_str(SECRET_PREFIX);
    for byte in bytes {
        secret.push_str(&format!("{byte:02x}"));
    }
    let hash = hash(&secret);
    Ok(NewSecret { secret, hash })
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Finds the entry whose hash equals `presented`, comparing against every
/// entry in constant time and never stopping early, so response time says
/// nothing about how close a guess was or where a match sits.
pub fn find_constant_time<'a, T>(
    presented: &[u8; 32],
    entries: impl IntoIterator<Item = (&'a [u8; 32], T)>,
) -> Option<T> {
    let mut found = None;
    for (stored, value) in entries {
        let equal: bool = stored.ct_eq(presented).into();
        if equal && found.is_none() {
            found = Some(value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let one = generate().unwrap();
        let two = generate().unwrap();
        assert!(one.secret.starts_with(SECRET_PREFIX));
        assert_eq!(one.secret.len(), SECRET_PREFIX.len() + 64);
        assert_ne!(one.secret, two.secret);
        assert_eq!(hash(&one.secret), one.hash);
        assert_ne!(one.hash, two.hash);
    }

    #[test]
    fn finds_only_the_matching_entry() {
        let entries = [([1u8; 32], "a"), ([2u8; 32], "b"), ([3u8; 32], "c")];
        let iter = || entries.iter().map(|(hash, name)| (hash, *name));
        assert_eq!(find_constant_time(&[2; 32], iter()), Some("b"));
        assert_eq!(find_constant_time(&[9; 32], iter()), None);
    }
}
