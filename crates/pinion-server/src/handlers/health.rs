//! Liveness, readiness, and the answer for unknown paths.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pinion_api::Health;

use crate::error::{ApiError, Code};
use crate::state::AppState;

pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let unavailable = || ApiError::new(Code::StoreUnavailable, "the database is not reachable");
    let ping = tokio::task::spawn_blocking(move || state.ping());
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(Ok(()))) => Ok(Json(Health {
            status: "ready".into(),
        })),
        Ok(Ok(Err(err))) => {
            tracing::warn!(error = %err, "readiness check failed");
            Err(unavailable())
        }
        _ => Err(unavailable()),
    }
}

/// `GET /version` (no auth): this build's version and git commit (null
/// when built outside a git checkout).
pub async fn version() -> Json<pinion_api::Version> {
    Json(pinion_api::Version {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        git_sha: option_env!("PINION_BUILD_GIT_SHA").map(str::to_owned),
    })
}

pub async fn not_found() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND)
}
