//! Image names as users type them: `repository[:tag]` or `repository@digest`.

use pinion_core::{Digest, Repository};

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(input: &str) -> Result<Tag, String> {
        let bytes = input.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 128
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Tag(input.to_owned()))
        } else {
            Err(format!(
                "tag `{}` must be 1 to 128 of A-Z, a-z, 0-9, `_`, `.`, `-`, not starting with `.` or `-`",
                input.chars().take(40).collect::<String>().escape_debug()
            ))
        }
    }

    pub fn latest() -> Tag {
        Tag("latest".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to look up in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// The form used in the manifest URL.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(tag) => tag.as_str(),
            Reference::Digest(digest) => digest.as_str(),
        }
    }
}

/// `repository:tag`, `repository@sha256:…`, or `repository` (tag `latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub repository: Repository,
    pub reference: Reference,
}

impl ImageName {
    pub fn parse(input: &str) -> Result<ImageName, String> {
        if let Some((repository, digest)) = input.split_once('@') {
            return Ok(ImageName {
                repository: Repository::parse(repository).map_err(|err| err.to_string())?,
                reference: Reference::Digest(Digest::parse(digest).map_err(|err| err.to_string())?),
            });
        }
        // A `:` after the last `/` is a tag; one before it is a registry port.
        let last_slash = input.rfind('/').map_or(0, |index| index + 1);
        let (repository, tag) = match input[last_slash..].rfind(':') {
            Some(colon) => {
                let split = last_slash + colon;
                (&input[..split], Tag::parse(&input[split + 1..])?)
            }
            None => (input, Tag::latest()),
        };
        Ok(ImageName {
            repository: Repository::parse(repository).map_err(|err| err.to_string())?,
            reference: Reference::Tag(tag),
        })
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            Reference::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

/// `os/arch[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(input: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = input.split('/').collect();
        let valid_part = |part: &&str| {
            !part.is_empty()
                && part.len() <= 32
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid_part) {
            return Err(format!(
                "platform `{}` must be os/arch or os/arch/variant, e.g. linux/amd64",
                input.chars().take(40).collect::<String>().escape_debug()
            ));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|variant| (*variant).to_owned()),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_names() {
        let tagged = ImageName::parse("localhost:5000/team/codex:v1.2").unwrap();
        assert_eq!(tagged.repository.as_str(), "localhost:5000/team/codex");
        assert_eq!(
            tagged.reference,
            Reference::Tag(Tag::parse("v1.2").unwrap())
        );
        let bare = ImageName::parse("localhost:5000/codex").unwrap();
        assert_eq!(bare.reference, Reference::Tag(Tag::latest()));
        let pinned = ImageName::parse(&format!("codex@sha256:{}", "a".repeat(64))).unwrap();
        assert!(matches!(pinned.reference, Reference::Digest(_)));
        for bad in [
            "",
            "codex:",
            "codex:-x",
            "Codex:latest",
            "codex@sha256:abc",
            "codex:a b",
            "codex:../x",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_platforms() {
        let platform = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(platform.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }
}
