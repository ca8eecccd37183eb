//! The bearer-auth layer of `/v1/*` (CONTRACT section 6): a request passes when its
//! `Authorization: Bearer <token>` names one of the configured tokens or admin tokens
//! (compared in constant time; swapped on configuration reload), else it is answered 401
//! ([`ApiError::Unauthorized`]) before any handler runs. Write routes also check
//! [`is_admin`] (a read token gets 403, [`ApiError::Forbidden`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The tokens `/v1/*` accepts.
pub type Tokens = Arc<ArcSwap<Vec<String>>>;

/// The read tokens and the admin tokens.
#[derive(Clone)]
pub struct AuthTokens {
    pub read: Tokens,
    pub admin: Tokens,
}

/// Middleware (`axum::middleware::from_fn_with_state`): runs `next` only for an authorized
/// request (a read or an admin token).
pub async fn require_bearer(
    State(tokens): State<AuthTokens>,
    req: Request,
    next: Next,
) -> Response {
    if !authorized(&tokens.read, req.headers()) && !authorized(&tokens.admin, req.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Whether the request's bearer token is one of `admin` (may write).
pub fn is_admin(admin: &Tokens, headers: &HeaderMap) -> bool {
    authorized(admin, headers)
}

/// The token of an `Authorization: Bearer <token>` header, trimmed; None without one (the
/// portal routes check it against their own credential, [`super::portal::token`]).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
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
