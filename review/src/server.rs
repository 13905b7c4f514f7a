//! The HTTP side: one page (HTML, CSS and JS compiled into the binary, no build step) and JSON endpoints, every
//! one behind the access token. The page itself is served only to `/?token=...`; the endpoints want
//! `Authorization: Bearer <token>`, which the page sends. Responses are never cached and send no referrer:
//! consultations may hold patient data. Handlers log ids and counts, never text.
use crate::detail::Detail;
use crate::overrides::{OverrideRequest, Overrides};
use crate::query::{Facets, ListQuery};
use crate::run::Consultation;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::RwLock;

const PAGE: &str = include_str!("../assets/index.html");
const STYLE: &str = include_str!("../assets/app.css");
const SCRIPT: &str = include_str!("../assets/app.js");

/// What the server holds: the run (overrides change it), where overrides go, and the token.
pub struct ReviewState {
    pub run: RwLock<Vec<Consultation>>,
    pub overrides: Overrides,
    pub token: String,
    /// Shown in the page title: the run folder's name (not its path).
    pub title: String,
}

/// A fresh random access token (128 bits, hex).
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time independent of where the first difference is, so response times do not leak the token.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn require_token(State(st): State<Arc<ReviewState>>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if same_token(t.trim(), &st.token) => next.run(req).await,
        _ => error(StatusCode::UNAUTHORIZED, "missing or wrong access token"),
    }
}

/// Headers on every response: no caching, no referrer (the page URL carries the token), no sniffing, and a
/// policy that lets the page run only its own inline script and talk only to this server.
async fn private_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    res
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    token: Option<String>,
}

async fn page(State(st): State<Arc<ReviewState>>, Query(q): Query<PageQuery>) -> Response {
    match q.token {
        Some(t) if same_token(&t, &st.token) => {}
        _ => {
            return (
                StatusCode::UNAUTHORIZED,
                Html("<!doctype html><title>spar review</title><p>Open the address <code>spar review</code> \
                      printed, with its token.</p>"),
            )
                .into_response();
        }
    }
    let title = html_escape(&st.title);
    Html(
        PAGE.replace("{{TITLE}}", &title)
            .replace("/*{{STYLE}}*/", STYLE)
            .replace("/*{{SCRIPT}}*/", SCRIPT),
    )
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn summary(State(st): State<Arc<ReviewState>>) -> Response {
    let run = st.run.read().await;
    axum::Json(Facets::of(&run)).into_response()
}

async fn list(
    State(st): State<Arc<ReviewState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let run = st.run.read().await;
    axum::Json(q.page(&run)).into_response()
}

async fn one(State(st): State<Arc<ReviewState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<usize>() else {
        return error(StatusCode::BAD_REQUEST, "id: not a number");
    };
    let run = st.run.read().await;
    match run.get(id) {
        Some(c) => axum::Json(Detail::of(id, c)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("id: no consultation {id} (the run has {})", run.len()),
        ),
    }
}

async fn override_one(
    State(st): State<Arc<ReviewState>>,
    body: Result<axum::Json<OverrideRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let mut run = st.run.write().await;
    let Some(c) = run.get_mut(req.id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("id: no consultation {}", req.id),
        );
    };
    match st.overrides.apply(c, &req).await {
        Ok(entry) => {
            tracing::info!(
                consultation = req.id,
                kind = ?req.kind,
                index = req.index,
                "override recorded"
            );
            let detail = Detail::of(req.id, c);
            axum::Json(serde_json::json!({ "entry": entry, "consultation": detail }))
                .into_response()
        }
        Err(e) => {
            tracing::warn!(consultation = req.id, "override refused");
            error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"))
        }
    }
}

/// The router: `/` (the page), `/api/summary`, `/api/consultations` (paged list), `/api/consultations/{id}`,
/// `POST /api/overrides`.
pub fn router(state: Arc<ReviewState>) -> Router {
    let api = Router::new()
        .route("/api/summary", get(summary))
        .route("/api/consultations", get(list))
        .route("/api/consultations/{id}", get(one))
        .route("/api/overrides", post(override_one))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .merge(api)
        .layer(middleware::from_fn(private_headers))
        .with_state(state)
}

/// Whether `host` names this machine only (an IP loopback address or `localhost`).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_compared_exactly() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..31]));
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "192.168.1.4", "example.org", "::"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
