//! Portal tokens (CONTRACT section 10): a short-lived bearer credential for one tenant's
//! usage page, signed with HMAC-SHA256 under `api.portal_secret` (RFC 2104, FIPS 180-4).
//!
//! Shape: `cmp1.<payload>.<tag>`, both parts base64url without padding (RFC 4648 section
//! 5). `payload` is the JSON `{"t": "<tenant id>", "exp": <Unix seconds>}`; `tag` is
//! HMAC-SHA256 over the ASCII text `cmp1.<payload>` (the version is signed too). Nothing
//! else is stored: a token is valid until `exp`, for the tenant it names, under the secret
//! that signed it (changing the secret revokes every token).
//!
//! Verification checks the tag before reading the payload, in constant time
//! ([`Mac::verify_slice`]), bounds the token's length first ([`MAX_TOKEN_LEN`]), and
//! answers one error kind per way a token fails ([`TokenError`]); callers answer all of
//! them as 401 without saying which.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The version prefix of every token this module signs.
pub const PREFIX: &str = "cmp1";
/// The longest lifetime a token may be given (CONTRACT section 10: at most 24 h).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longer tokens are refused before any decoding (a tenant id is bounded by the event
/// decoder well below this).
pub const MAX_TOKEN_LEN: usize = 2048;

type HmacSha256 = Hmac<Sha256>;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant whose data the token opens.
    #[serde(rename = "t")]
    pub tenant: String,
    /// Expiry, Unix seconds (the token is refused from this second on).
    #[serde(rename = "exp")]
    pub expires_at: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `cmp1.<payload>.<tag>`, too long, or not base64url.
    #[error("malformed portal token")]
    Malformed,
    /// The tag does not match: forged, altered, truncated, or signed with another secret.
    #[error("portal token signature does not verify")]
    BadSignature,
    /// Signed by us, but `exp` has passed.
    #[error("portal token expired")]
    Expired,
}

/// Why a token cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The portal is off (`api.portal_secret` is empty).
    #[error("the tenant portal is off: api.portal_secret is empty")]
    NoSecret,
    /// Zero, or longer than [`MAX_TTL`].
    #[error("ttl must be positive and at most 24h")]
    BadTtl,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first): this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// Signs a token for `tenant`, valid from now (`now`, Unix seconds) for `ttl`.
/// Returns the token and its expiry (Unix seconds).
///
/// Errors: an empty secret ([`SignError::NoSecret`]); a zero ttl or one above [`MAX_TTL`]
/// ([`SignError::BadTtl`]).
pub fn sign(
    secret: &[u8],
    tenant: &str,
    now: i64,
    ttl: Duration,
) -> Result<(String, i64), SignError> {
    if secret.is_empty() {
        return Err(SignError::NoSecret);
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(SignError::BadTtl);
    }
    // At most 86_400 seconds: fits an i64 next to any `now` this process meets.
    let expires_at = now.saturating_add(ttl.as_secs().max(1) as i64);
    let claims = Claims {
        tenant: tenant.to_string(),
        expires_at,
    };
    let payload = B64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let signed = format!("{PREFIX}.{payload}");
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    let tag = B64.encode(m.finalize().into_bytes());
    Ok((format!("{signed}.{tag}"), expires_at))
}

/// Verifies `token` at `now` (Unix seconds) and returns its claims.
///
/// Errors: [`TokenError`]; an empty secret verifies nothing ([`TokenError::BadSignature`]).
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if prefix != PREFIX || payload.is_empty() {
        return Err(TokenError::Malformed);
    }
    let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
    if secret.is_empty() {
        return Err(TokenError::BadSignature);
    }
    let mut m = mac(secret);
    m.update(prefix.as_bytes());
    m.update(b".");
    m.update(payload.as_bytes());
    m.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    // Only a payload we signed is decoded.
    let bytes = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if now >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Parses a ttl such as `"1h"`, `"15m"` or `"90s"` (humantime); at most [`MAX_TTL`].
///
/// Errors: not a duration, zero, or above 24 h ([`SignError::BadTtl`]).
pub fn parse_ttl(s: &str) -> Result<Duration, SignError> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| SignError::BadTtl)?;
    if d < Duration::from_secs(1) || d > MAX_TTL {
        return Err(SignError::BadTtl);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn token(tenant: &str, ttl: u64) -> String {
        sign(KEY, tenant, NOW, Duration::from_secs(ttl)).unwrap().0
    }

    #[test]
    fn a_signed_token_verifies_for_its_tenant_until_expiry() {
        let (t, exp) = sign(KEY, "acme", NOW, Duration::from_secs(3600)).unwrap();
        assert_eq!(exp, NOW + 3600);
        assert!(t.starts_with("cmp1."));
        let c = verify(KEY, &t, NOW).unwrap();
        assert_eq!(
            c,
            Claims {
                tenant: "acme".into(),
                expires_at: NOW + 3600
            }
        );
        assert_eq!(verify(KEY, &t, NOW + 3599).unwrap().tenant, "acme");
        assert_eq!(verify(KEY, &t, NOW + 3600), Err(TokenError::Expired));
        assert_eq!(verify(KEY, &t, NOW + 86_400 * 9), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let t = token("acme", 60);
        let other = b"0123456789abcdef0123456789abcdeF";
        assert_eq!(verify(other, &t, NOW), Err(TokenError::BadSignature));
        assert_eq!(verify(b"", &t, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn forged_payloads_do_not_verify() {
        let t = token("acme", 60);
        let tag = t.rsplit('.').next().unwrap();
        // Another tenant's payload under acme's tag.
        let other = B64.encode(br#"{"t":"globex","exp":1800000060}"#);
        let forged = format!("cmp1.{other}.{tag}");
        assert_eq!(verify(KEY, &forged, NOW), Err(TokenError::BadSignature));
        // A later expiry under the same tag.
        let later = B64.encode(br#"{"t":"acme","exp":1900000000}"#);
        assert_eq!(
            verify(KEY, &format!("cmp1.{later}.{tag}"), NOW),
            Err(TokenError::BadSignature)
        );
        // One flipped character in the tag.
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(verify(KEY, &flipped, NOW), Err(TokenError::BadSignature));
        // A token signed for one tenant verifies as that tenant only.
        assert_eq!(
            verify(KEY, &token("globex", 60), NOW).unwrap().tenant,
            "globex"
        );
    }

    #[test]
    fn truncated_and_malformed_tokens_are_refused() {
        let t = token("acme", 60);
        for cut in [1, 5, t.len() / 2, t.len() - 1] {
            let e = verify(KEY, &t[..cut], NOW).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed | TokenError::BadSignature),
                "{cut}: {e:?}"
            );
        }
        // Without its tag, or with an empty one.
        let (signed, _) = t.rsplit_once('.').unwrap();
        assert_eq!(verify(KEY, signed, NOW), Err(TokenError::Malformed));
        assert_eq!(
            verify(KEY, &format!("{signed}."), NOW),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "cmp1",
            "cmp1..",
            "cmp2.e30.AAAA",
            "cmp1.e30.!!!",
            "a.b.c.d",
            &format!("{t}.x"),
            &"A".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify(KEY, bad, NOW).is_err(), "{bad}");
        }
        // The version is signed: the same payload and tag under another prefix fail.
        let renamed = t.replacen("cmp1.", "cmp2.", 1);
        assert_eq!(verify(KEY, &renamed, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn tenant_ids_with_markup_round_trip() {
        let id = "<script>alert(\"x\")</script>'&";
        assert_eq!(verify(KEY, &token(id, 60), NOW).unwrap().tenant, id);
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("24h"), Ok(MAX_TTL));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        for bad in ["25h", "24h 1s", "0s", "500ms", "soon", "", "-1h"] {
            assert_eq!(parse_ttl(bad), Err(SignError::BadTtl), "{bad}");
        }
        assert_eq!(
            sign(KEY, "a", NOW, MAX_TTL + Duration::from_secs(1)),
            Err(SignError::BadTtl)
        );
        assert_eq!(
            sign(b"", "a", NOW, Duration::from_secs(1)),
            Err(SignError::NoSecret)
        );
    }
}
