//! Who may use `spar serve`: the rules checked at start (a server reachable beyond this machine has a bearer
//! token unless the operator explicitly says otherwise) and the bearer-token check on every request.
use super::ServeState;
use super::errors::ApiError;
use anyhow::{Result, bail};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;

/// Checks the auth settings against the listen address before anything is bound or loaded, and returns the
/// line to log, which says truthfully whether requests need a token:
/// - an empty (or blank) token is refused: it would read as "auth on" and accept nobody, or, compared naively,
///   anybody;
/// - off loopback (any address but 127.0.0.0/8 and ::1, 0.0.0.0 included) a token is required unless
///   `insecure_no_auth` says serving to the network without one is meant;
/// - a token together with `insecure_no_auth` is a contradiction, refused.
pub fn check_auth(
    addr: SocketAddr,
    api_key: Option<&str>,
    insecure_no_auth: bool,
) -> Result<String> {
    let loopback = addr.ip().is_loopback();
    match (api_key, insecure_no_auth) {
        (Some(k), _) if k.trim().is_empty() => {
            bail!("the bearer token is empty: set a non-empty token, or leave auth off")
        }
        (Some(_), true) => bail!("--insecure-no-auth with a bearer token: choose one"),
        (Some(_), false) if loopback => Ok(format!(
            "serving on {addr} (this machine only); requests need the bearer token"
        )),
        (Some(_), false) => Ok(format!(
            "serving on {addr}, reachable beyond this machine; requests need the bearer token"
        )),
        (None, _) if loopback => Ok(format!(
            "serving on {addr} (this machine only) WITHOUT auth: any local process can use the model"
        )),
        (None, false) => bail!(
            "refusing to serve on {addr} (reachable beyond this machine) without a bearer token: give \
             --api-key-env VAR, bind to 127.0.0.1, or pass --insecure-no-auth to serve without auth on purpose"
        ),
        (None, true) => Ok(format!(
            "serving on {addr}, reachable beyond this machine, WITHOUT auth (--insecure-no-auth): anyone who \
             can reach it can use the model"
        )),
    }
}

/// Whether `given` equals `key`, in time that does not depend on where they differ (the token must not leak
/// through response timing).
fn same_token(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Middleware of the authenticated routes: with a token set, the request must carry
/// `Authorization: Bearer TOKEN` (the scheme in any case, RFC 7235), else a 401. It runs before the body is
/// read, so an unauthenticated client learns nothing from parse errors.
pub(crate) async fn require_bearer(
    State(st): State<Arc<ServeState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or("");
        if !same_token(given, key) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer ...)",
            ));
        }
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_needs_a_token_or_an_explicit_opt_out() {
        let lo: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let v6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert!(
            check_auth(any, None, false)
                .unwrap_err()
                .to_string()
                .contains("--insecure-no-auth")
        );
        assert!(
            check_auth(any, None, true)
                .unwrap()
                .contains("WITHOUT auth")
        );
        assert!(
            check_auth(any, Some("k"), false)
                .unwrap()
                .contains("need the bearer token")
        );
        assert!(check_auth(any, Some(""), false).is_err());
        assert!(check_auth(lo, Some(""), false).is_err());
        assert!(check_auth(lo, Some("  "), false).is_err());
        assert!(check_auth(lo, Some("k"), true).is_err());
        assert!(
            check_auth(lo, None, false)
                .unwrap()
                .contains("WITHOUT auth")
        );
        assert!(check_auth(v6, None, false).is_ok());
        assert!(same_token("abc", "abc") && !same_token("abd", "abc") && !same_token("ab", "abc"));
    }
}
