//! `ImageEvent`: the JSON value of one Kafka message — the contract with producers
//! (`docs/events.md`). Decoding is strict and says exactly what is wrong, because a bad event is
//! dead-lettered with that reason and a person reads it.

use std::fmt;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::image::ImageId;

/// Default upper bound for one event's JSON value, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One create, update or soft delete of an image: the full current state of its row.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEvent {
    /// The image's id; also the Kafka message key.
    pub id: ImageId,
    /// When the producer last changed the row; orders the versions of one image.
    /// Truncated to milliseconds, the precision MongoDB stores.
    pub updated_at: DateTime<Utc>,
    /// Soft delete: the image stays, marked deleted.
    pub deleted: bool,
    /// File name, e.g. `potato_2153.jpg`.
    pub name: Option<String>,
    /// Where the image file lives.
    pub url: Option<String>,
    /// File size in bytes.
    pub size: Option<i64>,
    /// Width in pixels.
    pub width: Option<i64>,
    /// Height in pixels.
    pub height: Option<i64>,
    /// Disease label, e.g. `early_blight`.
    pub label: Option<String>,
    /// Who uploaded it.
    pub user_id: Option<i64>,
    /// When the row was created (milliseconds).
    pub created_at: Option<DateTime<Utc>>,
    /// Fields this version of leafsync does not know; kept as they came.
    pub extra: Map<String, Value>,
}

/// Why a message is not a valid event. Every variant is a *bad event*: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value is larger than the configured limit.
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the value.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A null value (Kafka tombstone); leafsync events are never null.
    #[error("event has no value (a tombstone); soft deletes are events with \"deleted\": true")]
    Tombstone,
    /// The bytes are not UTF-8.
    #[error("event is not valid UTF-8: {0}")]
    NotUtf8(String),
    /// The text is not JSON.
    #[error("event is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("event must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// A required field is absent (or null).
    #[error("event has no \"{0}\" field")]
    MissingField(&'static str),
    /// `id` is not an integer from 1 to i64::MAX.
    #[error("\"id\" must be an integer from 1 to 9223372036854775807, got {0}")]
    InvalidId(String),
    /// A timestamp field is not RFC 3339.
    #[error(
        "\"{field}\" must be an RFC 3339 timestamp like 2025-12-10T20:21:54.123Z, got {value}"
    )]
    BadTimestamp {
        /// The field.
        field: &'static str,
        /// What was there (shortened).
        value: String,
    },
    /// A known field has the wrong JSON type or range.
    #[error("\"{field}\" must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What the contract says.
        expected: &'static str,
        /// What was there (shortened).
        got: String,
    },
    /// A field name MongoDB reserves.
    #[error("field name {0:?} is reserved (no \"_id\", no leading \"$\", no NUL character)")]
    ReservedField(String),
    /// The Kafka key is not the decimal id, so the event may sit in the wrong partition.
    #[error("message key {key} does not match event id {id}")]
    KeyMismatch {
        /// The key as received (shortened), or `(none)`.
        key: String,
        /// The id in the value.
        id: ImageId,
    },
}

impl DecodeError {
    /// A stable, machine-readable name, used in the dead-letter headers and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Tombstone => "tombstone",
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject(_) => "not_object",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidId(_) => "invalid_id",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::ReservedField(_) => "reserved_field",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

/// Shortens `s` for an error message; events can be large and a reason must stay readable.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => shorten(&format!("{s:?}")),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    // Truncation cannot overflow for any timestamp chrono parses from RFC 3339.
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

/// Parses an RFC 3339 timestamp, truncated to milliseconds.
pub(crate) fn parse_timestamp(
    field: &'static str,
    v: &Value,
) -> Result<DateTime<Utc>, DecodeError> {
    let bad = || DecodeError::BadTimestamp {
        field,
        value: describe(v),
    };
    let s = v.as_str().ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
    Ok(to_millis(t.with_timezone(&Utc)))
}

/// The contract's fields, in the order [`ImageEvent::from_fields`] checks them.
const KNOWN: [&str; 11] = [
    "id",
    "updated_at",
    "deleted",
    "name",
    "url",
    "size",
    "width",
    "height",
    "label",
    "user_id",
    "created_at",
];

/// Where `name` sits in [`KNOWN`], if it is a contract field.
fn known_index(name: &str) -> Option<usize> {
    KNOWN.iter().position(|n| *n == name)
}

/// An event object read in one pass: each known field into its slot, the rest into `extra`.
/// Reading the object into a `serde_json::Value` first built a map of every field only to take
/// the known ones out again: the larger part of the worker's instructions per event
/// (docs/benchmarks.md, "CPU per event"). A repeated name keeps its last value, as a map did.
#[derive(Default)]
struct Fields {
    known: [Option<Value>; KNOWN.len()],
    extra: Map<String, Value>,
}

/// A message's top-level JSON value: an object's fields, or the kind of anything else.
#[expect(
    clippy::large_enum_variant,
    reason = "one lives for one decode; a box would cost an allocation per event"
)]
enum TopLevel {
    Object(Fields),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        // Read to the end, so that bad JSON inside is still "not valid JSON".
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut f = Fields::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value: Value = map.next_value()?;
            match key {
                Key::Known(i) => f.known[i] = Some(value),
                Key::Extra(k) => {
                    f.extra.insert(k, value);
                }
            }
        }
        Ok(TopLevel::Object(f))
    }
}

/// A field name: one of [`KNOWN`] (no allocation) or an unknown one.
enum Key {
    Known(usize),
    Extra(String),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
        Ok(match known_index(k) {
            Some(i) => Key::Known(i),
            None => Key::Extra(k.to_owned()),
        })
    }
}

impl Fields {
    /// Takes a known field; JSON null counts as absent, as producers emit null for empty columns.
    fn take(&mut self, field: &str) -> Option<Value> {
        self.known[known_index(field)?]
            .take()
            .filter(|v| !v.is_null())
    }

    fn string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(DecodeError::WrongType {
                field,
                expected: "a string",
                got: describe(&other),
            }),
        }
    }

    fn non_negative(&mut self, field: &'static str) -> Result<Option<i64>, DecodeError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n)),
                _ => Err(DecodeError::WrongType {
                    field,
                    expected: "a non-negative integer",
                    got: describe(&v),
                }),
            },
        }
    }

    fn boolean(&mut self, field: &'static str) -> Result<Option<bool>, DecodeError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(DecodeError::WrongType {
                field,
                expected: "true or false",
                got: describe(&other),
            }),
        }
    }

    fn timestamp(&mut self, field: &'static str) -> Result<Option<DateTime<Utc>>, DecodeError> {
        self.take(field)
            .map(|v| parse_timestamp(field, &v))
            .transpose()
    }
}

impl ImageEvent {
    /// Decodes one Kafka message: `key` must be the decimal id, `value` the JSON event of at most
    /// `max_bytes` bytes.
    pub fn decode_message(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Self, DecodeError> {
        let event = Self::decode(value.ok_or(DecodeError::Tombstone)?, max_bytes)?;
        if key != Some(event.id.key().as_bytes()) {
            let key = match key {
                None => "(none)".to_owned(),
                Some(k) => shorten(&format!("{:?}", String::from_utf8_lossy(k))),
            };
            return Err(DecodeError::KeyMismatch { key, id: event.id });
        }
        Ok(event)
    }

    /// Decodes one event's JSON value of at most `max_bytes` bytes.
    pub fn decode(value: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
        if value.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: value.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(value).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
        match serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))? {
            TopLevel::Object(fields) => Self::from_fields(fields),
            TopLevel::Other(kind) => Err(DecodeError::NotObject(kind)),
        }
    }

    fn from_fields(mut f: Fields) -> Result<Self, DecodeError> {
        let id = match f.take("id") {
            None => return Err(DecodeError::MissingField("id")),
            Some(v) => v
                .as_i64()
                .and_then(|n| ImageId::new(n).ok())
                .ok_or_else(|| DecodeError::InvalidId(describe(&v)))?,
        };
        let updated_at = f
            .timestamp("updated_at")?
            .ok_or(DecodeError::MissingField("updated_at"))?;
        let event = ImageEvent {
            id,
            updated_at,
            deleted: f.boolean("deleted")?.unwrap_or(false),
            name: f.string("name")?,
            url: f.string("url")?,
            size: f.non_negative("size")?,
            width: f.non_negative("width")?,
            height: f.non_negative("height")?,
            label: f.string("label")?,
            user_id: f.non_negative("user_id")?,
            created_at: f.timestamp("created_at")?,
            extra: f.extra,
        };
        if let Some(k) = event
            .extra
            .keys()
            .find(|k| *k == "_id" || k.starts_with('$') || k.is_empty())
        {
            return Err(DecodeError::ReservedField(shorten(k)));
        }
        // BSON field names are C strings: a NUL anywhere in a name cannot be stored.
        if let Some(k) = event.extra.iter().find_map(|(k, v)| nul_key(k, v)) {
            return Err(DecodeError::ReservedField(shorten(k)));
        }
        Ok(event)
    }

    /// The event as JSON, in the contract's shape (timestamps RFC 3339 with milliseconds).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id.get().into());
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("name", self.name.clone().map(Value::from));
        put("url", self.url.clone().map(Value::from));
        put("size", self.size.map(Value::from));
        put("width", self.width.map(Value::from));
        put("height", self.height.map(Value::from));
        put("label", self.label.clone().map(Value::from));
        put("user_id", self.user_id.map(Value::from));
        put("deleted", Some(self.deleted.into()));
        put(
            "created_at",
            self.created_at.map(|t| format_timestamp(t).into()),
        );
        put("updated_at", Some(format_timestamp(self.updated_at).into()));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// Formats a timestamp the way the contract writes them: RFC 3339, UTC, milliseconds.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The first field name, at any depth, that contains a NUL character.
fn nul_key<'a>(key: &'a str, value: &'a Value) -> Option<&'a str> {
    if key.contains('\0') {
        return Some(key);
    }
    match value {
        Value::Object(m) => m.iter().find_map(|(k, v)| nul_key(k, v)),
        Value::Array(a) => a.iter().find_map(|v| nul_key("", v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"{"id": 2153, "name": "potato_2153.jpg", "url": "https://img.example/potato_2153.jpg",
        "size": 48213, "width": 256, "height": 256, "label": "early_blight", "user_id": 17,
        "deleted": false, "created_at": "2025-12-10T20:21:54.123Z",
        "updated_at": "2025-12-10T20:21:54.123Z", "camera": {"model": "X"}}"#;

    fn decode(s: &str) -> Result<ImageEvent, DecodeError> {
        ImageEvent::decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES)
    }

    #[test]
    fn decodes_the_documented_sample() {
        let e = decode(SAMPLE).unwrap();
        assert_eq!(e.id.get(), 2153);
        assert_eq!(e.name.as_deref(), Some("potato_2153.jpg"));
        assert_eq!(e.size, Some(48213));
        assert_eq!((e.width, e.height), (Some(256), Some(256)));
        assert_eq!(e.label.as_deref(), Some("early_blight"));
        assert_eq!(e.user_id, Some(17));
        assert!(!e.deleted);
        assert_eq!(format_timestamp(e.updated_at), "2025-12-10T20:21:54.123Z");
        assert_eq!(e.created_at, Some(e.updated_at));
        assert_eq!(
            e.extra.get("camera"),
            Some(&serde_json::json!({"model": "X"}))
        );
    }

    #[test]
    fn minimal_event_and_nulls() {
        let e = decode(r#"{"id":1,"updated_at":"2025-01-01T00:00:00+02:00","name":null}"#).unwrap();
        assert_eq!(e.id.get(), 1);
        assert_eq!(format_timestamp(e.updated_at), "2024-12-31T22:00:00.000Z");
        assert_eq!(e.name, None);
        assert!(!e.deleted);
        assert!(e.extra.is_empty());
    }

    #[test]
    fn timestamps_are_truncated_to_milliseconds() {
        let e = decode(r#"{"id":1,"updated_at":"2025-01-01T00:00:00.123999Z"}"#).unwrap();
        assert_eq!(format_timestamp(e.updated_at), "2025-01-01T00:00:00.123Z");
    }

    #[test]
    fn every_bad_input_has_its_own_reason() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"\xff\xfe", "not_utf8", "not valid UTF-8"),
            (b"{\"id\":", "not_json", "not valid JSON"),
            (
                b"[1,2]",
                "not_object",
                "must be a JSON object, got an array",
            ),
            (b"\"x\"", "not_object", "got a string"),
            (b"null", "not_object", "got null"),
            (
                br#"{"updated_at":"2025-01-01T00:00:00Z"}"#,
                "missing_field",
                "no \"id\"",
            ),
            (br#"{"id":1}"#, "missing_field", "no \"updated_at\""),
            (
                br#"{"id":0,"updated_at":"2025-01-01T00:00:00Z"}"#,
                "invalid_id",
                "got 0",
            ),
            (
                br#"{"id":-5,"updated_at":"2025-01-01T00:00:00Z"}"#,
                "invalid_id",
                "got -5",
            ),
            (
                br#"{"id":1.5,"updated_at":"2025-01-01T00:00:00Z"}"#,
                "invalid_id",
                "got 1.5",
            ),
            (
                br#"{"id":"7","updated_at":"2025-01-01T00:00:00Z"}"#,
                "invalid_id",
                "got \"7\"",
            ),
            (
                br#"{"id":18446744073709551615,"updated_at":"2025-01-01T00:00:00Z"}"#,
                "invalid_id",
                "got 18446744073709551615",
            ),
            (
                br#"{"id":1,"updated_at":"yesterday"}"#,
                "bad_timestamp",
                "\"updated_at\" must be an RFC 3339",
            ),
            (
                br#"{"id":1,"updated_at":1733860914}"#,
                "bad_timestamp",
                "got 1733860914",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","created_at":"2025-13-01"}"#,
                "bad_timestamp",
                "\"created_at\"",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","size":"big"}"#,
                "wrong_type",
                "\"size\" must be a non-negative integer, got \"big\"",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","width":-1}"#,
                "wrong_type",
                "\"width\" must be a non-negative integer, got -1",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","deleted":"yes"}"#,
                "wrong_type",
                "\"deleted\" must be true or false",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","label":3}"#,
                "wrong_type",
                "\"label\" must be a string, got 3",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","_id":3}"#,
                "reserved_field",
                "\"_id\"",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","$set":{}}"#,
                "reserved_field",
                "\"$set\"",
            ),
            (
                br#"{"id":1,"updated_at":"2025-01-01T00:00:00Z","meta":[{"a\u0000b":1}]}"#,
                "reserved_field",
                r#""a\0b""#,
            ),
        ];
        for (input, kind, text) in cases {
            let e = ImageEvent::decode(input, DEFAULT_MAX_EVENT_BYTES).unwrap_err();
            assert_eq!(e.kind(), *kind, "{:?}", String::from_utf8_lossy(input));
            assert!(e.to_string().contains(text), "{e} should contain {text}");
        }
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let e = ImageEvent::decode(SAMPLE.as_bytes(), 10).unwrap_err();
        assert_eq!(e.kind(), "too_large");
        assert!(e.to_string().contains("over the limit of 10 bytes"));
    }

    #[test]
    fn message_key_must_be_the_decimal_id() {
        let v = br#"{"id":42,"updated_at":"2025-01-01T00:00:00Z"}"#;
        let max = DEFAULT_MAX_EVENT_BYTES;
        assert!(ImageEvent::decode_message(Some(b"42"), Some(v), max).is_ok());
        let e = ImageEvent::decode_message(Some(b"43"), Some(v), max).unwrap_err();
        assert_eq!(
            e.to_string(),
            "message key \"43\" does not match event id 42"
        );
        let e = ImageEvent::decode_message(None, Some(v), max).unwrap_err();
        assert_eq!(e.kind(), "key_mismatch");
        let e = ImageEvent::decode_message(Some(b"042"), Some(v), max).unwrap_err();
        assert_eq!(e.kind(), "key_mismatch");
        let e = ImageEvent::decode_message(Some(b"42"), None, max).unwrap_err();
        assert_eq!(e, DecodeError::Tombstone);
    }

    #[test]
    fn to_json_round_trips() {
        let e = decode(SAMPLE).unwrap();
        let again = decode(&e.to_json().to_string()).unwrap();
        assert_eq!(e, again);
    }

    /// The decoder as it was before the one-pass read: the whole value as a `serde_json::Value`,
    /// then the object's fields split into known and unknown. The oracle for the one-pass read.
    fn decode_via_value(text: &str) -> Result<ImageEvent, DecodeError> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let map = match json {
            Value::Object(map) => map,
            Value::Null => return Err(DecodeError::NotObject("null")),
            Value::Bool(_) => return Err(DecodeError::NotObject("a boolean")),
            Value::Number(_) => return Err(DecodeError::NotObject("a number")),
            Value::String(_) => return Err(DecodeError::NotObject("a string")),
            Value::Array(_) => return Err(DecodeError::NotObject("an array")),
        };
        let mut f = Fields::default();
        for (k, v) in map {
            match known_index(&k) {
                Some(i) => f.known[i] = Some(v),
                None => {
                    f.extra.insert(k, v);
                }
            }
        }
        ImageEvent::from_fields(f)
    }

    /// A JSON value of the kinds producers send, valid for a field or not.
    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-3i64..5_000).prop_map(|n| n.to_string()),
            Just("9223372036854775808".to_owned()),
            Just("1.5".to_owned()),
            Just(r#""2025-12-10T20:21:54.123Z""#.to_owned()),
            Just(r#""not a time""#.to_owned()),
            Just(r#"{"a":[1,{"b":null}]}"#.to_owned()),
            Just(r#"["x",2]"#.to_owned()),
        ]
    }

    proptest! {
        // The one-pass read decides every object exactly as reading a `Value` first did: same
        // event or same error, with repeated names, nulls and wrong types.
        #[test]
        fn one_pass_read_equals_reading_a_value_first(
            fields in proptest::collection::vec(
                (prop::sample::select(vec!["id", "updated_at", "deleted", "name", "size", "user_id",
                    "created_at", "label", "camera", "_id", "$x", ""]), json_value()),
                0..8,
            ),
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            let text = format!("{{{}}}", body.join(","));
            prop_assert_eq!(decode(&text), decode_via_value(&text));
        }

        // And anything else, JSON or not, gets the same answer too.
        #[test]
        fn one_pass_read_equals_reading_a_value_first_for_any_text(text in r#"[\[\]{}":,0-9a-z .\-]{0,40}"#) {
            prop_assert_eq!(decode(&text), decode_via_value(&text));
        }

        // Arbitrary bytes never panic the decoder; any success is a well-formed event.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(e) = ImageEvent::decode(&bytes, DEFAULT_MAX_EVENT_BYTES) {
                prop_assert!(e.id.get() >= 1);
            }
        }

        // Any JSON object with a valid id and timestamp decodes, and keeps its unknown fields.
        #[test]
        fn valid_events_decode(id in 1i64..=i64::MAX, secs in 0i64..4_000_000_000, extra in "[a-z]{1,8}", val in any::<i32>()) {
            let ts = DateTime::from_timestamp(secs, 0).unwrap();
            let known = ["name","url","size","width","height","label","user_id","deleted","created_at","updated_at","id"];
            prop_assume!(!known.contains(&extra.as_str()));
            let json = serde_json::json!({"id": id, "updated_at": format_timestamp(ts), extra.clone(): val});
            let e = decode(&json.to_string()).unwrap();
            prop_assert_eq!(e.id.get(), id);
            prop_assert_eq!(e.updated_at, ts);
            prop_assert_eq!(e.extra.get(&extra), Some(&Value::from(val)));
        }
    }
}
