//! Who is asking (API.md, Identity): the `Member` extractor for subscribers and readers, and the
//! `Publisher` extractor for `POST /notifications`. Never calls Redis.
//!
//! JWTs are HS256 only: the algorithm is fixed by configuration, never taken from the token, so a
//! token cannot pick `none` or an asymmetric algorithm. The signature is checked with the `hmac`
//! crate's constant-time comparison before the payload is even parsed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Query};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::AppState;
use super::error::ApiError;
use crate::config::Auth;
use crate::model::MemberId;

/// An authenticated member. Its stream ends when the token that proved it expires.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: MemberId,
    pub expires_at: Option<SystemTime>,
}

impl FromRequestParts<AppState> for Member {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        match &state.config.auth {
            Auth::Jwt { secret } => {
                let token = bearer(parts)
                    .or_else(|| cookie(parts, "access_token"))
                    .or_else(|| query.get("access_token").map(String::as_str))
                    .ok_or(ApiError::Unauthorized)?;
                verify_hs256(token, secret.expose().as_bytes(), SystemTime::now()).map_err(
                    |reason| {
                        tracing::debug!(reason, "token refused");
                        ApiError::Unauthorized
                    },
                )
            }
            Auth::Gateway => {
                let header = parts.headers.get("member_id").and_then(|v| v.to_str().ok());
                let id = header
                    .or_else(|| query.get("member_id").map(String::as_str))
                    .ok_or(ApiError::Unauthorized)?;
                Ok(Member {
                    id: id.parse().map_err(|_| ApiError::Unauthorized)?,
                    expires_at: None,
                })
            }
        }
    }
}

/// A caller holding `PUBLISH_TOKEN`.
#[derive(Debug)]
pub struct Publisher;

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match (&state.config.publish_token, bearer(parts)) {
            (Some(expected), Some(given)) if expected.matches(given) => Ok(Publisher),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<Subject>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// `sub` as a string, or as a number for tokens minted by the old service's issuers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Number(u64),
}

/// Verifies an HS256 JWT and returns its member. `Err` carries a reason for debug logs only.
pub fn verify_hs256(token: &str, secret: &[u8], now: SystemTime) -> Result<Member, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts");
    };
    let header: Header = decode_json(header).ok_or("malformed header")?;
    if header.alg != "HS256" {
        return Err("algorithm is not HS256");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "malformed signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable secret")?;
    mac.update(&token.as_bytes()[..header_and_payload_len(token)]);
    mac.verify_slice(&signature).map_err(|_| "bad signature")?;

    let claims: Claims = decode_json(payload).ok_or("malformed claims")?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if claims.exp.is_some_and(|exp| now_secs >= exp) {
        return Err("expired");
    }
    if claims.nbf.is_some_and(|nbf| now_secs < nbf) {
        return Err("not yet valid");
    }
    let sub = match claims.sub.ok_or("no sub claim")? {
        Subject::Text(text) => text,
        Subject::Number(n) => n.to_string(),
    };
    let id = sub.parse().map_err(|_| "sub is not a valid member id")?;
    // An `exp` too far away to represent is no expiry at all.
    let expires_at = claims
        .exp
        .and_then(|exp| Duration::try_from_secs_f64(exp).ok())
        .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch));
    Ok(Member { id, expires_at })
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// Signs `claims` as an HS256 JWT: for tests, benchmarks and development tooling.
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn accepts_a_valid_token_and_reads_its_expiry() {
        let token = sign_hs256(&json!({"sub": "42", "exp": 2000}), SECRET);
        let member = verify_hs256(&token, SECRET, at(1000)).unwrap();
        assert_eq!(member.id.as_str(), "42");
        assert_eq!(member.expires_at, Some(at(2000)));
        let far = sign_hs256(&json!({"sub": "42", "exp": 1e300}), SECRET);
        assert_eq!(
            verify_hs256(&far, SECRET, at(1000)).unwrap().expires_at,
            None
        );
        let numeric = sign_hs256(&json!({"sub": 42}), SECRET);
        assert_eq!(
            verify_hs256(&numeric, SECRET, at(1000))
                .unwrap()
                .id
                .as_str(),
            "42"
        );
    }

    #[test]
    fn refuses_expired_forged_and_foreign_tokens() {
        let expired = sign_hs256(&json!({"sub": "42", "exp": 1000}), SECRET);
        assert_eq!(
            verify_hs256(&expired, SECRET, at(1000)).unwrap_err(),
            "expired"
        );
        let early = sign_hs256(&json!({"sub": "42", "nbf": 2000}), SECRET);
        assert!(verify_hs256(&early, SECRET, at(1000)).is_err());
        let other_key = sign_hs256(&json!({"sub": "42"}), b"other");
        assert_eq!(
            verify_hs256(&other_key, SECRET, at(1000)).unwrap_err(),
            "bad signature"
        );
        let bad_member = sign_hs256(&json!({"sub": "a b"}), SECRET);
        assert!(verify_hs256(&bad_member, SECRET, at(1000)).is_err());
        let no_sub = sign_hs256(&json!({"exp": 2000}), SECRET);
        assert!(verify_hs256(&no_sub, SECRET, at(1000)).is_err());

        // alg=none with the signature stripped, and a tampered payload.
        let valid = sign_hs256(&json!({"sub": "42"}), SECRET);
        let (_, rest) = valid.split_once('.').unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(verify_hs256(&format!("{none_header}.{rest}"), SECRET, at(1000)).is_err());
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"43"}"#);
        let mut pieces: Vec<&str> = valid.split('.').collect();
        pieces[1] = &forged_payload;
        assert_eq!(
            verify_hs256(&pieces.join("."), SECRET, at(1000)).unwrap_err(),
            "bad signature"
        );
        assert!(verify_hs256("a.b", SECRET, at(1000)).is_err());
    }
}
