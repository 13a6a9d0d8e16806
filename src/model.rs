//! The service's vocabulary: member ids, notification types, idempotency keys, stream ids,
//! resume positions and the notification JSON. Pure parsing and formatting; no I/O. Each rule
//! lives here once, whichever door (HTTP, Kafka, a token) a value comes through.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::de::{self, Deserializer, Unexpected};
use serde::{Deserialize, Serialize};

/// A member id: 1–128 characters from `A–Z a–z 0–9 . _ - @` (API.md, Identity).
///
/// The alphabet has no `:`, `{` or `}`, so a member id can sit inside a Redis key without
/// changing its hash tag or colliding with another key family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MemberId(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a member id is 1-128 characters from A-Z a-z 0-9 . _ - @")]
pub struct InvalidMemberId;

impl MemberId {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MemberId {
    type Err = InvalidMemberId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@');
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(allowed) {
            return Err(InvalidMemberId);
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MemberId {
    /// A string, or a non-negative integer (the old service's numeric ids), wherever JSON carries
    /// a member id: publish bodies, Kafka values, a token's `sub`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = MemberId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member id (1-128 characters from A-Z a-z 0-9 . _ - @, or a non-negative integer)")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<MemberId, E> {
                s.parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(s), &self))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<MemberId, E> {
                Ok(MemberId(n.to_string().into())) // at most 20 digits: always valid
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A notification's `type`: 1–128 characters, `notification` when the publisher gives none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Kind(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type must be a string of 1-128 characters")]
pub struct InvalidKind;

impl Kind {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Kind {
    fn default() -> Self {
        Self("notification".into())
    }
}

impl FromStr for Kind {
    type Err = InvalidKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.chars().count() > Self::MAX_LEN {
            return Err(InvalidKind);
        }
        Ok(Self(s.into()))
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'_, str>>::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| de::Error::invalid_value(Unexpected::Str(&text), &"1-128 characters"))
    }
}

/// What makes a retried publish a repeat: 1–255 visible ASCII characters (an HTTP
/// `Idempotency-Key` header, a Kafka `idempotency-key` header or `<topic>/<partition>/<offset>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1-255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// From a header's raw bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, InvalidIdempotencyKey> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.iter().all(u8::is_ascii_graphic) {
            return Err(InvalidIdempotencyKey);
        }
        let text = std::str::from_utf8(raw).map_err(|_| InvalidIdempotencyKey)?;
        Ok(Self(text.into()))
    }

    /// A Kafka record's own position, `<topic>/<partition>/<offset>`: unique per record, and
    /// built here rather than checked (a topic name may be up to 249 characters).
    pub fn record_position(topic: &str, partition: i32, offset: i64) -> Self {
        Self(format!("{topic}/{partition}/{offset}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidIdempotencyKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes())
    }
}

/// A Redis stream entry id, `<ms>-<seq>`: the notification's position and its SSE `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stream id is <ms>-<seq>, both decimal")]
pub struct InvalidStreamId;

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
    /// The last possible id: nothing can follow it, so Redis refuses a range starting after it.
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// A client's position (`Last-Event-ID`, `lastEventId`, `after`): a stream id that something
    /// can follow.
    pub fn parse_position(s: &str) -> Option<Self> {
        s.parse().ok().filter(|id| *id != Self::MAX)
    }

    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The greatest id strictly before `ms-0`: `after` this, an exclusive range starts at `ms`.
    pub fn before_ms(ms: u64) -> Self {
        match ms.checked_sub(1) {
            Some(prev) => Self::new(prev, u64::MAX),
            None => Self::ZERO,
        }
    }
}

impl FromStr for StreamId {
    type Err = InvalidStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_ascii(s.as_bytes()).ok_or(InvalidStreamId)
    }
}

impl StreamId {
    /// Parses `<ms>-<seq>` straight from bytes (a Redis reply holds a million of them in a
    /// reconnect storm): the same strict rule as [`FromStr`], without a UTF-8 check or `str::parse`.
    pub fn from_ascii(bytes: &[u8]) -> Option<Self> {
        let dash = memchr::memchr(b'-', bytes)?;
        Some(Self {
            ms: parse_decimal(&bytes[..dash])?,
            seq: parse_decimal(&bytes[dash + 1..])?,
        })
    }

    /// Appends `<ms>-<seq>` to `out`: what `Display` writes, without the formatting machinery
    /// (every frame carries its id twice).
    pub fn push_to(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push_str(digits.format(self.ms));
        out.push('-');
        out.push_str(digits.format(self.seq));
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = itoa::Buffer::new();
        f.write_str(digits.format(self.ms))?;
        f.write_str("-")?;
        f.write_str(digits.format(self.seq))
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Strict unsigned decimal: digits only (no sign, no spaces), fits in a `u64`.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Where a subscriber resumes (API.md, `GET /notification/subscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No position: live notifications only.
    Fresh,
    /// Replay every retained entry strictly after this id (`Last-Event-ID`, `lastEventId`).
    After(StreamId),
    /// The same from a time (`last_message`): the id is just before that millisecond, and the
    /// resume position (`as_of`) is the newest entry before it.
    Since(StreamId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResume {
    #[error("{source_name} must be a stream id <ms>-<seq>")]
    StreamId { source_name: &'static str },
    #[error("last_message must be epoch milliseconds or \"empty\"")]
    LastMessage,
}

/// The raw resume hints a request carried, in order of precedence.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResumeHints<'a> {
    pub last_event_id_header: Option<&'a str>,
    pub last_event_id_query: Option<&'a str>,
    pub last_message: Option<&'a str>,
}

impl Resume {
    /// First non-empty hint wins; a malformed one is an error, never a silent fresh start.
    pub fn from_hints(hints: ResumeHints<'_>) -> Result<Self, InvalidResume> {
        if let Some(id) = present(hints.last_event_id_header) {
            let id = StreamId::parse_position(id).ok_or(InvalidResume::StreamId {
                source_name: "Last-Event-ID",
            })?;
            return Ok(Self::After(id));
        }
        if let Some(id) = present(hints.last_event_id_query) {
            let id = StreamId::parse_position(id).ok_or(InvalidResume::StreamId {
                source_name: "lastEventId",
            })?;
            return Ok(Self::After(id));
        }
        match present(hints.last_message) {
            None | Some("empty") => Ok(Self::Fresh),
            Some(ms) => parse_decimal(ms.as_bytes())
                .map(|ms| Self::Since(StreamId::before_ms(ms)))
                .ok_or(InvalidResume::LastMessage),
        }
    }
}

/// A member's read state, counted at one id (API.md, Read state): `unread` retained notifications
/// have `read_up_to < id <= as_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub read_up_to: StreamId,
    pub unread: u64,
    pub as_of: StreamId,
}

impl ReadState {
    /// `"read_up_to":"..","unread":n,"as_of":".."`, the fields every answer that carries it
    /// shares (JSON bodies, `connected`, `event: read`).
    pub fn write_fields(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"read_up_to\":\"{}\",\"unread\":{},\"as_of\":\"{}\"",
            self.read_up_to, self.unread, self.as_of
        );
    }

    /// The `event: read` frame: no `id:`, so it never moves a browser's resume position.
    pub fn frame(&self) -> String {
        let mut data = String::from("{");
        self.write_fields(&mut data);
        data.push('}');
        format!("event: read\ndata: {data}\n\n")
    }
}

/// A notification's content as stored: the JSON text it was sent as, checked as a parser would
/// check it, without the whitespace between tokens (see [`compact_json`]).
///
/// A `RawValue` is only checked for syntax: an unpaired surrogate escape, a number beyond `f64`'s
/// range or nesting past serde_json's limit would pass, be stored, and make a strict client's
/// parser refuse every history page holding it. So the text is parsed once more here, without
/// building anything.
pub fn content_text(json: &serde_json::value::RawValue) -> Result<String, serde_json::Error> {
    serde_json::from_str::<CheckedJson>(json.get())?;
    Ok(compact_json(json))
}

/// Any JSON value, read through serde_json's full checks and kept nowhere.
struct CheckedJson;

impl<'de> Deserialize<'de> for CheckedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedJson)
    }
}

impl<'de> de::Visitor<'de> for CheckedJson {
    type Value = CheckedJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<CheckedJson>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<CheckedJson, CheckedJson>()?.is_some() {}
        Ok(self)
    }
}

/// The JSON text of `json` without the whitespace between tokens. So it is one line (a raw line
/// break can only be such whitespace) and it keeps what the publisher wrote: key order, numbers
/// beyond `f64`'s precision, escapes.
fn compact_json(json: &serde_json::value::RawValue) -> String {
    let text = json.get();
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// One stored notification, as read back from a member stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    /// The id of the entry this one followed in its stream when it was written: the proof that
    /// nothing between the two was trimmed (API.md, `recovered`).
    pub prev: StreamId,
    pub kind: String,
    /// Compact JSON text (no raw line breaks; see [`write_data_lines`]).
    pub content: String,
}

impl Entry {
    /// Room for its SSE frame, as a hint: the fixed text, both ids and a short member id fit in
    /// 160 bytes, plus type and content.
    pub fn frame_capacity(&self) -> usize {
        160 + self.kind.len() + self.content.len()
    }

    /// The notification JSON shared by SSE `data` and the history page.
    pub fn write_json(&self, member: &MemberId, out: &mut String) {
        out.push_str("{\"id\":\"");
        self.id.push_to(out);
        out.push_str("\",\"member_id\":\"");
        out.push_str(member.as_str()); // alphabet needs no escaping
        out.push_str("\",\"type\":");
        push_json_string(&self.kind, out);
        out.push_str(",\"content\":");
        out.push_str(&self.content);
        out.push_str(",\"time\":");
        out.push_str(itoa::Buffer::new().format(self.id.ms));
        out.push('}');
    }
}

fn push_json_string(s: &str, out: &mut String) {
    // What JSON escapes: quote, backslash, control characters. Types rarely hold any.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Serializing a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

/// An SSE frame for one notification: `id:`, `event: notification`, one or more `data:` lines.
pub fn notification_frame(entry: &Entry, member: &MemberId) -> String {
    let mut frame = String::with_capacity(entry.frame_capacity());
    push_notification_frame(entry, member, &mut frame);
    frame
}

/// [`notification_frame`], appended to `out`. The JSON is written in place; only content with a
/// raw line break (stored by an older writer) is split into `data:` lines afterwards.
pub fn push_notification_frame(entry: &Entry, member: &MemberId, out: &mut String) {
    out.push_str("id: ");
    entry.id.push_to(out);
    out.push_str("\nevent: notification\n");
    let line = out.len();
    out.push_str("data: ");
    let json = out.len();
    entry.write_json(member, out);
    if memchr::memchr2(b'\r', b'\n', &out.as_bytes()[json..]).is_some() {
        let payload = out.split_off(json);
        out.truncate(line);
        write_data_lines(&payload, out);
    } else {
        out.push('\n');
    }
    out.push('\n');
}

/// Writes `payload` as `data:` lines. SSE ends a line at `\r\n`, `\r` or `\n`, so each such break
/// starts a new `data:` line and the browser joins them back with `\n`: whatever the payload holds,
/// the framing cannot break and no field can be injected.
pub fn write_data_lines(payload: &str, out: &mut String) {
    let mut rest = payload;
    loop {
        match rest.find(['\r', '\n']) {
            None => {
                out.push_str("data: ");
                out.push_str(rest);
                out.push('\n');
                return;
            }
            Some(at) => {
                out.push_str("data: ");
                out.push_str(&rest[..at]);
                out.push('\n');
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
        }
    }
}

/// A hint that was sent and is not blank.
fn present(hint: Option<&str>) -> Option<&str> {
    hint.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stream_ids_parse_from_bytes_strictly_and_print_as_displayed() {
        let max = StreamId::MAX.to_string();
        assert_eq!(max, "18446744073709551615-18446744073709551615");
        assert_eq!(StreamId::from_ascii(max.as_bytes()), Some(StreamId::MAX));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "+1-0",
            "1 -0",
            "18446744073709551616-0",
            "a-0",
        ] {
            assert_eq!(StreamId::from_ascii(bad.as_bytes()), None, "{bad:?}");
        }
        let mut out = String::from("x");
        StreamId::new(1_700_000_000_000, 12).push_to(&mut out);
        assert_eq!(out, "x1700000000000-12");
    }

    proptest! {
        #[test]
        fn stream_ids_print_alike_and_parse_back_from_bytes(ms: u64, seq: u64) {
            let id = StreamId::new(ms, seq);
            let mut pushed = String::new();
            id.push_to(&mut pushed);
            prop_assert_eq!(&pushed, &format!("{ms}-{seq}"));
            prop_assert_eq!(&id.to_string(), &pushed);
            prop_assert_eq!(StreamId::from_ascii(pushed.as_bytes()), Some(id));
        }

        #[test]
        fn types_are_escaped_as_serde_json_does(kind in "\\PC*|[\"\\\\\u{0}-\u{1f}a\u{7f}é]*") {
            let mut out = String::new();
            push_json_string(&kind, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&kind).unwrap());
        }
    }

    #[test]
    fn read_state_frames_have_no_id() {
        let state = ReadState {
            read_up_to: StreamId::new(5, 0),
            unread: 2,
            as_of: StreamId::new(9, 1),
        };
        assert_eq!(
            state.frame(),
            "event: read\ndata: {\"read_up_to\":\"5-0\",\"unread\":2,\"as_of\":\"9-1\"}\n\n"
        );
    }

    #[test]
    fn member_ids_come_as_strings_or_non_negative_integers() {
        let parse = |json: &str| serde_json::from_str::<MemberId>(json);
        assert_eq!(parse(r#""alice""#).unwrap().as_str(), "alice");
        assert_eq!(parse("42").unwrap().as_str(), "42");
        assert_eq!(
            parse("18446744073709551615").unwrap().as_str(),
            "18446744073709551615"
        );
        for bad in [
            r#""a b""#,
            r#""""#,
            "-1",
            "1.5",
            "true",
            "null",
            "[]",
            r#"{"id":1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let error = parse(r#""josé""#).unwrap_err().to_string();
        assert!(error.contains("member id"), "{error}");
    }

    #[test]
    fn kinds_and_idempotency_keys_are_bounded() {
        assert_eq!(Kind::default().as_str(), "notification");
        assert!("x".repeat(128).parse::<Kind>().is_ok());
        assert!(
            "é".repeat(128).parse::<Kind>().is_ok(),
            "characters, not bytes"
        );
        assert!("x".repeat(129).parse::<Kind>().is_err());
        assert!("".parse::<Kind>().is_err());
        assert!(serde_json::from_str::<Kind>("7").is_err());
        assert!("k".repeat(255).parse::<IdempotencyKey>().is_ok());
        for bad in ["", "a b", "é", "tab\t"] {
            assert!(bad.parse::<IdempotencyKey>().is_err(), "{bad:?}");
        }
        assert!("k".repeat(256).parse::<IdempotencyKey>().is_err());
        assert!(IdempotencyKey::from_bytes(b"\xff").is_err());
    }

    #[test]
    fn member_ids_follow_the_contract_alphabet() {
        assert!("42".parse::<MemberId>().is_ok());
        assert!("a.b_c-d@e".parse::<MemberId>().is_ok());
        assert!("x".repeat(128).parse::<MemberId>().is_ok());
        for bad in ["", "a b", "a:b", "{42}", "é", &"x".repeat(129)] {
            assert!(bad.parse::<MemberId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resume_precedence_is_header_then_query_then_last_message() {
        let hints = ResumeHints {
            last_event_id_header: Some("5-1"),
            last_event_id_query: Some("4-0"),
            last_message: Some("3"),
        };
        assert_eq!(
            Resume::from_hints(hints),
            Ok(Resume::After(StreamId::new(5, 1)))
        );
        let hints = ResumeHints {
            last_event_id_header: Some(""),
            ..hints
        };
        assert_eq!(
            Resume::from_hints(hints),
            Ok(Resume::After(StreamId::new(4, 0)))
        );
        let hints = ResumeHints {
            last_event_id_query: None,
            ..hints
        };
        assert_eq!(
            Resume::from_hints(hints),
            Ok(Resume::Since(StreamId::new(2, u64::MAX)))
        );
        let empty = ResumeHints {
            last_message: Some("empty"),
            ..Default::default()
        };
        assert_eq!(Resume::from_hints(empty), Ok(Resume::Fresh));
        assert_eq!(
            Resume::from_hints(ResumeHints::default()),
            Ok(Resume::Fresh)
        );
        let zero = ResumeHints {
            last_message: Some("0"),
            ..Default::default()
        };
        assert_eq!(Resume::from_hints(zero), Ok(Resume::Since(StreamId::ZERO)));
    }

    #[test]
    fn malformed_positions_are_errors() {
        for bad in [
            "abc",
            "1",
            "1-",
            "-1",
            "1-2-3",
            "+1-0",
            "1 -0",
            "99999999999999999999-0",
            "18446744073709551615-18446744073709551615",
        ] {
            let hints = ResumeHints {
                last_event_id_header: Some(bad),
                ..Default::default()
            };
            assert!(Resume::from_hints(hints).is_err(), "{bad:?} accepted");
        }
        let hints = ResumeHints {
            last_message: Some("yesterday"),
            ..Default::default()
        };
        assert_eq!(Resume::from_hints(hints), Err(InvalidResume::LastMessage));
    }

    #[test]
    fn frames_append_and_split_only_content_with_raw_line_breaks() {
        let member: MemberId = "42".parse().unwrap();
        let mut entry = Entry {
            id: StreamId::new(5, 1),
            prev: StreamId::ZERO,
            kind: "follow".into(),
            content: r#"{"a":"x\ny"}"#.into(),
        };
        let mut out = String::from(": before\n\n");
        push_notification_frame(&entry, &member, &mut out);
        assert_eq!(
            out,
            ": before\n\nid: 5-1\nevent: notification\ndata: {\"id\":\"5-1\",\"member_id\":\"42\",\"type\":\"follow\",\"content\":{\"a\":\"x\\ny\"},\"time\":5}\n\n"
        );
        entry.content = "{\n\"a\": 1\r\n}".into(); // stored pretty by an older writer
        assert_eq!(
            notification_frame(&entry, &member),
            "id: 5-1\nevent: notification\ndata: {\"id\":\"5-1\",\"member_id\":\"42\",\"type\":\"follow\",\"content\":{\ndata: \"a\": 1\ndata: },\"time\":5}\n\n"
        );
    }

    fn compact(text: &str) -> String {
        compact_json(&serde_json::from_str::<Box<serde_json::value::RawValue>>(text).unwrap())
    }

    #[test]
    fn content_a_json_parser_would_refuse_is_refused() {
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            r#""\ud800""#,
            r#"{"a":["x\udc00y"]}"#,
            "1e400",
            "-1e400",
            &nested,
        ] {
            let raw = serde_json::from_str::<Box<serde_json::value::RawValue>>(bad);
            // serde_json's own syntax check lets these through; the content check must not.
            let raw = raw.unwrap_or_else(|error| panic!("{bad:.20}: {error}"));
            assert!(content_text(&raw).is_err(), "{bad:.20} accepted");
        }
        let fine = serde_json::from_str::<Box<serde_json::value::RawValue>>(
            r#"{"a": [1e300, "\ud83d\ude00", 123456789012345678901234567890, null, true]}"#,
        )
        .unwrap();
        assert_eq!(
            content_text(&fine).unwrap(),
            r#"{"a":[1e300,"\ud83d\ude00",123456789012345678901234567890,null,true]}"#
        );
    }

    #[test]
    fn content_is_stored_as_sent_without_the_whitespace_between_tokens() {
        assert_eq!(
            compact("{\n  \"b\": [1, 2.50],\r\n\t\"a\": \"x y\\\" \\\\ \\n\"\n}"),
            r#"{"b":[1,2.50],"a":"x y\" \\ \n"}"#
        );
        assert_eq!(
            compact("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(compact(" null "), "null");
        assert_eq!(compact(r#"" \u00e9 ""#), r#"" \u00e9 ""#);
    }

    proptest! {
        #[test]
        fn compacting_pretty_json_gives_the_compact_serialization(value in json_value()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            prop_assert_eq!(compact(&pretty), serde_json::to_string(&value).unwrap());
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~\\n\"\\\\é]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z \"]{0,4}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn stream_ids_round_trip(ms: u64, seq: u64) {
            let id = StreamId::new(ms, seq);
            prop_assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
        }

        #[test]
        fn stream_id_parsing_never_panics(s in "\\PC{0,30}") {
            let _ = s.parse::<StreamId>();
        }

        #[test]
        fn data_lines_never_break_framing(payload in "[a-z\r\n:{}\" ]{0,40}") {
            let mut out = String::new();
            write_data_lines(&payload, &mut out);
            // Every line is a data line, and the frame has no blank line (no early dispatch).
            let body = out.strip_suffix('\n').unwrap();
            let lines: Vec<&str> = body.split('\n').collect();
            prop_assert!(lines.iter().all(|l| l.starts_with("data: ") && !l.contains('\r')));
            // Joined back as a browser does, the payload keeps its content up to line-break style.
            let joined: Vec<&str> = lines.iter().map(|l| &l[6..]).collect();
            prop_assert_eq!(joined.join("\n"), payload.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }
}
