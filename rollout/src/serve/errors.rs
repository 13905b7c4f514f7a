//! Error responses of `spar serve`, all in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the HTTP status (`code` repeats it, as vLLM does). Handlers return [`ApiError`]; everything else that
//! can fail before a handler runs (unknown route, wrong method, malformed JSON, wrong content type, body too
//! large: axum answers those in plain text or with an empty body) goes through [`json_errors`], so that a client
//! parsing OpenAI errors never meets another format.
use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An OpenAI-style error; `param` names the offending request field when there is one.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }
}

/// A 400 about the request as a whole.
pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

/// A 400 about one request field.
pub(crate) fn bad_param(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError {
        param: Some(param.to_string()),
        ..bad(msg)
    }
}

/// A 500: the engine or the tokenizer failed.
pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// OpenAI's `error.type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "server_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": error_type(self.status),
                                    "param": self.param, "code": self.status.as_u16()}});
        let mut resp = (self.status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The client retries (spar's own OpenAI client honours Retry-After).
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The request field a serde message of axum's JSON extractor names: `field: ...` (serde_path_to_error's
/// prefix) or "missing field `field`".
fn param_of(text: &str) -> Option<String> {
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    if let Some(rest) = detail.split("missing field `").nth(1) {
        return rest.split('`').next().map(String::from);
    }
    let (path, _) = detail.split_once(": ")?;
    (!path.is_empty() && path != "." && !path.contains(char::is_whitespace))
        .then(|| path.to_string())
}

/// Middleware over the whole router: an error response that is not JSON already (axum's rejections, the
/// fallbacks) becomes an OpenAI-style error with the same status, except axum's 422 for a body of the wrong
/// shape, which OpenAI (and vLLM) answer with 400. Its text, if any, is kept as the message.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let err = match status {
        StatusCode::NOT_FOUND if text.is_empty() => {
            ApiError::new(status, format!("unknown route: {method} {path}"))
        }
        StatusCode::METHOD_NOT_ALLOWED if text.is_empty() => {
            ApiError::new(status, format!("{method} is not allowed on {path}"))
        }
        StatusCode::UNPROCESSABLE_ENTITY => ApiError {
            param: param_of(&text),
            ..bad(text)
        },
        _ if text.is_empty() => ApiError::new(
            status,
            status.canonical_reason().unwrap_or("error").to_string(),
        ),
        _ => ApiError::new(status, text),
    };
    let mut out = err.into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The body of a fallback: axum's own 404 / 405 are empty; [`json_errors`] gives them their message.
pub(crate) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Body::empty()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_param_is_read_from_serde_messages() {
        assert_eq!(
            param_of(
                "Failed to deserialize the JSON body into the target type: max_tokens: invalid value: integer `-1`, expected u32 at line 1 column 16"
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(
                "Failed to deserialize the JSON body into the target type: missing field `prompt` at line 1 column 2"
            )
            .as_deref(),
            Some("prompt")
        );
        assert_eq!(param_of("expected value at line 1 column 1"), None);
    }
}
