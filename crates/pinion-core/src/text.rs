//! Free-ish provenance text that travels with a promotion: the commit it was
//! built from and a human note.

use crate::{Kind, ParseError, quote};

/// A git commit id, abbreviated or full: 4 to 64 hex digits (SHA-1 or
/// SHA-256 object names). Stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GitSha(String);

impl GitSha {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let valid = (4..=64).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(ParseError::new(
                Kind::GitSha,
                format!("{} must be 4 to 64 hex digits", quote(input)),
            ));
        }
        Ok(GitSha(input.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A note on a promotion: at most 1024 bytes, no control characters other
/// than newline and tab (so it cannot forge log lines with `\r` or smuggle NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notes(String);

impl Notes {
    pub const MAX_LEN: usize = 1024;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.len() > Self::MAX_LEN {
            return Err(ParseError::new(
                Kind::Notes,
                format!(
                    "are {} bytes long, at most {} are allowed",
                    input.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(bad) = input
            .chars()
            .find(|c| c.is_control() && *c != '\n' && *c != '\t')
        {
            return Err(ParseError::new(
                Kind::Notes,
                format!("contain the control character {bad:?} in {}", quote(input)),
            ));
        }
        Ok(Notes(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sha_is_hex_and_lowercased() {
        assert_eq!(GitSha::parse("abc1234").unwrap().as_str(), "abc1234");
        assert_eq!(GitSha::parse("ABC1234").unwrap().as_str(), "abc1234");
        assert!(GitSha::parse(&"a".repeat(40)).is_ok());
        for bad in [
            "",
            "abc",
            "abc123g",
            " abc1234",
            "abc1234\n",
            &"a".repeat(65),
            "'; --",
        ] {
            assert!(GitSha::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notes_are_bounded_and_printable() {
        assert!(Notes::parse("auto-promote via publish-image.yml").is_ok());
        assert!(Notes::parse("line one\nline two\tTAB").is_ok());
        assert!(Notes::parse("").is_ok());
        assert!(Notes::parse(&"x".repeat(1024)).is_ok());
        assert!(Notes::parse(&"x".repeat(1025)).is_err());
        assert!(Notes::parse("a\0b").is_err());
        assert!(Notes::parse("a\rforged log line").is_err());
        assert!(Notes::parse("\u{1b}[31mred").is_err());
    }
}
