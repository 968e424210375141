//! Image references: the manifest [`Digest`] a pin holds, the [`Repository`] a
//! template's images live in, and the [`ImageRef`] (`repository@digest`) a
//! provisioner pulls.

use crate::{Kind, ParseError, quote};

/// An OCI manifest digest: `sha256:` and 64 lowercase hex digits, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    const PREFIX: &'static str = "sha256:";
    const HEX_LEN: usize = 64;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let fail = |why: &str| ParseError::new(Kind::Digest, format!("{} {why}", quote(input)));
        let Some(hex) = input.strip_prefix(Self::PREFIX) else {
            return Err(fail(
                "must be `sha256:` followed by 64 lowercase hex digits",
            ));
        };
        if hex.len() != Self::HEX_LEN {
            return Err(fail(&format!(
                "has {} characters after `sha256:`, 64 hex digits are required",
                hex.chars().count()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail(
                "must have only lowercase hex digits (0-9, a-f) after `sha256:`",
            ));
        }
        Ok(Digest(input.to_owned()))
    }

    /// Builds a digest from the 32 bytes of a SHA-256 hash.
    pub fn from_sha256(hash: &[u8; 32]) -> Self {
        let mut text = String::with_capacity(Self::PREFIX.len() + Self::HEX_LEN);
        text.push_str(Self::PREFIX);
        for byte in hash {
            text.push_str(&format!("{byte:02x}"));
        }
        Digest(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, for display in narrow places (first 12 digits).
    pub fn short(&self) -> &str {
        &self.0[Self::PREFIX.len()..Self::PREFIX.len() + 12]
    }
}

/// A repository in an OCI registry, such as
/// `registry.example.com/team/workspace-template-codex` or `localhost:5000/codex`.
/// It names no tag and no digest: those are what a pin decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Repository(String);

impl Repository {
    /// The limit the distribution spec sets for a whole reference name.
    const MAX_LEN: usize = 255;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let fail = |why: &str| ParseError::new(Kind::Repository, format!("{} {why}", quote(input)));
        if input.is_empty() {
            return Err(ParseError::new(Kind::Repository, "must not be empty"));
        }
        if input.len() > Self::MAX_LEN {
            return Err(fail(&format!("is longer than {} bytes", Self::MAX_LEN)));
        }
        if input.contains('@') {
            return Err(fail("must not carry a digest; the pin supplies it"));
        }
        let mut components = input.split('/').peekable();
        let first = components.next().unwrap_or_default();
        let first_is_host = components.peek().is_some()
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if first_is_host {
            check_host(first).map_err(|why| fail(&why))?;
        } else {
            check_path_component(first).map_err(|why| fail(&why))?;
        }
        for component in components {
            check_path_component(component).map_err(|why| fail(&why))?;
        }
        Ok(Repository(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry host (with port) and the path inside it. A repository
    /// without a host part lives on Docker Hub, as with `docker pull`.
    pub fn split_host(&self) -> (&str, &str) {
        match self.0.split_once('/') {
            Some((host, path))
                if host.contains('.') || host.contains(':') || host == "localhost" =>
            {
                (host, path)
            }
            _ => ("docker.io", &self.0),
        }
    }
}

/// `host[:port]`, host being dot-separated labels of a-z, 0-9 and inner `-`.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(format!(
                "has a registry port {} that is not a number from 1 to 65535 (a repository takes no tag)",
                quote(port)
            ));
        }
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !valid {
            return Err(format!(
                "has a registry host {} that is not lowercase dot-separated labels",
                quote(name)
            ));
        }
    }
    Ok(())
}

/// A path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or dashes.
fn check_path_component(component: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "has a path component {} that is not lowercase a-z, 0-9 separated by `.`, `_`, `__` or `-`",
            quote(component)
        ))
    };
    let bytes = component.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() {
        return bad();
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
            index += 1;
            continue;
        }
        let separator_len = match byte {
            b'.' => 1,
            b'_' if bytes.get(index + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[index..].iter().take_while(|b| **b == b'-').count(),
            _ => return bad(),
        };
        index += separator_len;
        let next = bytes.get(index);
        if !next.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return bad();
        }
    }
    Ok(())
}

/// What a provisioner pulls: `<repository>@<digest>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    repository: Repository,
    digest: Digest,
}

impl ImageRef {
    pub fn new(repository: Repository, digest: Digest) -> Self {
        ImageRef { repository, digest }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Parses `repository@sha256:...`.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let Some((repository, digest)) = input.split_once('@') else {
            return Err(ParseError::new(
                Kind::Repository,
                format!("{} must be `repository@sha256:...`", quote(input)),
            ));
        };
        Ok(ImageRef::new(
            Repository::parse(repository)?,
            Digest::parse(digest)?,
        ))
    }
}

macro_rules! display_as_str {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(input: &str) -> Result<Self, ParseError> {
                Self::parse(input)
            }
        }
    )*};
}
display_as_str!(Digest, Repository);

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_a_sha256_digest() {
        let text = format!("sha256:{HEX}");
        let digest = Digest::parse(&text).unwrap();
        assert_eq!(digest.as_str(), text);
        assert_eq!(digest.short(), "0123456789ab");
    }

    #[test]
    fn refuses_hostile_digests() {
        let upper = format!("sha256:{}", HEX.to_uppercase());
        let short = format!("sha256:{}", &HEX[..63]);
        let long = format!("sha256:{HEX}0");
        let sha512 = format!("sha512:{HEX}{HEX}");
        let spaced = format!(" sha256:{HEX}");
        let trailing = format!("sha256:{HEX} ");
        let newline = format!("sha256:{HEX}\n");
        let inner_newline = format!("sha256:{}\n{}", &HEX[..32], &HEX[33..]);
        let nul = format!("sha256:{}\0", &HEX[..63]);
        let no_prefix = HEX.to_owned();
        let upper_prefix = format!("SHA256:{HEX}");
        let lookalike = format!("sha256:{}а", &HEX[..63]); // Cyrillic 'а'
        let non_hex = format!("sha256:{}g", &HEX[..63]);
        let huge = format!("sha256:{}", "a".repeat(10_000));
        let quote_sql = format!("sha256:{}'", &HEX[..63]);
        let traversal = format!("sha256:../../{}", &HEX[..58]);
        let with_repo = format!("codex@sha256:{HEX}");
        for bad in [
            "",
            "sha256:",
            "latest",
            upper.as_str(),
            short.as_str(),
            long.as_str(),
            sha512.as_str(),
            spaced.as_str(),
            trailing.as_str(),
            newline.as_str(),
            inner_newline.as_str(),
            nul.as_str(),
            no_prefix.as_str(),
            upper_prefix.as_str(),
            lookalike.as_str(),
            non_hex.as_str(),
            huge.as_str(),
            quote_sql.as_str(),
            traversal.as_str(),
            with_repo.as_str(),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert_eq!(err.kind(), Kind::Digest);
            let message = err.to_string();
            assert!(
                !message.contains('\n') && !message.contains('\0'),
                "{message}"
            );
            assert!(message.len() < 400, "{message}");
        }
    }

    #[test]
    fn digest_from_hash_bytes() {
        let digest = Digest::from_sha256(&[0xab; 32]);
        assert_eq!(digest.as_str(), format!("sha256:{}", "ab".repeat(32)));
    }

    #[test]
    fn accepts_repositories() {
        for ok in [
            "codex",
            "team/codex",
            "registry.example.com/team/workspace-template-codex",
            "localhost:5000/codex",
            "localhost/codex",
            "127.0.0.1:5000/a/b/c",
            "ghcr.io/org/my_image",
            "ghcr.io/org/my__image",
            "ghcr.io/org/my---image.v2",
        ] {
            assert_eq!(Repository::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_hostile_repositories() {
        let huge = "a/".repeat(5_000) + "a";
        for bad in [
            "",
            " codex",
            "codex ",
            "Codex",
            "codex:latest",
            "registry.example.com/codex:latest",
            &format!("codex@sha256:{HEX}"),
            "team//codex",
            "/codex",
            "codex/",
            "../codex",
            "team/../codex",
            "co\ndex",
            "co\0dex",
            "codex'--",
            "сodex",
            "-codex",
            "codex_",
            "codex___x",
            "localhost:99999/codex",
            "localhost:/codex",
            "Registry.example.com/codex",
            huge.as_str(),
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splits_host_from_path() {
        let repo = Repository::parse("localhost:5000/team/codex").unwrap();
        assert_eq!(repo.split_host(), ("localhost:5000", "team/codex"));
        let hub = Repository::parse("library/ubuntu").unwrap();
        assert_eq!(hub.split_host(), ("docker.io", "library/ubuntu"));
    }

    #[test]
    fn image_ref_round_trips() {
        let text = format!("localhost:5000/codex@sha256:{HEX}");
        let image = ImageRef::parse(&text).unwrap();
        assert_eq!(image.to_string(), text);
        assert_eq!(image.repository().as_str(), "localhost:5000/codex");
        assert!(ImageRef::parse("localhost:5000/codex:latest").is_err());
    }
}
