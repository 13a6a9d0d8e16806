//! Ingestion from outside HTTP. `decode` turns a Kafka record into a notification or a reason it
//! cannot be one (API.md, Kafka ingestion); `kafka` runs the consumer. Knows nothing of HTTP.

pub mod kafka;

use serde_json::Value;

use crate::model::MemberId;

/// Longest `type`, as over HTTP.
const MAX_TYPE_LEN: usize = 128;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A record that can be stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub member: MemberId,
    pub kind: String,
    /// Compact JSON text.
    pub content: String,
}

/// Decodes a record: key = member id, value = `{"type":..,"content":..}` (with `member_id` in the
/// value when the key is empty). `Err` holds the reason written to the dead-letter header.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Decoded, String> {
    let value = value.ok_or("record has no value")?;
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(value) else {
        return Err("value is not a JSON object".to_owned());
    };
    let member = match key.filter(|k| !k.is_empty()) {
        Some(key) => std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.parse().ok())
            .ok_or("key is not a valid member id")?,
        None => match object.get("member_id") {
            Some(Value::String(id)) => id
                .parse()
                .map_err(|_| "member_id is not a valid member id")?,
            Some(Value::Number(n)) if n.is_u64() => n
                .to_string()
                .parse()
                .map_err(|_| "member_id is not a valid member id")?,
            Some(_) => return Err("member_id is not a valid member id".to_owned()),
            None => {
                return Err(
                    "no member id: the key is empty and the value has no member_id".to_owned(),
                );
            }
        },
    };
    let kind = match object.remove("type") {
        None | Some(Value::Null) => "notification".to_owned(),
        Some(Value::String(kind)) if !kind.is_empty() && kind.chars().count() <= MAX_TYPE_LEN => {
            kind
        }
        Some(_) => {
            return Err(format!(
                "type must be a string of 1-{MAX_TYPE_LEN} characters"
            ));
        }
    };
    let content = object.remove("content").ok_or("value has no content")?;
    Ok(Decoded {
        member,
        kind,
        content: content.to_string(),
    })
}

/// The record's idempotency key: its `idempotency-key` header, else `<topic>/<partition>/<offset>`.
pub fn idempotency_key(
    header: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<String, String> {
    match header {
        None => Ok(format!("{topic}/{partition}/{offset}")),
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .ok_or_else(|| format!("idempotency-key header must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters")),
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
                kind: "follow".into(),
                content: r#"{"by":"x"}"#.into()
            }
        );
        let from_value = decode(
            Some(b""),
            Some(b"{\"member_id\":7,\"content\":\"hi\\nthere\"}"),
        )
        .unwrap();
        assert_eq!(from_value.member.as_str(), "7");
        assert_eq!(from_value.kind, "notification");
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
        let cases: [Case<'_>; 7] = [
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
        ];
        for (key, value, reason) in cases {
            let error = decode(key, value).unwrap_err();
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn idempotency_keys_come_from_the_header_or_the_record_position() {
        assert_eq!(idempotency_key(None, "t", 2, 40).unwrap(), "t/2/40");
        assert_eq!(
            idempotency_key(Some(b"evt-1"), "t", 2, 40).unwrap(),
            "evt-1"
        );
        assert!(idempotency_key(Some(b"has space"), "t", 2, 40).is_err());
    }
}
