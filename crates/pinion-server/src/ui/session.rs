//! Page sessions. The login form takes an API token and, when it is
//! active, makes a session: 32 random bytes, sent to the browser as the
//! `pinion_session` cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`,
//! `Secure` over TLS) and stored only as their SHA-256, with the SHA-256 of
//! the token. The cookie never holds the token. Every request looks the
//! session up, and the session works only while its token does: a revoked
//! or expired token ends its sessions at once. Forms that change something
//! carry a CSRF token derived from the session id, which only the holder of
//! the cookie (and the server, which sees it) can compute.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::html;
use pinion_store::SessionRecord;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::{Form, html_page, layout, redirect};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::failures::Reason;
use crate::state::AppState;
use crate::token;

/// The cookie's name.
pub const COOKIE_NAME: &str = "pinion_session";

/// A signed-in page visitor: the token's caller, and the session's CSRF
/// token.
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    id_hash: [u8; 32],
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|presented| {
            presented.len() == self.csrf.len()
                && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
        })
    }
}

/// The CSRF token of a session id.
fn csrf_of(id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"pinion-ui-csrf\0");
    hasher.update(id.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// The session id the request's cookie holds, if it has one of the right
/// shape (43 characters of unpadded base64url).
fn presented_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|value| {
            value.len() == 43
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The request's session, if it has one that has not ended and whose token
/// still works; an error only when the store could not be asked.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(id) = presented_id(headers) else {
        return Ok(None);
    };
    let id_hash = token::hash(&id);
    let now = crate::clock::now();
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let Some(record) = state
        .query(deadline, move |store| store.session(&id_hash, now))
        .await?
    else {
        return Ok(None);
    };
    let view = state.view();
    let Some(token) = token::find_constant_time(
        &record.token_hash,
        view.tokens.iter().map(|token| (&token.secret_hash, token)),
    ) else {
        return Ok(None);
    };
    if !token.is_active_at(now) {
        return Ok(None);
    }
    tracing::Span::current().record("actor", token.name.as_str());
    Ok(Some(Session {
        caller: Caller::from_record(token.clone()),
        csrf: csrf_of(&id),
        id_hash,
    }))
}

/// The `Set-Cookie` value that ends the cookie in the browser.
fn cleared_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("pinion_session=; Path=/ui; Max-Age=0"))
}

/// Where to go after logging in: a page path under `/ui`, nothing else
/// (no other host, no scheme, no `//`), else `/ui`.
pub fn safe_next(next: Option<&str>) -> String {
    next.filter(|next| {
        (*next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?"))
            && !next.contains("//")
            && !next.contains("..")
            && !next.contains('\\')
            && next.len() <= 512
            && next.bytes().all(|b| b.is_ascii_graphic())
    })
    .unwrap_or("/ui")
    .to_owned()
}

/// `GET /ui/login`: the form.
pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let next = super::query_value(uri.query(), "next");
    // Signed in already: on to the page.
    if let Ok(Some(_)) = current(&state, &headers).await {
        return redirect(&safe_next(next.as_deref()));
    }
    login_page(StatusCode::OK, &safe_next(next.as_deref()), None)
}

fn login_page(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    html_page(
        status,
        layout(
            "Sign in",
            None,
            false,
            html! {
                h1 { "Sign in to Pinion" }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                form method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next);
                    p {
                        label for="token" { "API token" }
                        " "
                        input #token type="password" name="token" required autocomplete="off" autofocus;
                    }
                    p.hint { "Any token works; what you may do follows its scope. The token is not kept in your browser: a session cookie is." }
                    p { button type="submit" { "Sign in" } }
                }
            },
        ),
    )
}

/// Whether a browser's `Origin` (sent with every form post) is this
/// server: a login form posted from another site would sign the victim in
/// as the attacker. `Sec-Fetch-Site` when the browser sends it, else
/// `Origin`; neither (not a browser, or an old one): allowed, there is
/// nothing to judge by.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    // Browsers that say where a request comes from, say it plainly.
    if let Some(site) = headers
        .get("sec-fetch-site")
        .and_then(|site| site.to_str().ok())
    {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Some(origin_host) = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'))
    else {
        return false;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str));
    host.is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

/// `POST /ui/login`: a token in, a session cookie out.
pub async fn login(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    if !same_origin(&headers, &uri) {
        return super::error_page(
            &ApiError::new(
                crate::error::Code::Forbidden,
                "the sign-in form was posted from another site; nothing was done",
            ),
            None,
        );
    }
    // The one form a stranger may post: read by the deadline like any
    // other, so a body that never arrives holds nothing for long.
    let form = match Deadline::for_request(&headers, state.settings().request_timeout) {
        Ok(deadline) => Form::read(body, state.settings().body_limit, &deadline).await,
        Err(error) => Err(error),
    };
    let form = match form {
        Ok(form) => form,
        Err(error) => return super::error_page(&error, None),
    };
    let next = safe_next(form.get("next"));
    let presented = form.get("token").map(str::trim).unwrap_or_default();
    if presented.is_empty() {
        return login_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            Some("Enter a token."),
        );
    }
    let presented_hash = token::hash(presented);
    let now = crate::clock::now();
    let view = state.view();
    let found = token::find_constant_time(
        &presented_hash,
        view.tokens.iter().map(|token| (&token.secret_hash, token)),
    )
    .filter(|token| token.is_active_at(now))
    .cloned();
    let Some(token) = found else {
        let message = match state.auth_failures().fail(source.0, Reason::Unknown) {
            Ok(()) => "That token is unknown, revoked or expired.".to_owned(),
            Err(retry_after) => {
                format!("Too many failed sign-ins from this address; try again in {retry_after} s.")
            }
        };
        return login_page(StatusCode::UNAUTHORIZED, &next, Some(&message));
    };
    drop(view);
    let mut bytes = [0u8; 32];
    if let Err(err) = getrandom::fill(&mut bytes) {
        return super::error_page(
            &ApiError::internal(format!("no randomness for a session: {err}")),
            None,
        );
    }
    let id = URL_SAFE_NO_PAD.encode(bytes);
    let lifetime = state.settings().session_lifetime;
    let mut expires = now + lifetime;
    if let Some(token_expires) = token.expires_at {
        expires = expires.min(token_expires);
    }
    let record = SessionRecord {
        id_hash: token::hash(&id),
        token_hash: token.secret_hash,
        created_ms: crate::clock::unix_ms(now),
        expires_ms: crate::clock::unix_ms(expires),
    };
    let deadline = match Deadline::for_request(&headers, state.settings().request_timeout) {
        Ok(deadline) => deadline,
        Err(error) => return super::error_page(&error, None),
    };
    if let Err(error) = state.create_session(record, deadline).await {
        return super::error_page(&error, None);
    }
    tracing::info!(token = %token.name, "page session started");
    let max_age = (expires - now).whole_seconds().max(0);
    let secure = if state.settings().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let mut response = redirect(&next);
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    )) {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// `POST /ui/logout`: ends the session (its CSRF token required) and the
/// cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let session = match current(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return redirect("/ui/login"),
        Err(error) => return super::error_page(&error, None),
    };
    let form = match Deadline::for_request(&headers, state.settings().request_timeout) {
        Ok(deadline) => Form::read(body, state.settings().body_limit, &deadline).await,
        Err(error) => Err(error),
    };
    let form = match form {
        Ok(form) => form,
        Err(error) => return super::error_page(&error, Some(&session)),
    };
    if !session.csrf_matches(form.get("csrf")) {
        return super::error_page(&super::csrf_refusal(), Some(&session));
    }
    let deadline = match Deadline::for_request(&headers, state.settings().request_timeout) {
        Ok(deadline) => deadline,
        Err(error) => return super::error_page(&error, Some(&session)),
    };
    if let Err(error) = state.end_session(session.id_hash, deadline).await {
        return super::error_page(&error, Some(&session));
    }
    tracing::info!(token = %session.caller.name(), "page session ended");
    let mut response = redirect("/ui/login");
    response
        .headers_mut()
        .append(SET_COOKIE, cleared_cookie(state.settings().secure_cookies));
    response
}

/// A page that needs a session and has none: to the login form, and back
/// here afterwards.
pub fn to_login(path_and_query: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
    let mut response = redirect(&format!("/ui/login?next={next}"));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.into_response()
}
