//! Ingestion from outside HTTP. `decode` turns a Kafka record into a notification or a reason it
//! cannot be one (API.md, Kafka ingestion); `kafka` runs the consumer. Knows nothing of HTTP.

pub mod kafka;

use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::model::{IdempotencyKey, Kind, MemberId, content_text};

/// A record that can be stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub member: MemberId,
    pub kind: Kind,
    /// Compact JSON text.
    pub content: String,
}

/// Why a record cannot be a notification; its `Display` is the dead-letter reason header.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error("record has no value")]
    NoValue,
    #[error("value is not a JSON object")]
    NotAnObject,
    #[error("key is not a valid member id")]
    BadKey,
    #[error("member_id is not a valid member id")]
    BadMemberId,
    #[error("no member id: the key is empty and the value has no member_id")]
    NoMember,
    #[error("type must be a string of 1-128 characters")]
    BadKind,
    #[error("value has no content")]
    NoContent,
    #[error("content is not valid JSON: {0}")]
    BadContent(String),
    #[error("idempotency-key header: {0}")]
    BadIdempotencyKey(crate::model::InvalidIdempotencyKey),
}

/// Decodes a record: key = member id, value = `{"type":..,"content":..}` (with `member_id` in the
/// value when the key is empty).
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Decoded, Undecodable> {
    let value = value.ok_or(Undecodable::NoValue)?;
    // Each member as sent: the content is stored as it was written (`content_text`).
    let Ok(mut object) = serde_json::from_slice::<HashMap<String, Box<RawValue>>>(value) else {
        return Err(Undecodable::NotAnObject);
    };
    let member = match key.filter(|k| !k.is_empty()) {
        Some(key) => std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.parse().ok())
            .ok_or(Undecodable::BadKey)?,
        None => {
            let id = object.remove("member_id").ok_or(Undecodable::NoMember)?;
            serde_json::from_str(id.get()).map_err(|_| Undecodable::BadMemberId)?
        }
    };
    let kind = match object.remove("type") {
        None => Kind::default(),
        Some(kind) => serde_json::from_str::<Option<Kind>>(kind.get())
            .map_err(|_| Undecodable::BadKind)?
            .unwrap_or_default(),
    };
    let content = object.remove("content").ok_or(Undecodable::NoContent)?;
    Ok(Decoded {
        member,
        kind,
        content: content_text(&content)
            .map_err(|error| Undecodable::BadContent(error.to_string()))?,
    })
}

/// The record's idempotency key: its `idempotency-key` header, else its position in Kafka.
pub fn idempotency_key(
    header: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<IdempotencyKey, Undecodable> {
    match header {
        None => Ok(IdempotencyKey::record_position(topic, partition, offset)),
        Some(raw) => IdempotencyKey::from_bytes(raw).map_err(Undecodable::BadIdempotencyKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_key_or_value_member_and_defaults_the_type() {
        let decoded = decode(
            Some(b"42"),
            Some(br#"{"type":"follow","content":{"by":"x"}}"#),
        )
        .unwrap();
        assert_eq!(
            decoded,
            Decoded {
                member: "42".parse().unwrap(),
                kind: "follow".parse().unwrap(),
                content: r#"{"by":"x"}"#.into()
            }
        );
        let from_value = decode(
            Some(b""),
            Some(b"{\"member_id\":7,\"content\":\"hi\\nthere\"}"),
        )
        .unwrap();
        assert_eq!(from_value.member.as_str(), "7");
        assert_eq!(from_value.kind, Kind::default());
        assert_eq!(from_value.content, r#""hi\nthere""#);
        // Pretty-printed input is stored compact: no raw line break reaches the SSE framing.
        let pretty = decode(
            Some(b"1"),
            Some(b"{\n  \"content\": {\n    \"a\": 1\n  }\n}"),
        )
        .unwrap();
        assert_eq!(pretty.content, r#"{"a":1}"#);
        assert_eq!(
            decode(None, Some(br#"{"member_id":"m","content":null}"#))
                .unwrap()
                .content,
            "null"
        );
    }

    #[test]
    fn undecodable_records_say_why() {
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: [Case<'_>; 9] = [
            (Some(b"1"), None, "no value"),
            (Some(b"1"), Some(b"not json"), "not a JSON object"),
            (Some(b"1"), Some(b"[1,2]"), "not a JSON object"),
            (
                Some(b"a b"),
                Some(br#"{"content":1}"#),
                "key is not a valid member id",
            ),
            (None, Some(br#"{"content":1}"#), "no member id"),
            (Some(b"1"), Some(br#"{"type":"x"}"#), "no content"),
            (
                Some(b"1"),
                Some(br#"{"type":5,"content":1}"#),
                "type must be",
            ),
            (
                Some(b"1"),
                Some(br#"{"content":"\ud800"}"#),
                "content is not valid JSON",
            ),
            (
                Some(b"1"),
                Some(br#"{"content":[1e400]}"#),
                "content is not valid JSON",
            ),
        ];
        for (key, value, reason) in cases {
            let error = decode(key, value).unwrap_err().to_string();
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn idempotency_keys_come_from_the_header_or_the_record_position() {
        assert_eq!(
            idempotency_key(None, "t", 2, 40).unwrap().as_str(),
            "t/2/40"
        );
        assert_eq!(
            idempotency_key(Some(b"evt-1"), "t", 2, 40)
                .unwrap()
                .as_str(),
            "evt-1"
        );
        assert!(idempotency_key(Some(b"has space"), "t", 2, 40).is_err());
    }
}
