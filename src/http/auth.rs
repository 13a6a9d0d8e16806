//! Who is asking (API.md, Identity): the `Member` extractor for subscribers and readers, and the
//! `Publisher` extractor for `POST /notifications`. Never calls Redis.
//!
//! JWTs are HS256 only: the algorithm is fixed by configuration, never taken from the token, so a
//! token cannot pick `none` or an asymmetric algorithm. The signature is checked with the `hmac`
//! crate's constant-time comparison before the payload is even parsed. A `crit` header names
//! extensions the token requires to be understood (RFC 7515 §4.1.11): we understand none, so such
//! a token is refused. `aud` and `iss` are checked when configured.
//!
//! In gateway mode the `member_id` header is the gateway's word: when it is present it is the only
//! word (never the query), and one that is not a valid member id, or two that differ, are a 401.

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
use crate::config::{Auth, JwtPolicy};
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
            Auth::Jwt { secret, policy } => {
                let token = bearer(parts)
                    .or_else(|| cookie(parts, "access_token"))
                    .or_else(|| query.get("access_token").map(String::as_str))
                    .ok_or(ApiError::Unauthorized)?;
                let member = verify(token, secret.expose().as_bytes(), policy, SystemTime::now())
                    .map_err(|reason| {
                    tracing::debug!(reason, "token refused");
                    ApiError::Unauthorized
                })?;
                if member.expires_at.is_none() {
                    state.metrics.tokens_without_exp.inc();
                }
                Ok(member)
            }
            Auth::Gateway => {
                let id = match gateway_header(parts)? {
                    Some(header) => header,
                    None => query
                        .get("member_id")
                        .map(String::as_str)
                        .ok_or(ApiError::Unauthorized)?,
                };
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

/// Who may move a read position: the member itself, or a backend holding `PUBLISH_TOKEN`, which
/// names the member in the request body.
#[derive(Debug)]
pub enum ReadMarker {
    Member(MemberId),
    Backend,
}

impl FromRequestParts<AppState> for ReadMarker {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if Publisher::from_request_parts(parts, state).await.is_ok() {
            return Ok(Self::Backend);
        }
        Ok(Self::Member(
            Member::from_request_parts(parts, state).await?.id,
        ))
    }
}

/// The gateway's `member_id` header: `None` when absent; a 401 when it is not text or when two
/// copies disagree (whatever the client adds must not win over what the gateway set).
fn gateway_header(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let mut values = parts.headers.get_all("member_id").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|other| other != first) {
        return Err(ApiError::Unauthorized);
    }
    first.to_str().map(Some).map_err(|_| ApiError::Unauthorized)
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
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims {
    /// A string, or a number for tokens minted by the old service's issuers.
    sub: Option<serde_json::Value>,
    exp: Option<f64>,
    nbf: Option<f64>,
    aud: Option<Audience>,
    iss: Option<String>,
}

/// `aud`: one audience or a list (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(one) => one == wanted,
            Self::Many(many) => many.iter().any(|a| a == wanted),
        }
    }
}

/// Verifies an HS256 JWT against `policy` and returns its member. `Err` carries a reason for
/// debug logs only.
pub fn verify(
    token: &str,
    secret: &[u8],
    policy: &JwtPolicy,
    now: SystemTime,
) -> Result<Member, &'static str> {
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
    if header.crit.is_some() {
        return Err("critical header extensions are not understood");
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
    let leeway = policy.leeway.as_secs_f64();
    if claims.exp.is_some_and(|exp| now_secs >= exp + leeway) {
        return Err("expired");
    }
    if claims.nbf.is_some_and(|nbf| now_secs + leeway < nbf) {
        return Err("not yet valid");
    }
    if let Some(wanted) = &policy.audience
        && !claims.aud.as_ref().is_some_and(|aud| aud.contains(wanted))
    {
        return Err("audience does not match");
    }
    if let Some(wanted) = &policy.issuer
        && claims.iss.as_deref() != Some(wanted.as_str())
    {
        return Err("issuer does not match");
    }
    let sub = claims.sub.ok_or("no sub claim")?;
    let id = MemberId::deserialize(sub).map_err(|_| "sub is not a valid member id")?;
    // An `exp` too far away to represent is no expiry at all; the stream ends at `exp` + leeway.
    let expires_at = claims
        .exp
        .and_then(|exp| Duration::try_from_secs_f64(exp + leeway).ok())
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

    fn verify_default(token: &str, secret: &[u8], now: SystemTime) -> Result<Member, &'static str> {
        verify(token, secret, &JwtPolicy::default(), now)
    }

    fn signed_with_header(header: &str, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(header);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn critical_extensions_audience_issuer_and_leeway() {
        let crit = signed_with_header(
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            &json!({"sub": "42"}),
        );
        assert_eq!(
            verify_default(&crit, SECRET, at(1000)).unwrap_err(),
            "critical header extensions are not understood"
        );
        let policy = JwtPolicy {
            audience: Some("notify".into()),
            issuer: Some("https://id.example".into()),
            leeway: Duration::from_secs(30),
        };
        let good = sign_hs256(
            &json!({"sub": "42", "aud": ["app", "notify"], "iss": "https://id.example", "exp": 990}),
            SECRET,
        );
        let member = verify(&good, SECRET, &policy, at(1000)).unwrap();
        assert_eq!(
            member.expires_at,
            Some(at(1020)),
            "the stream ends at exp + leeway"
        );
        assert_eq!(
            verify(&good, SECRET, &policy, at(1020)).unwrap_err(),
            "expired"
        );
        let other_aud = sign_hs256(
            &json!({"sub": "42", "aud": "app", "iss": "https://id.example"}),
            SECRET,
        );
        assert_eq!(
            verify(&other_aud, SECRET, &policy, at(1000)).unwrap_err(),
            "audience does not match"
        );
        let no_iss = sign_hs256(&json!({"sub": "42", "aud": "notify"}), SECRET);
        assert_eq!(
            verify(&no_iss, SECRET, &policy, at(1000)).unwrap_err(),
            "issuer does not match"
        );
        let early = sign_hs256(
            &json!({"sub": "42", "aud": "notify", "iss": "https://id.example", "nbf": 1020}),
            SECRET,
        );
        assert!(
            verify(&early, SECRET, &policy, at(1000)).is_ok(),
            "within the leeway"
        );
        // Without a policy, aud and iss are not required.
        assert!(verify_default(&no_iss, SECRET, at(1000)).is_ok());
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn accepts_a_valid_token_and_reads_its_expiry() {
        let token = sign_hs256(&json!({"sub": "42", "exp": 2000}), SECRET);
        let member = verify_default(&token, SECRET, at(1000)).unwrap();
        assert_eq!(member.id.as_str(), "42");
        assert_eq!(member.expires_at, Some(at(2000)));
        let far = sign_hs256(&json!({"sub": "42", "exp": 1e300}), SECRET);
        assert_eq!(
            verify_default(&far, SECRET, at(1000)).unwrap().expires_at,
            None
        );
        let numeric = sign_hs256(&json!({"sub": 42}), SECRET);
        assert_eq!(
            verify_default(&numeric, SECRET, at(1000))
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
            verify_default(&expired, SECRET, at(1000)).unwrap_err(),
            "expired"
        );
        let early = sign_hs256(&json!({"sub": "42", "nbf": 2000}), SECRET);
        assert!(verify_default(&early, SECRET, at(1000)).is_err());
        let other_key = sign_hs256(&json!({"sub": "42"}), b"other");
        assert_eq!(
            verify_default(&other_key, SECRET, at(1000)).unwrap_err(),
            "bad signature"
        );
        let bad_member = sign_hs256(&json!({"sub": "a b"}), SECRET);
        assert!(verify_default(&bad_member, SECRET, at(1000)).is_err());
        let no_sub = sign_hs256(&json!({"exp": 2000}), SECRET);
        assert!(verify_default(&no_sub, SECRET, at(1000)).is_err());

        // alg=none with the signature stripped, and a tampered payload.
        let valid = sign_hs256(&json!({"sub": "42"}), SECRET);
        let (_, rest) = valid.split_once('.').unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(verify_default(&format!("{none_header}.{rest}"), SECRET, at(1000)).is_err());
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"43"}"#);
        let mut pieces: Vec<&str> = valid.split('.').collect();
        pieces[1] = &forged_payload;
        assert_eq!(
            verify_default(&pieces.join("."), SECRET, at(1000)).unwrap_err(),
            "bad signature"
        );
        assert!(verify_default("a.b", SECRET, at(1000)).is_err());
    }
}
