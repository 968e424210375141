//! Tokens over HTTP (scope `admin`): make, list and revoke API tokens
//! without access to the database. A token never grants more than the token
//! that makes it: no higher scope, no template it may not use, no later
//! expiry. Secrets are shown once, in the answer that made them.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::{TokenCreated, TokenInfo, TokenList, TokenRequest};
use pinion_core::{Scope, TemplateName, TokenName};
use pinion_store::{NewToken, TokenRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Attempt, audited, format_time, now, parse_field, read_json};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::state::AppState;
use crate::token;

/// Whether `caller` may see and revoke `token`: it grants nothing the
/// caller does not have.
fn within(caller: &Caller, token: &TokenRecord) -> bool {
    match (caller.templates(), &token.templates) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|template| mine.contains(template)),
    }
}

fn info(token: &TokenRecord, now: OffsetDateTime) -> TokenInfo {
    TokenInfo {
        name: token.name.to_string(),
        scope: token.scope.as_str().to_owned(),
        templates: token
            .templates
            .as_ref()
            .map(|names| names.iter().map(ToString::to_string).collect()),
        created_at: format_time(token.created_at),
        created_by: token.created_by.as_ref().map(ToString::to_string),
        expires_at: token.expires_at.map(format_time),
        expired: !token.is_active_at(now),
    }
}

/// `POST /cp/admin/tokens`: `201 {"token", "secret"}`.
pub async fn create_token(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("create_token", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Admin)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let request: TokenRequest = read_json(body, &headers, state.settings().body_limit, &deadline).await?;
        let name = parse_field(Field::TokenName, TokenName::parse(&request.name))?;
        let scope = parse_field(Field::Scope, Scope::parse(&request.scope))?;
        let templates = match &request.templates {
            None => None,
            Some(names) if names.is_empty() => {
                return Err(ApiError::new(
                    Code::InvalidTemplateName,
                    "`templates` must name at least one template, or be left out for every template",
                ));
            }
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| parse_field(Field::Templates, TemplateName::parse(name)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let at = now();
        let expires_at = match &request.expires_at {
            None => None,
            Some(text) => {
                let expires = OffsetDateTime::parse(text, &Rfc3339).map_err(|err| {
                    ApiError::new(
                        Code::InvalidExpiresAt,
                        format!("`expires_at` must be an RFC 3339 time: {err}"),
                    )
                })?;
                if expires <= at {
                    return Err(ApiError::new(
                        Code::InvalidExpiresAt,
                        "`expires_at` must be in the future",
                    ));
                }
                Some(expires)
            }
        };
        // Never more than the token that makes it.
        if !caller.scope().allows(scope) {
            return Err(ApiError::forbidden(format!(
                "token `{}` has scope `{}` and cannot make a token of scope `{scope}`",
                caller.name(),
                caller.scope()
            )));
        }
        let proposed = TokenRecord {
            name: name.clone(),
            scope,
            templates: templates.clone(),
            secret_hash: [0; 32],
            created_at: at,
            revoked_at: None,
            created_by: Some(caller.name().clone()),
            expires_at,
        };
        if !within(&caller, &proposed) {
            return Err(ApiError::forbidden(format!(
                "token `{}` is restricted to templates and cannot make a token for more of them",
                caller.name()
            )));
        }
        if let Some(limit) = caller.expires_at() {
            if expires_at.is_none_or(|expires| expires > limit) {
                return Err(ApiError::forbidden(format!(
                    "token `{}` expires at {}; a token it makes must expire no later",
                    caller.name(),
                    format_time(limit)
                )));
            }
        }
        let secret = token::generate()
            .map_err(|err| ApiError::internal(format!("the system random source failed: {err}")))?;
        let created = state
            .create_token(
                NewToken {
                    name: name.clone(),
                    scope,
                    templates,
                    secret_hash: secret.hash,
                    created_at: at,
                    created_by: Some(caller.name().clone()),
                    expires_at,
                },
                deadline,
            )
            .await?;
        if !created {
            return Err(ApiError::new(
                Code::TokenNameTaken,
                format!("an active token is named `{name}` already; revoke it first"),
            ));
        }
        // Usable at once on this server (other replicas: within a second).
        state.refresh_view().await;
        tracing::info!(token = %name, scope = %scope, actor = %caller.name(), "token created");
        Ok((
            StatusCode::CREATED,
            Json(TokenCreated {
                token: info(&proposed, at),
                secret: secret.secret,
            }),
        )
            .into_response())
    }
    .await;
    audited(&state, attempt, result).await
}

/// `GET /cp/admin/tokens`: the tokens not revoked (expired ones marked),
/// without secrets; a restricted token sees only tokens within its grant.
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Scope::Admin)?;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let tokens = state.query(deadline, |store| store.tokens()).await?;
    let now = now();
    Ok(Json(TokenList {
        tokens: tokens
            .iter()
            .filter(|token| token.revoked_at.is_none() && within(&caller, token))
            .map(|token| info(token, now))
            .collect(),
    }))
}

/// `DELETE /cp/admin/tokens/{name}`: `204`, or `404 token_not_found` (also
/// for a token outside the caller's grant).
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("revoke_token", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Admin)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let name = parse_field(Field::TokenName, TokenName::parse(&name))?;
        let missing = || {
            ApiError::new(
                Code::TokenNotFound,
                format!("no active token `{name}` (or not one this token may revoke)"),
            )
        };
        let tokens = state.query(deadline, |store| store.tokens()).await?;
        let target = tokens
            .iter()
            .find(|token| token.name == name && token.revoked_at.is_none())
            .ok_or_else(missing)?;
        if !within(&caller, target) {
            return Err(missing());
        }
        if !state
            .revoke_token(name.clone(), caller.name().clone(), now(), deadline)
            .await?
        {
            return Err(missing());
        }
        state.refresh_view().await;
        tracing::info!(token = %name, actor = %caller.name(), "token revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    audited(&state, attempt, result).await
}
