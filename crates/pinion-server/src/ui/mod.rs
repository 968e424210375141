//! The page: the fleet at a glance (`/ui`), one pin's page
//! (`/ui/pins/{template}/{region}`), the login form and the forms that
//! change a pin. Server-rendered HTML from maud templates compiled into the
//! binary (escaped by construction); every asset is served from the binary
//! too, under a strict `Content-Security-Policy`. The page works without
//! JavaScript: every control is a link or a form, and the page refreshes
//! itself (`<noscript>` meta refresh). With JavaScript, `live.js` follows
//! the event stream (`/ui/events`, the session's view of `/cp/events`) and
//! swaps the page's content when something changes, without a reload.

mod live;
mod matrix;
mod pin;
mod session;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::deadline::Deadline;
use crate::error::{ApiError, Code, ContractBody};
use crate::state::AppState;
use session::Session;

/// Every route of the page.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(matrix::page))
        .route("/ui/", get(|| async { redirect("/ui") }))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/events", get(live::events))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/pins/{template}/{region}", get(pin::page))
        .route("/ui/pins/{template}/{region}/rollback", post(pin::rollback))
        .route("/ui/pins/{template}/{region}/hold", post(pin::hold))
        .route("/ui/pins/{template}/{region}/release", post(pin::release))
        .route(
            "/ui/pins/{template}/{region}/abort-canary",
            post(pin::abort_canary),
        )
        .route("/ui/{*rest}", get(not_found))
}

/// Any other page path: a page that says so.
async fn not_found() -> Response {
    error_page(
        &ApiError::new(Code::NotFound, "there is no such page"),
        None,
    )
}

/// No script, style, image or connection but the server's own; no frames,
/// no plugins, forms only to the server itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("assets/pinion.css");
const SCRIPT: &str = include_str!("assets/live.js");

/// The headers every page answer carries.
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // Written on purpose: the error normaliser leaves it alone.
    response.extensions_mut().insert(ContractBody);
}

/// An HTML answer.
fn html_page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    harden(&mut response);
    response
}

/// `303 See Other` to a path of the page.
fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, location);
    }
    harden(&mut response);
    response
}

/// An error as a page, with the API's status and message.
fn error_page(error: &ApiError, session: Option<&Session>) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(code = error.code.as_str(), message = %error.message, "page answered with a server error");
    }
    let title = status.canonical_reason().unwrap_or("Error");
    html_page(
        status,
        layout(
            title,
            session,
            false,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.problem role="alert" { (error.message) }
                p { "Code: " code { (error.code.as_str()) } }
                p { a href="/ui" { "Back to the fleet" } }
            },
        ),
    )
}

/// A form that changes something came without its session's CSRF token.
fn csrf_refusal() -> ApiError {
    ApiError::new(
        Code::Forbidden,
        "the form's CSRF token is missing or does not match this session; reload the page and try again; nothing was changed",
    )
}

/// The page's frame: header with who is signed in, and the content; a
/// `live` page follows the change feed (or, without JavaScript, refreshes).
fn layout(title: &str, session: Option<&Session>, live: bool, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Pinion" }
                link rel="stylesheet" href="/ui/assets/pinion.css";
                @if live && session.is_some() {
                    // Without JavaScript the page refreshes itself.
                    noscript { meta http-equiv="refresh" content="15"; }
                    script src="/ui/assets/live.js" defer {}
                }
            }
            body {
                a.skip href="#content" { "Skip to content" }
                header {
                    nav aria-label="Pinion" {
                        a href="/ui" { strong { "Pinion" } }
                        @if let Some(session) = session {
                            span.who {
                                "Signed in as " code { (session.caller.name().as_str()) }
                                " (" (session.caller.scope().as_str()) ")"
                            }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #content { (content) }
            }
        }
    }
}

/// `GET /ui/assets/{file}`: the stylesheet and the script.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "pinion.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => {
            return html_page(StatusCode::NOT_FOUND, html! { p { "No such asset." } });
        }
    };
    let mut response = ([(CONTENT_TYPE, kind)], body).into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    harden(&mut response);
    response
}

/// A form body (`application/x-www-form-urlencoded`), read up to a limit
/// and by the request's deadline, as the API reads its bodies.
struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    async fn read(body: Body, limit: usize, deadline: &Deadline) -> Result<Form, ApiError> {
        let bytes = crate::body::read(body, limit, deadline).await?;
        Ok(Form {
            fields: form_urlencoded::parse(&bytes).into_owned().collect(),
        })
    }

    /// The first value of a field.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The first value of a query parameter.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    crate::query::Query::parse(query)
        .get(name)
        .map(std::borrow::Cow::into_owned)
}
