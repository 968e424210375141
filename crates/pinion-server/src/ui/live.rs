//! `GET /ui/events`: the change feed for a signed-in page, so that it can
//! follow changes without a reload. It is `/cp/events` as a stream, from
//! now (or from `Last-Event-ID` when the browser reconnects), with the
//! session's token: the same filtering by templates, and the stream ends
//! within seconds of the token's revocation. Without a session: `401`, which
//! makes the browser's `EventSource` give up, and the script then reloads
//! the page (which goes to the login form).

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::session;
use crate::handlers::event_stream;
use crate::state::AppState;

pub async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return unauthorised(),
        Err(error) => return super::error_page(&error, None),
    };
    let mut asked = headers.clone();
    asked.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    match event_stream(State(state), session.caller, asked, RawQuery(None)).await {
        Ok(response) => response,
        Err(error) => super::error_page(&error, None),
    }
}

fn unauthorised() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "no session").into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    super::harden(&mut response);
    response
}
