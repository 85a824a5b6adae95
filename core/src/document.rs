//! How an image is stored in MongoDB and shown over HTTP: BSON with `id` as Int64 and
//! timestamps as BSON dates (never strings, so they compare and index as dates).

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, RawBson, RawBsonRef, RawDocumentBuf};
use serde_json::{Map, Value};

use crate::event::{format_timestamp, ImageEvent};

/// The fields every stored document keeps, whatever the projection: identity, version, state.
pub const ALWAYS_KEPT: [&str; 3] = ["id", "updated_at", "deleted"];

/// A BSON date from a chrono timestamp (millisecond precision).
pub fn bson_date(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// JSON → BSON without extended-JSON interpretation: `{"$oid": …}` stays a plain object.
pub fn json_to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            // u64 above i64::MAX and floats: the nearest double.
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(json_to_bson).collect()),
        Value::Object(o) => Bson::Document(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_bson(v)))
                .collect(),
        ),
    }
}

/// BSON → JSON for clients: dates as RFC 3339 with milliseconds, numbers as numbers.
pub fn bson_to_json(v: &Bson) -> Value {
    match v {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(a) => Value::Array(a.iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(document_fields_to_json(d)),
        Bson::DateTime(d) => Value::String(
            DateTime::from_timestamp_millis(d.timestamp_millis())
                .map_or_else(|| d.timestamp_millis().to_string(), format_timestamp),
        ),
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        other => other.clone().into_relaxed_extjson(),
    }
}

fn document_fields_to_json(d: &Document) -> Map<String, Value> {
    d.iter()
        .map(|(k, v)| (k.clone(), bson_to_json(v)))
        .collect()
}

/// A stored image as clients see it: every field but MongoDB's internal `_id`.
pub fn document_to_json(d: &Document) -> Value {
    let mut m = document_fields_to_json(d);
    m.remove("_id");
    Value::Object(m)
}

/// Which fields of an event reach the database (`None`: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection(Option<Vec<String>>);

impl Projection {
    /// Keeps only `fields` (plus [`ALWAYS_KEPT`]).
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(fields: I) -> Self {
        Self(Some(fields.into_iter().map(Into::into).collect()))
    }

    /// Keeps every field.
    pub fn all() -> Self {
        Self(None)
    }

    fn keeps(&self, field: &str) -> bool {
        match &self.0 {
            None => true,
            Some(list) => ALWAYS_KEPT.contains(&field) || list.iter().any(|f| f == field),
        }
    }
}

impl ImageEvent {
    /// The document to store for this event, with only the fields `projection` keeps.
    pub fn to_document(&self, projection: &Projection) -> Document {
        let mut d = Document::new();
        let mut put = |k: &str, v: Option<Bson>| {
            if let Some(v) = v.filter(|_| projection.keeps(k)) {
                d.insert(k, v);
            }
        };
        put("id", Some(Bson::Int64(self.id.get())));
        put("name", self.name.clone().map(Bson::String));
        put("url", self.url.clone().map(Bson::String));
        put("size", self.size.map(Bson::Int64));
        put("width", self.width.map(Bson::Int64));
        put("height", self.height.map(Bson::Int64));
        put("label", self.label.clone().map(Bson::String));
        put("user_id", self.user_id.map(Bson::Int64));
        put("deleted", Some(Bson::Boolean(self.deleted)));
        put(
            "created_at",
            self.created_at.map(|t| Bson::DateTime(bson_date(t))),
        );
        put(
            "updated_at",
            Some(Bson::DateTime(bson_date(self.updated_at))),
        );
        for (k, v) in &self.extra {
            put(k, Some(json_to_bson(v)));
        }
        d
    }

    /// [`to_document`](Self::to_document) encoded as BSON bytes, the same bytes: what the worker
    /// holds while a batch is in flight (one buffer instead of a map of boxed values, several
    /// times smaller). Written field by field, because building the `Document` first and then
    /// encoding it was a third of the worker's instructions per event (docs/benchmarks.md).
    /// Fails only for what BSON cannot encode, which the decoder already refuses.
    pub fn to_raw_document(&self, projection: &Projection) -> bson::raw::Result<RawDocumentBuf> {
        // `append` panics on a NUL in a key; the decoder refuses those, but a hand-built event
        // gets the encoder's error instead of a panic.
        if self.extra.keys().any(|k| k.contains('\0')) {
            return RawDocumentBuf::from_document(&self.to_document(projection));
        }
        let mut d = RawDocumentBuf::new();
        let mut put = |k: &str, v: Option<RawBsonRef<'_>>| {
            if let Some(v) = v.filter(|_| projection.keeps(k)) {
                d.append_ref(k, v);
            }
        };
        let date = |t: DateTime<Utc>| RawBsonRef::DateTime(bson_date(t));
        put("id", Some(RawBsonRef::Int64(self.id.get())));
        put("name", self.name.as_deref().map(RawBsonRef::String));
        put("url", self.url.as_deref().map(RawBsonRef::String));
        put("size", self.size.map(RawBsonRef::Int64));
        put("width", self.width.map(RawBsonRef::Int64));
        put("height", self.height.map(RawBsonRef::Int64));
        put("label", self.label.as_deref().map(RawBsonRef::String));
        put("user_id", self.user_id.map(RawBsonRef::Int64));
        put("deleted", Some(RawBsonRef::Boolean(self.deleted)));
        put("created_at", self.created_at.map(date));
        put("updated_at", Some(date(self.updated_at)));
        // Unknown fields are rare: the slower conversion through `Bson` is fine for them.
        for (k, v) in self.extra.iter().filter(|(k, _)| projection.keeps(k)) {
            let v = RawBson::try_from(json_to_bson(v))?;
            d.append_ref(k, v.as_raw_bson_ref());
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DEFAULT_MAX_EVENT_BYTES;

    fn event() -> ImageEvent {
        let json = r#"{"id":7,"name":"a.jpg","size":10,"deleted":true,"updated_at":"2025-12-10T20:21:54.123Z",
            "created_at":"2025-12-01T00:00:00Z","tags":["x",1.5],"meta":{"$oid":"abc"}}"#;
        ImageEvent::decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }

    #[test]
    fn timestamps_are_bson_dates_and_ids_int64() {
        let d = event().to_document(&Projection::all());
        assert!(matches!(d.get("updated_at"), Some(Bson::DateTime(_))));
        assert!(matches!(d.get("created_at"), Some(Bson::DateTime(_))));
        assert_eq!(d.get("id"), Some(&Bson::Int64(7)));
        assert_eq!(d.get("deleted"), Some(&Bson::Boolean(true)));
        // Unknown fields are kept, and `$oid` is not turned into an ObjectId.
        assert!(matches!(d.get("meta"), Some(Bson::Document(_))));
    }

    #[test]
    fn document_to_json_matches_the_event_json() {
        let e = event();
        let mut d = e.to_document(&Projection::all());
        d.insert("_id", bson::oid::ObjectId::new());
        assert_eq!(document_to_json(&d), e.to_json());
    }

    #[test]
    fn raw_document_equals_the_document() {
        let e = event();
        let raw = e.to_raw_document(&Projection::all()).unwrap();
        assert_eq!(
            raw.to_document().unwrap(),
            e.to_document(&Projection::all())
        );
    }

    #[test]
    fn a_nul_in_a_field_name_is_an_error_not_a_panic() {
        let mut e = event();
        e.extra.insert("a\0b".into(), Value::from(1));
        assert!(e.to_raw_document(&Projection::all()).is_err());
        let mut nested = event();
        nested
            .extra
            .insert("x".into(), serde_json::json!([{"a\0b": 1}]));
        assert!(nested.to_raw_document(&Projection::all()).is_err());
    }

    proptest::proptest! {
        /// The raw encoder writes byte for byte what encoding [`ImageEvent::to_document`] gives,
        /// whichever fields are present, unknown or projected away.
        #[test]
        fn raw_bytes_are_the_encoded_document(
            name in proptest::option::of("[a-z_.]{0,12}"),
            size in proptest::option::of(0i64..1 << 40),
            user_id in proptest::option::of(0i64..10_000),
            created in proptest::option::of(0i64..4_000_000_000_000),
            deleted in proptest::bool::ANY,
            extra in proptest::collection::btree_map("x[a-z]{0,5}", -1_000i64..1_000, 0..4),
            keep_name in proptest::bool::ANY,
        ) {
            let mut e = event();
            e.name = name;
            e.size = size;
            e.user_id = user_id;
            e.deleted = deleted;
            e.created_at = created.and_then(DateTime::from_timestamp_millis);
            for (k, v) in extra {
                e.extra.insert(k, Value::from(v));
            }
            let projections = [
                Projection::all(),
                Projection::only(if keep_name { vec!["name", "tags"] } else { vec!["size"] }),
            ];
            for p in &projections {
                let want = RawDocumentBuf::from_document(&e.to_document(p)).unwrap();
                let got = e.to_raw_document(p).unwrap();
                proptest::prop_assert_eq!(got.as_bytes(), want.as_bytes());
            }
        }
    }

    #[test]
    fn projection_keeps_listed_and_required_fields_only() {
        let d = event().to_document(&Projection::only(["name"]));
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "name", "deleted", "updated_at"]);
    }
}
