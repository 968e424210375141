//! The rows the store reads and writes, as domain values.

use pinion_core::{Digest, GitSha, Notes, Region, Repository, Scope, TemplateName, TokenName};
use time::OffsetDateTime;

/// A pin: which digest a template runs in a region, and who put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRecord {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub git_sha: Option<GitSha>,
    pub notes: Option<Notes>,
    pub promoted_at: OffsetDateTime,
    pub promoted_by: TokenName,
}

/// A catalog entry: where a template's images live, and whether it takes pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRecord {
    pub name: TemplateName,
    pub repository: Option<Repository>,
    pub pinnable: bool,
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: TokenName,
    pub scope: Scope,
    /// `None`: every template. `Some`: only these.
    pub templates: Option<Vec<TemplateName>>,
    pub secret_hash: [u8; 32],
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// What `create_token` stores.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: TokenName,
    pub scope: Scope,
    pub templates: Option<Vec<TemplateName>>,
    pub secret_hash: [u8; 32],
    pub created_at: OffsetDateTime,
}

/// A request to move a pin, already validated and authorised.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub git_sha: Option<GitSha>,
    pub notes: Option<Notes>,
    pub actor: TokenName,
    pub at: OffsetDateTime,
}

/// What a promotion did. Refusals are values: they are expected answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteOutcome {
    /// The pin was created or moved; `previous` is the digest it left.
    Moved {
        pin: PinRecord,
        previous: Option<Digest>,
    },
    /// The pin already pointed at that digest; nothing was written.
    Unchanged { pin: PinRecord },
    /// The template is not in the catalog.
    UnknownTemplate,
    /// The template is in the catalog but marked not pinnable.
    NotPinnable,
}

/// Everything the read path serves, loaded in one read transaction so the
/// three parts agree with each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Ordered by template, then region.
    pub pins: Vec<PinRecord>,
    /// Ordered by name.
    pub runtimes: Vec<RuntimeRecord>,
    /// Active (unrevoked) tokens only.
    pub tokens: Vec<TokenRecord>,
}
