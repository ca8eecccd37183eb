//! The bearer-auth layer of `/v1/*` (CONTRACT section 6): a request passes when its
//! `Authorization: Bearer <token>` names one of the configured tokens (compared in constant
//! time; swapped on configuration reload), else it is answered 401
//! ([`ApiError::Unauthorized`]) before any handler runs.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The tokens `/v1/*` accepts.
pub type Tokens = Arc<ArcSwap<Vec<String>>>;

/// Middleware (`axum::middleware::from_fn_with_state`): runs `next` only for an authorized
/// request.
pub async fn require_bearer(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    if !authorized(&tokens, req.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

fn authorized(tokens: &Tokens, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = v.strip_prefix("Bearer ").map(str::trim) else {
        return false;
    };
    let tokens = tokens.load();
    !token.is_empty()
        && tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_bearer_token_passes() {
        let tokens: Tokens = Arc::new(ArcSwap::from_pointee(vec!["tok".to_string()]));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(authorized(&tokens, &with("Bearer tok")));
        assert!(authorized(&tokens, &with("Bearer  tok ")));
        assert!(!authorized(&tokens, &HeaderMap::new()));
        assert!(!authorized(&tokens, &with("Bearer ")));
        assert!(!authorized(&tokens, &with("Bearer to")));
        assert!(!authorized(&tokens, &with("Basic tok")));
        tokens.store(Arc::new(vec![]));
        assert!(!authorized(&tokens, &with("Bearer tok")));
    }
}
