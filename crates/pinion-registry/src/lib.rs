//! Pinion's OCI distribution client. This is the only crate that knows the
//! registry protocol: manifest lookups by tag or digest, bearer-token and
//! basic auth, credentials from the docker config file.
//!
//! The registry is believed only when it can be checked: every manifest is
//! fetched whole (a few KiB, capped) and hashed here; a `Docker-Content-Digest`
//! header that disagrees with the body, or a body that does not hash to the
//! digest asked for, is an error, not an answer.
//!
//! Why not `oci-client`: it resolves digests from the header of a HEAD
//! request without hashing a body, and brings its own HTTP and auth stack;
//! the part Pinion needs is small enough to own and test against a real
//! registry.

mod auth;
mod client;
mod credentials;
mod image;

pub use client::{Manifest, Registry, RegistrySettings, TagAnswer, resolve_tags};
pub use credentials::Credentials;
pub use image::{ImageName, Platform, Reference, Tag};

/// Why a lookup failed. Messages never contain a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The repository, tag or digest does not exist.
    #[error("{0} not found in the registry")]
    NotFound(String),
    /// The registry refused the credentials, or demanded some and none were configured.
    #[error("registry `{host}` refused access: {reason}")]
    Unauthorized { host: String, reason: String },
    /// The registry could not be reached or failed (network, timeout, 5xx).
    #[error("registry `{host}` is unavailable: {reason}")]
    Unavailable { host: String, reason: String },
    /// The registry answered something that cannot be believed or used.
    #[error("registry `{host}` gave an invalid answer: {reason}")]
    Invalid { host: String, reason: String },
    /// Local configuration is wrong (an unreadable docker config, say).
    #[error("{0}")]
    Config(String),
}
