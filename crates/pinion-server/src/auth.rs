//! Who is calling, and may they do this. The token table is read from the
//! in-memory view (refreshed when the database changes); the decision is made
//! per request.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::sync::Arc;

use pinion_core::{Scope, TemplateName, TokenName};
use pinion_store::TokenRecord;

use crate::error::{ApiError, Code};
use crate::failures::Reason;
use crate::listen::Peer;
use crate::state::AppState;
use crate::token;

/// An authenticated caller: the token's record, shared with the view (no
/// copy per request).
#[derive(Debug, Clone)]
pub struct Caller {
    token: Arc<TokenRecord>,
}

impl Caller {
    /// The caller a page session stands for: its token's record.
    pub(crate) fn from_record(token: Arc<TokenRecord>) -> Caller {
        Caller { token }
    }

    /// The token's name: what `promoted_by` and the audit record.
    pub fn name(&self) -> &TokenName {
        &self.token.name
    }

    /// The token's scope.
    pub fn scope(&self) -> Scope {
        self.token.scope
    }

    /// When the token stops working, if ever.
    pub fn expires_at(&self) -> Option<time::OffsetDateTime> {
        self.token.expires_at
    }

    /// The templates the token is restricted to; `None` for all.
    pub fn templates(&self) -> Option<&[TemplateName]> {
        self.token.templates.as_deref()
    }

    /// 403 unless the token's scope covers `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.token.scope.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has scope `{}`; this needs `{}`",
                self.token.name, self.token.scope, needed
            )))
        }
    }

    /// Whether the token is still active in `view` (not revoked since the
    /// caller authenticated): long-lived streams ask now and then.
    pub fn is_active(&self, view: &crate::view::View) -> bool {
        let now = crate::clock::now();
        view.tokens
            .iter()
            .any(|token| token.secret_hash == self.token.secret_hash && token.is_active_at(now))
    }

    /// Whether the token may touch this template.
    pub fn may_use(&self, template: &TemplateName) -> bool {
        self.templates()
            .is_none_or(|allowed| allowed.contains(template))
    }

    /// 403 unless the token may touch this template.
    pub fn require_template(&self, template: &TemplateName) -> Result<(), ApiError> {
        if self.may_use(template) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` is not allowed to use template `{}`",
                self.token.name, template
            )))
        }
    }
}

impl Caller {
    /// Checks the bearer token of a request against the view's token table.
    /// Two `Authorization` headers are refused (400): which one counts would
    /// be a guess. A failure is counted against the request's source, and
    /// once the source has failed too often it is answered 429 instead of
    /// 401 (see [`crate::failures`]).
    pub fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
        let headers = &parts.headers;
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let header = values.next();
        if values.next().is_some() {
            return Err(ApiError::new(
                Code::AmbiguousAuthorization,
                "the request has more than one `Authorization` header",
            ));
        }
        let failed = |reason: Reason, message: &str| {
            let source = parts.extensions.get::<Peer>().map(|peer| peer.0.ip());
            match state.auth_failures().fail(source, reason) {
                Ok(()) => ApiError::unauthorized(message),
                Err(retry_after) => ApiError::new(
                    Code::TooManyAuthFailures,
                    format!(
                        "too many failed authentications from this address; try again in {retry_after}s"
                    ),
                )
                .with_retry_after(retry_after),
            }
        };
        let header = header.ok_or_else(|| {
            failed(
                Reason::Missing,
                "missing `Authorization: Bearer <token>` header",
            )
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, rest) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                failed(
                    Reason::Malformed,
                    "the `Authorization` header must be `Bearer <token>`",
                )
            })?;
        let presented = token::hash(presented);
        let view = state.view();
        let record = token::find_constant_time(
            &presented,
            view.tokens
                .iter()
                .map(|record| (&record.secret_hash, record)),
        )
        .ok_or_else(|| failed(Reason::Unknown, "unknown or revoked token"))?;
        if !record.is_active_at(crate::clock::now()) {
            return Err(failed(Reason::Expired, "the token has expired"));
        }
        tracing::Span::current().record("actor", record.name.as_str());
        Ok(Caller {
            token: record.clone(),
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::authenticate(parts, state)
    }
}

/// Where a request came from, for handlers that record it (the audit of
/// refused writes); `None` only for a request that did not come through the
/// server's own connection loop.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Source(
            parts.extensions.get::<Peer>().map(|peer| peer.0.ip()),
        ))
    }
}
