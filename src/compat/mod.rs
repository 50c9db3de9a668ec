//! The seed systems' own APIs (contract §7), each a thin adapter over `core`: parse the
//! seed's request, call the same operation every transport calls, answer in the seed's
//! shape. No rule lives here; errors come from `core` and are only re-worded.
//!
//! Each adapter is mounted at its prefix (`COMPAT_*_PREFIX`, `off` to disable); prefixes
//! whose routes would answer the same request refuse to start.

pub mod crud;
pub mod general_bots;
pub mod messaging;

use std::{marker::PhantomData, sync::Arc};

use axum::{
    Router,
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    auth::Principal,
    core::messages::{self, Attachment, SendMessage, SendOptions, Sent},
    error::AppError,
    limits::RateLimiter,
    state::AppState,
};

/// How one seed system words an error.
pub trait Dialect: Send + Sync + 'static {
    fn render(error: &AppError) -> Response;
}

/// An error answered in dialect `D`.
pub struct Fail<D>(pub AppError, PhantomData<D>);

impl<D> From<AppError> for Fail<D> {
    fn from(e: AppError) -> Self {
        Self(e, PhantomData)
    }
}

impl<D: Dialect> IntoResponse for Fail<D> {
    fn into_response(self) -> Response {
        match &self.0 {
            AppError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            AppError::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
        let mut response = D::render(&self.0);
        if let AppError::RateLimited { retry_after_secs } = self.0 {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            );
        }
        response
    }
}

/// The verified caller, put in the request by [`guard`].
pub struct Caller<D>(pub Principal, PhantomData<D>);

impl<S: Send + Sync, D: Dialect> FromRequestParts<S> for Caller<D> {
    type Rejection = Fail<D>;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(|p| Caller(p, PhantomData))
            .ok_or_else(|| AppError::Unauthorized("missing bearer token".into()).into())
    }
}

/// The state of a guarded group of routes: the seed's own rate limit, when it has one.
#[derive(Clone)]
pub struct Guarded {
    state: AppState,
    limit: Option<Arc<RateLimiter>>,
}

/// Verifies the bearer token, applies the principal's limits (the server's, and the
/// seed's for this group of routes) and sends the seed's rate-limit headers.
async fn guard<D: Dialect>(State(g): State<Guarded>, mut request: Request, next: Next) -> Response {
    if !g.state.is_ready() {
        return Fail::<D>::from(AppError::Unavailable(anyhow::anyhow!(
            "database not migrated yet"
        )))
        .into_response();
    }
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match g.state.verifier.verify_bearer(header) {
        Ok(p) => p,
        Err(e) => return Fail::<D>::from(e).into_response(),
    };
    // The seeds' limits are per user; services and admins (bridges, migration jobs) have
    // only the server's own.
    let seed_limit = g.limit.as_ref().filter(|_| !principal.is_privileged());
    let limiter = seed_limit.unwrap_or(&g.state.limiter);
    let refuse = |limiter: &crate::limits::RateLimiter, e: AppError| {
        crate::metrics::rate_limited("compat");
        let refused = limiter.refused(&e);
        let mut response = Fail::<D>::from(e).into_response();
        refused.write(response.headers_mut());
        response
    };
    let allowance = match limiter.check(&principal.id) {
        Ok(a) => a,
        Err(e) => return refuse(limiter, e),
    };
    // The server-wide allowance applies too; the seed's (tighter) one is what is shown.
    if seed_limit.is_some()
        && let Err(e) = g.state.limiter.check(&principal.id)
    {
        return refuse(&g.state.limiter, e);
    }
    if let Err(e) = crate::core::profiles::remember_claims(&g.state, &principal).await {
        return Fail::<D>::from(e).into_response();
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    allowance.write(response.headers_mut());
    response
}

/// `routes` behind [`guard`] in dialect `D`, with the seed's per-principal limit
/// (requests per minute) when it sets one.
pub fn guarded<D: Dialect>(
    state: &AppState,
    per_minute: Option<u32>,
    routes: Router<AppState>,
) -> Router<AppState> {
    let g = Guarded {
        state: state.clone(),
        limit: per_minute.map(|n| Arc::new(RateLimiter::per_minute(n))),
    };
    if let Some(limit) = &g.limit {
        let limit = limit.clone();
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => limit.housekeep(),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    routes.route_layer(middleware::from_fn_with_state(g, guard::<D>))
}

/// Body, query and path extractors answer in the adapter's dialect: handlers take
/// `Result<X, AppError>` and pass it through this.
pub fn accept<T, D>(extracted: Result<T, AppError>) -> Result<T, Fail<D>> {
    extracted.map_err(Fail::from)
}

/// The seeds' conversation ids are ours: anything else names no conversation.
pub fn conversation_id(id: &str) -> Result<Uuid, AppError> {
    id.parse().map_err(|_| AppError::NotFound("conversation"))
}

/// A seed's send: string `content` into conversation `id`, through the same core call a
/// v1 send makes; `source` names the adapter in the message's metadata. A retried
/// `client_message_id` answers with the message stored the first time.
pub async fn send_content(
    state: &AppState,
    me: &Principal,
    id: &str,
    content: Option<Value>,
    attachments: Vec<Attachment>,
    client_message_id: Option<String>,
    source: &str,
) -> Result<Sent, AppError> {
    let id = conversation_id(id)?;
    let Some(Value::String(text)) = content else {
        return Err(AppError::invalid_field(
            "content",
            "must be a non-empty string",
        ));
    };
    let input = SendMessage {
        text,
        attachments,
        client_message_id,
        ..Default::default()
    };
    let options = SendOptions {
        source: Some(source.to_owned()),
        ..Default::default()
    };
    messages::send(state, me, id, input, options).await
}

/// One adapter's routes: `(method, path)` below its prefix.
pub type Routes = &'static [(&'static str, &'static str)];

/// What a prefix setting means: `None` for `off`; otherwise a path that starts with `/`
/// and does not end with one (`/` itself: mounted at the root).
fn prefix(variable: &str, value: &str) -> anyhow::Result<Option<String>> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    let ok = value.starts_with('/')
        && !value.contains("//")
        && !value.contains('{')
        && !value.contains('}')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c));
    anyhow::ensure!(
        ok,
        "{variable} must be `off` or a path such as /compat/crud (got `{value}`)"
    );
    let trimmed = value.trim_end_matches('/');
    Ok(Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }))
}

fn join(prefix: &str, path: &str) -> String {
    if prefix == "/" {
        path.to_owned()
    } else {
        format!("{prefix}{path}")
    }
}

/// Whether two route patterns can match the same path (`{x}` matches any one segment).
fn overlaps(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'))
}

/// Routes of Colloquy's own that no adapter may shadow.
const CORE_ROUTES: &[(&str, &str)] = &[
    ("*", "/ws"),
    ("*", "/healthz"),
    ("*", "/readyz"),
    ("*", "/metrics"),
    ("*", "/openapi.json"),
    ("*", "/docs"),
];

/// Refuses configurations where two mounted surfaces would answer the same request.
fn check_clashes(mounted: &[(&str, &str, Routes)]) -> anyhow::Result<()> {
    let mut all: Vec<(String, &str, String)> = CORE_ROUTES
        .iter()
        .map(|(m, p)| ("Colloquy itself".to_owned(), *m, (*p).to_owned()))
        .collect();
    for (variable, prefix, routes) in mounted {
        anyhow::ensure!(
            !prefix.starts_with("/api/v1/communication") && !prefix.starts_with("/socket.io"),
            "{variable}={prefix} would shadow Colloquy's own API; choose another prefix"
        );
        for (method, path) in routes.iter() {
            let full = join(prefix, path);
            for (owner, other_method, other) in &all {
                if (method == other_method || *other_method == "*") && overlaps(&full, other) {
                    anyhow::bail!(
                        "{variable}={prefix} mounts `{method} {full}`, which clashes with `{other}` of {owner}; give the adapters different prefixes (or set one to off)"
                    );
                }
            }
        }
        for (method, path) in routes.iter() {
            all.push(((*variable).to_owned(), method, join(prefix, path)));
        }
    }
    Ok(())
}

/// Builds one adapter's routes.
type Build = fn(&AppState) -> Router<AppState>;

/// Every enabled adapter at its prefix; an error names the clashing settings.
pub fn router(state: &AppState) -> anyhow::Result<Router<AppState>> {
    let config = &state.config;
    let adapters: [(&str, &str, Routes, Build); 3] = [
        (
            "COMPAT_GENERAL_BOTS_PREFIX",
            &config.compat_general_bots_prefix,
            general_bots::ROUTES,
            general_bots::router,
        ),
        (
            "COMPAT_CRUD_PREFIX",
            &config.compat_crud_prefix,
            crud::ROUTES,
            crud::router,
        ),
        (
            "COMPAT_MESSAGING_PREFIX",
            &config.compat_messaging_prefix,
            messaging::ROUTES,
            messaging::router,
        ),
    ];
    let mut mounted = Vec::new();
    for (variable, value, routes, build) in adapters {
        if let Some(p) = prefix(variable, value)? {
            mounted.push((variable, p, routes, build));
        }
    }
    let described: Vec<(&str, &str, Routes)> = mounted
        .iter()
        .map(|(v, p, r, _)| (*v, p.as_str(), *r))
        .collect();
    check_clashes(&described)?;
    let mut app = Router::new();
    for (_, prefix, _, build) in mounted {
        let routes = build(state).layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::deadline,
        ));
        app = if prefix == "/" {
            app.merge(routes)
        } else {
            app.nest(&prefix, routes)
        };
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_paths_or_off() {
        assert_eq!(prefix("X", "off").ok(), Some(None));
        assert_eq!(prefix("X", "/").ok(), Some(Some("/".into())));
        assert_eq!(
            prefix("X", "/compat/crud/").ok(),
            Some(Some("/compat/crud".into()))
        );
        for bad in ["compat", "/a b", "/a/{x}", "//x", "/ü"] {
            assert!(prefix("X", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adapters_on_the_same_routes_refuse_to_start() {
        let ok = check_clashes(&[
            ("A", "/", general_bots::ROUTES),
            ("B", "/crud", crud::ROUTES),
            ("C", "/", messaging::ROUTES),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        let clash = check_clashes(&[("A", "/", general_bots::ROUTES), ("B", "/", crud::ROUTES)])
            .expect_err("both serve GET /api/conversations");
        let text = clash.to_string();
        assert!(
            text.contains("COMPAT_CRUD_PREFIX") || text.contains("B="),
            "{text}"
        );
        assert!(text.contains("/api/conversations"), "{text}");
        assert!(check_clashes(&[("A", "/ws", general_bots::ROUTES)]).is_ok());
        assert!(check_clashes(&[("A", "/api/v1/communication", crud::ROUTES)]).is_err());
    }

    #[test]
    fn a_parameter_matches_any_segment() {
        assert!(overlaps(
            "/api/conversations/{id}",
            "/api/conversations/start"
        ));
        assert!(!overlaps(
            "/api/conversations/{id}/messages",
            "/api/conversations/start"
        ));
    }
}
