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

/// Why a pin is held: one line of 1 to 500 bytes, no control characters
/// (it is shown on the pin, in refusals and on pages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HoldReason(String);

impl HoldReason {
    pub const MAX_LEN: usize = 500;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.trim().is_empty() {
            return Err(ParseError::new(
                Kind::Reason,
                "is empty; say why the pin is held",
            ));
        }
        if input.len() > Self::MAX_LEN {
            return Err(ParseError::new(
                Kind::Reason,
                format!(
                    "is {} bytes long, at most {} are allowed",
                    input.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(bad) = input.chars().find(|c| c.is_control()) {
            return Err(ParseError::new(
                Kind::Reason,
                format!("contains the control character {bad:?} in {}", quote(input)),
            ));
        }
        Ok(HoldReason(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A link to the CI run that built or promoted an image: an `http(s)://`
/// URL of at most 2048 bytes with no whitespace or control characters, and
/// no credentials (`user:password@`): it is shown to every reader of the
/// history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunUrl(String);

impl RunUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if crate::url::has_credentials(input) {
            // Not quoted: the refused value holds a password.
            return Err(ParseError::new(
                Kind::RunUrl,
                "must not carry credentials (`user:password@`); the value is not shown",
            ));
        }
        let scheme_ok = input.starts_with("https://") || input.starts_with("http://");
        let clean = !input.chars().any(|c| c.is_whitespace() || c.is_control());
        if !scheme_ok || !clean || input.len() > Self::MAX_LEN {
            return Err(ParseError::new(
                Kind::RunUrl,
                format!(
                    "{} must be an http(s) URL of at most {} bytes without spaces",
                    quote(input),
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(RunUrl(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a webhook delivers: an `http://` or `https://` URL with a host, of
/// at most 2048 bytes, without whitespace, control characters or credentials
/// (a secret in the URL would be shown to every admin and kept in logs; the
/// signature is how a receiver knows the sender).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if crate::url::has_credentials(input) {
            return Err(ParseError::new(
                Kind::WebhookUrl,
                "must not carry credentials (`user:password@`); the value is not shown",
            ));
        }
        if input.len() > Self::MAX_LEN {
            return Err(ParseError::new(
                Kind::WebhookUrl,
                format!(
                    "is {} bytes long, at most {} are allowed",
                    input.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        let rest = input
            .strip_prefix("https://")
            .or_else(|| input.strip_prefix("http://"));
        let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        let clean = !input.chars().any(|c| c.is_whitespace() || c.is_control());
        match host {
            Some(host) if !host.is_empty() && !host.starts_with(':') && clean => {
                Ok(WebhookUrl(input.to_owned()))
            }
            _ => Err(ParseError::new(
                Kind::WebhookUrl,
                format!(
                    "{} must be an `http://` or `https://` URL with a host and no spaces",
                    quote(input)
                ),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short provenance label such as a source repository (`team/codex`) or a
/// workflow name: 1 to 256 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    pub const MAX_LEN: usize = 256;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.is_empty()
            || input.len() > Self::MAX_LEN
            || input.chars().any(char::is_control)
            || input.trim() != input
        {
            return Err(ParseError::new(
                Kind::Label,
                format!(
                    "{} must be 1 to {} bytes with no control characters or surrounding spaces",
                    quote(input),
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Label(input.to_owned()))
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

    #[test]
    fn run_urls_and_labels_are_bounded() {
        assert!(RunUrl::parse("https://github.com/team/codex/actions/runs/42").is_ok());
        for bad in [
            "",
            "ftp://x",
            "https://a b",
            "https://x\n",
            "javascript:alert(1)",
        ] {
            assert!(RunUrl::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RunUrl::parse(&format!("https://{}", "a".repeat(2100))).is_err());
        assert!(Label::parse("team/codex").is_ok());
        assert!(Label::parse("publish image").is_ok());
        for bad in ["", " x", "x ", "a\nb", "a\u{7f}"] {
            assert!(Label::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Label::parse(&"x".repeat(257)).is_err());
    }
}
