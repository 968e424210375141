//! Pins: promote, rollback, list, resolve.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::{PinList, PinResponse, PromoteRequest, RollbackRequest};
use pinion_core::{
    Digest, GitSha, HoldReason, ImageRef, Label, Notes, Region, Ring, RunUrl, Scope, Soak,
    TemplateName,
};
use pinion_store::{
    CiProvenance, Expectation, PinRecord, PromoteOutcome, Promotion, Rollback, RollbackOutcome,
};

use super::{
    Attempt, Query, audited, body_etag, cached_json, etag, now, optional_field, parse_field,
    pin_body, read_json, to_bytes,
};
use crate::RegistryCheck;
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::soak::human;
use crate::state::AppState;
use crate::view::View;

pub async fn promote(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("promote", source);
    let result = promote_inner(&state, &mut attempt, caller, &headers, body).await;
    audited(&state, attempt, result).await
}

async fn promote_inner(
    state: &AppState,
    attempt: &mut Attempt,
    caller: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = attempt.caller(caller)?;
    caller.require(Scope::Promote)?;
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let request: PromoteRequest =
        read_json(body, headers, state.settings().body_limit, &deadline).await?;
    let (template, region) = attempt.pin(&request.template_name, request.region.as_deref())?;
    let digest = parse_field(Field::ImageDigest, Digest::parse(&request.image_digest))?;
    let git_sha = optional_field(Field::GitSha, request.git_sha.as_deref(), GitSha::parse)?;
    let notes = optional_field(Field::Notes, request.notes.as_deref(), Notes::parse)?;
    let expected = optional_field(
        Field::ExpectedDigest,
        request.expected_digest.as_deref(),
        Digest::parse,
    )?;
    let ci = CiProvenance {
        run_url: optional_field(
            Field::CiRunUrl,
            request.ci_run_url.as_deref(),
            RunUrl::parse,
        )?,
        repository: optional_field(
            Field::Repository,
            request.repository.as_deref(),
            Label::parse,
        )?,
        workflow: optional_field(Field::Workflow, request.workflow.as_deref(), Label::parse)?,
    };
    if request.build_sequence.is_some_and(|sequence| sequence < 0) {
        return Err(ApiError::new(
            Code::InvalidBuildSequence,
            "`build_sequence` must not be negative",
        ));
    }
    let expect = match (expected, if_match(headers)?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "give `expected_digest` or `If-Match`, not both",
            ));
        }
        (Some(digest), None) => Expectation::Digest(digest),
        (None, Some(revision)) => Expectation::Revision(revision),
        (None, None) => Expectation::Any,
    };
    if state.settings().require_provenance && (git_sha.is_none() || ci.run_url.is_none()) {
        return Err(ApiError::new(
            Code::ProvenanceRequired,
            "this control plane requires `git_sha` and `ci_run_url` on every promotion",
        ));
    }
    caller.require_template(&template)?;
    state.known_region(&region)?;
    deadline
        .run(check_registry(state, &template, &digest), || {
            ApiError::new(
                Code::RegistryUnavailable,
                "the registry did not confirm the digest within the request's deadline; nothing was changed",
            )
        })
        .await?;

    let admin = caller.require(Scope::Admin).is_ok();
    let soak_source = state.settings().soak.as_ref();
    let soak = match soak_source {
        None => Soak::NotRequired,
        Some(source) if request.force && admin => Soak::Unchecked {
            required: source.required,
        },
        // Already there, as far as this server knows: nothing to ask the
        // source (the store still decides, against the pin as it is).
        Some(source)
            if state
                .view()
                .pin(&template, &region)
                .is_some_and(|pin| pin.digest == digest) =>
        {
            Soak::Unchecked {
                required: source.required,
            }
        }
        Some(source) => source.judge(&template, &region, &digest, &deadline).await?,
    };
    let promotion = Promotion {
        template,
        region,
        digest,
        git_sha,
        notes,
        ci,
        actor: caller.name().clone(),
        at: now(),
        expect,
        build_sequence: request.build_sequence,
        force: request.force,
        may_override_hold: admin,
        soak,
        soak_source: soak_source.map(|source| source.name.clone()),
        keep_canary: request.keep_canary,
    };
    // Without a list of regions, a typo'd region would make a pin nobody
    // resolves: the answer says when a promotion opens a region.
    let opens_region = state.settings().regions.is_none()
        && !region_is_global(&promotion.region)
        && !state.view().region_has_pins(&promotion.region);
    let requested = promotion.clone();
    let mut outcome = state.promote(promotion, deadline).await?;
    // The pin seemed to be at the digest, so the source was not asked, but
    // another promotion moved it first: ask now, and try once more.
    if let (PromoteOutcome::SoakRequired { .. }, Soak::Unchecked { .. }, Some(source), false) = (
        &outcome,
        requested.soak,
        soak_source,
        requested.force && admin,
    ) {
        let judged = source
            .judge(
                &requested.template,
                &requested.region,
                &requested.digest,
                &deadline,
            )
            .await?;
        let again = Promotion {
            soak: judged,
            at: now(),
            ..requested.clone()
        };
        outcome = state.promote(again, deadline).await?;
    }
    let view = state.view();
    match outcome {
        PromoteOutcome::Moved { pin, previous } => {
            tracing::info!(
                template = %pin.template, region = %pin.region, digest = %pin.digest,
                previous = previous.as_ref().map(Digest::as_str).unwrap_or("none"),
                revision = pin.revision,
                "pin moved"
            );
            let new_region = opens_region && previous.is_none();
            if new_region {
                tracing::warn!(template = %pin.template, region = %pin.region,
                    "this promotion created the region's first pin");
            }
            Ok(pin_answer_with(StatusCode::CREATED, &view, &pin, new_region))
        }
        PromoteOutcome::Unchanged { pin } => Ok(pin_answer(StatusCode::OK, &view, &pin)),
        PromoteOutcome::UnknownTemplate => Err(ApiError::new(Code::UnknownTemplate,
            format!(
                "template `{0}` is not in the catalog; add it with `PUT /cp/admin/runtimes/{0}` or `pinion template add`",
                requested.template
            ),
        )),
        PromoteOutcome::NotPinnable => Err(ApiError::new(Code::TemplateNotPinnable,
            format!(
                "template `{}` is marked not pinnable in the catalog",
                requested.template
            ),
        )),
        PromoteOutcome::Conflict { current } => {
            let now_at = match &current {
                Some(pin) => format!("is at `{}` (revision {})", pin.digest, pin.revision),
                None => "does not exist".to_owned(),
            };
            let expected = match &requested.expect {
                Expectation::Digest(digest) => format!("`{digest}`"),
                Expectation::Revision(revision) => format!("revision {revision}"),
                Expectation::Any => "anything".to_owned(),
            };
            Err(ApiError::new(Code::PinConflict,
                format!(
                    "pin for `{}`/`{}` {now_at}, not at the expected {expected}; nothing was changed",
                    requested.template, requested.region
                ),
            )
            .with_pin(current.as_ref().map(|pin| pin_body(&view, pin))))
        }
        PromoteOutcome::SoakRequired { soaked, required } => Err(ApiError::new(
            Code::SoakRequired,
            format!(
                "`{}` has soaked {} in `{}` (its pin for `{}`/`{}` or `{}`/`global`); it must soak {} there first (an `admin` token with `force` skips this); nothing was changed",
                requested.digest,
                human(soaked),
                requested.soak_source.as_ref().map_or("", |name| name.as_str()),
                requested.template,
                requested.region,
                requested.template,
                human(required),
            ),
        )),
        PromoteOutcome::Held { current } => Err(super::held_refusal(&current, "promotions", requested.force)
            .with_pin(Some(pin_body(&view, &current)))),
        PromoteOutcome::StaleBuild { current } => Err(ApiError::new(Code::StaleBuild,
            format!(
                "pin for `{}`/`{}` was promoted by build {}; build {} is older (send `force` to override)",
                requested.template,
                requested.region,
                current.build_sequence.unwrap_or_default(),
                requested.build_sequence.unwrap_or_default()
            ),
        )
        .with_pin(Some(pin_body(&view, &current)))),
    }
}

/// `423 pin_held`, saying who held the pin, when and why.
/// Confirms the digest exists in the template's repository before anything
/// is written (`require`), or only logs when it does not (`warn`).
pub(super) async fn check_registry(
    state: &AppState,
    template: &TemplateName,
    digest: &Digest,
) -> Result<(), ApiError> {
    let mode = state.settings().registry_check;
    if mode == RegistryCheck::Off {
        return Ok(());
    }
    let require = mode == RegistryCheck::Require;
    let view = state.view();
    let Some(runtime) = view.runtimes.get(template) else {
        // Not in the catalog: the store answers `unknown_template`.
        return Ok(());
    };
    let Some(repository) = runtime.repository.clone() else {
        if require {
            return Err(ApiError::new(
                Code::NoRepository,
                format!(
                    "template `{template}` has no repository in the catalog, so the digest cannot be checked"
                ),
            ));
        }
        tracing::warn!(%template, "template has no repository; digest not checked");
        return Ok(());
    };
    match state.registry().exists(&repository, digest).await {
        Ok(true) => Ok(()),
        Ok(false) if require => Err(ApiError::new(
            Code::DigestNotInRegistry,
            format!("`{repository}@{digest}` does not exist in the registry; nothing was changed"),
        )),
        Ok(false) => {
            tracing::warn!(%repository, %digest, "digest not in the registry; promoting anyway (registry check is `warn`)");
            Ok(())
        }
        Err(err) if require => {
            tracing::warn!(%repository, error = %err, "registry check failed");
            Err(ApiError::new(
                Code::RegistryUnavailable,
                format!("could not confirm the digest: {err}; nothing was changed"),
            ))
        }
        Err(err) => {
            tracing::warn!(%repository, error = %err, "registry check failed; promoting anyway (registry check is `warn`)");
            Ok(())
        }
    }
}

fn region_is_global(region: &Region) -> bool {
    *region == Region::global()
}

/// `{"pin": …}` with the pin's revision as its ETag.
fn pin_answer(status: StatusCode, view: &View, pin: &PinRecord) -> Response {
    pin_answer_with(status, view, pin, false)
}

fn pin_answer_with(status: StatusCode, view: &View, pin: &PinRecord, new_region: bool) -> Response {
    let mut response = (
        status,
        Json(PinResponse {
            pin: pin_body(view, pin),
            new_region,
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", pin.revision)) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

/// `If-Match: "<revision>"`, the ETag a promote answer carried.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| {
            text.trim()
                .strip_prefix('"')?
                .strip_suffix('"')?
                .parse::<i64>()
                .ok()
        })
        .filter(|revision| *revision >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidIfMatch,
                "`If-Match` must be a pin revision in quotes, as the `ETag` of a promote answer",
            )
        })
}

pub async fn rollback(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("rollback", source);
    let result = rollback_inner(&state, &mut attempt, caller, &headers, body).await;
    audited(&state, attempt, result).await
}

async fn rollback_inner(
    state: &AppState,
    attempt: &mut Attempt,
    caller: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = attempt.caller(caller)?;
    caller.require(Scope::Promote)?;
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let request: RollbackRequest =
        read_json(body, headers, state.settings().body_limit, &deadline).await?;
    rollback_request(state, attempt, &caller, request, deadline).await
}

/// A rollback request as sent, from a caller of scope `promote` (the API's
/// JSON body, or the page's form).
pub(crate) async fn rollback_request(
    state: &AppState,
    attempt: &mut Attempt,
    caller: &Caller,
    request: RollbackRequest,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let (template, region) = attempt.pin(&request.template_name, request.region.as_deref())?;
    let to = optional_field(Field::ToDigest, request.to_digest.as_deref(), Digest::parse)?;
    let expected = optional_field(
        Field::ExpectedDigest,
        request.expected_digest.as_deref(),
        Digest::parse,
    )?;
    let notes = optional_field(Field::Notes, request.notes.as_deref(), Notes::parse)?;
    let hold = match (request.hold, request.reason.as_deref()) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "`reason` is the reason of a hold; send it with `\"hold\": true`",
            ));
        }
        (true, Some(reason)) => Some(parse_field(Field::Reason, HoldReason::parse(reason))?),
        (true, None) => Some(
            notes
                .as_ref()
                .and_then(|notes| {
                    HoldReason::parse(&notes.as_str().replace(['\n', '\t'], " ")).ok()
                })
                .map_or_else(
                    || HoldReason::parse(&format!("held by a rollback of `{}`", caller.name())),
                    Ok,
                )
                .map_err(|err| ApiError::internal(format!("a default hold reason: {err}")))?,
        ),
    };
    caller.require_template(&template)?;
    let rollback = Rollback {
        template: template.clone(),
        region: region.clone(),
        to,
        actor: caller.name().clone(),
        at: now(),
        notes,
        hold,
        expected: expected.clone(),
        keep_canary: request.keep_canary,
    };
    let outcome = state.rollback(rollback, deadline).await?;
    let view = state.view();
    let what = format!("`{template}`/`{region}`");
    match outcome {
        RollbackOutcome::Moved { pin, previous } => {
            tracing::info!(template = %pin.template, region = %pin.region, digest = %pin.digest,
                previous = %previous, revision = pin.revision, "pin rolled back");
            Ok(pin_answer(StatusCode::CREATED, &view, &pin))
        }
        RollbackOutcome::Unchanged { pin } => Ok(pin_answer(StatusCode::OK, &view, &pin)),
        RollbackOutcome::NoPin => Err(ApiError::new(
            Code::RuntimePinMissing,
            format!("no pin for {what} to roll back"),
        )),
        RollbackOutcome::NoPrevious => Err(ApiError::new(
            Code::NothingToRollBack,
            format!("the pin for {what} has no earlier digest in its history"),
        )),
        RollbackOutcome::NotInHistory => Err(ApiError::new(
            Code::DigestNotInHistory,
            format!("the pin for {what} never pointed at that digest; promote it instead"),
        )),
        RollbackOutcome::Conflict { current } => Err(ApiError::new(
            Code::PinConflict,
            format!(
                "pin for {what} is at `{}` (revision {}), not at the expected `{}`; nothing was changed",
                current.digest,
                current.revision,
                expected.as_ref().map_or("", Digest::as_str),
            ),
        )
        .with_pin(Some(pin_body(&view, &current)))),
    }
}

/// A read's request head and its caller, who must have the read scope. The
/// hot reads take the request whole: extractors would copy the header map
/// and the query string.
fn reader(state: &AppState, request: Request) -> Result<(Parts, Caller), ApiError> {
    let (parts, _body) = request.into_parts();
    let caller = Caller::authenticate(&parts, state)?;
    caller.require(Scope::Read)?;
    Ok((parts, caller))
}

/// The list pollers ask for.
pub async fn list_pins(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, caller) = reader(&state, request)?;
    let query = Query::parse(parts.uri.query());
    let template = query.template()?;
    let region = query.region()?;
    state.ensure_fresh(&parts.headers).await?;
    let view = state.view();
    let etag = etag(
        &view,
        &caller,
        &[
            "list",
            template.as_ref().map_or("", TemplateName::as_str),
            region.as_ref().map_or("", Region::as_str),
        ],
    );
    let everything = template.is_none() && region.is_none() && caller.templates().is_none();
    Ok(cached_json(&parts.headers, etag, || {
        let render = || {
            let pins = view
                .pins()
                .filter(|pin| template.as_ref().is_none_or(|t| *t == pin.template))
                .filter(|pin| region.as_ref().is_none_or(|r| *r == pin.region))
                .filter(|pin| caller.may_use(&pin.template))
                .map(|pin| pin_body(&view, pin))
                .collect();
            to_bytes(&PinList { pins })
        };
        if everything {
            view.list_body.get_or_init(render).clone()
        } else {
            render()
        }
    }))
}

/// The hot path of provisioning.
pub async fn resolve(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, caller) = reader(&state, request)?;
    let query = Query::parse(parts.uri.query());
    let template = parse_field(
        Field::TemplateName,
        TemplateName::parse(query.one("template_name")?.as_deref().unwrap_or_default()),
    )?;
    let region = query.region()?.unwrap_or_default();
    // An instance's bucket puts it in the stable or the canary ring.
    let bucket = match query.one("instance_id")? {
        None => None,
        Some(id) => Some(pinion_core::bucket(
            &template,
            &parse_field(Field::InstanceId, pinion_core::InstanceId::parse(&id))?,
        )),
    };
    caller.require_template(&template)?;
    state.ensure_fresh(&parts.headers).await?;
    let view = state.view();
    let answer = |pin: &PinRecord, ring: Ring| {
        let digest = match (&pin.canary, ring) {
            (Some(canary), Ring::Canary) => &canary.digest,
            _ => &pin.digest,
        };
        let image_ref = view
            .runtimes
            .get(&pin.template)
            .and_then(|runtime| runtime.repository.as_ref())
            .map(|repository| ImageRef::new(repository.clone(), digest.clone()).to_string());
        let resolved = ResolvedBody {
            template_name: template.as_str(),
            region: region.as_str(),
            matched_region: pin.region.as_str(),
            image_digest: digest.as_str(),
            image_ref: image_ref.as_deref(),
            ring: ring.as_str(),
        };
        let body = to_bytes(&resolved);
        let etag = body_etag(&caller, &body);
        (body, etag)
    };
    let missing = || {
        ApiError::new(
            Code::RuntimePinMissing,
            format!("no pin for template `{template}` in region `{region}` nor in `global`"),
        )
    };
    // A token that may see every template gets the same bytes as every other
    // such token: the view keeps them. A restricted token's ETag names it.
    let (body, etag) = if caller.templates().is_none() {
        view.cached_answer(template.as_str(), &region, bucket, answer)
            .ok_or_else(missing)?
    } else {
        let pin = view
            .resolve_pin(template.as_str(), region.as_str())
            .ok_or_else(missing)?;
        answer(pin, crate::view::ring_of(pin, bucket))
    };
    Ok(cached_json(&parts.headers, etag, || body))
}

/// [`pinion_api::Resolved`], borrowed: the hot path serialises without
/// copying a string.
#[derive(serde::Serialize)]
struct ResolvedBody<'a> {
    template_name: &'a str,
    region: &'a str,
    matched_region: &'a str,
    image_digest: &'a str,
    image_ref: Option<&'a str>,
    ring: &'static str,
}

#[cfg(test)]
mod tests {
    use pinion_api::Resolved;

    use super::*;

    #[test]
    fn the_borrowed_resolve_body_is_the_wire_shape() {
        let body = ResolvedBody {
            template_name: "codex",
            region: "eu-west-1",
            matched_region: "global",
            image_digest: "sha256:00",
            image_ref: Some("r@sha256:00"),
            ring: "canary",
        };
        let wire: Resolved = serde_json::from_slice(&to_bytes(&body)).unwrap();
        assert_eq!(wire.template_name, "codex");
        assert_eq!(wire.region, "eu-west-1");
        assert_eq!(wire.matched_region, "global");
        assert_eq!(wire.image_ref.as_deref(), Some("r@sha256:00"));
        assert_eq!(wire.ring.as_deref(), Some("canary"));
    }
}
