//! Bad events, one of each kind the worker must dead-letter. Each is a (key, value) pair.

use leafsync_core::ImageId;

/// The kinds, named as the worker's `leafsync.error.kind` header names them.
pub const KINDS: &[&str] = &[
    "not_utf8",
    "not_json",
    "not_object",
    "tombstone",
    "missing_field",
    "invalid_id",
    "bad_timestamp",
    "wrong_type",
    "too_large",
    "key_mismatch",
];

/// The `n`-th poison event for image `id` (kinds in rotation): key and value (`None`: null).
pub fn poison(
    n: u64,
    id: ImageId,
    max_event_bytes: usize,
) -> (&'static str, Vec<u8>, Option<Vec<u8>>) {
    let kind = KINDS[(n % KINDS.len() as u64) as usize];
    let key = id.key().into_bytes();
    let ts = "2025-06-01T00:00:00Z";
    let value: Option<Vec<u8>> = match kind {
        "not_utf8" => Some(vec![0xff, 0xfe, b'{']),
        "not_json" => Some(b"{\"id\": 1,".to_vec()),
        "not_object" => Some(b"[1, 2, 3]".to_vec()),
        "tombstone" => None,
        "missing_field" => Some(format!(r#"{{"id": {id}}}"#).into_bytes()),
        "invalid_id" => Some(format!(r#"{{"id": -{id}, "updated_at": "{ts}"}}"#).into_bytes()),
        "bad_timestamp" => {
            Some(format!(r#"{{"id": {id}, "updated_at": "last tuesday"}}"#).into_bytes())
        }
        "wrong_type" => {
            Some(format!(r#"{{"id": {id}, "updated_at": "{ts}", "size": "huge"}}"#).into_bytes())
        }
        "too_large" => Some(
            format!(
                r#"{{"id": {id}, "updated_at": "{ts}", "pad": "{}"}}"#,
                "x".repeat(max_event_bytes)
            )
            .into_bytes(),
        ),
        _ => {
            // key_mismatch: a valid event whose key names another image.
            return (
                kind,
                format!("{}", id.get().saturating_add(1)).into_bytes(),
                Some(format!(r#"{{"id": {id}, "updated_at": "{ts}"}}"#).into_bytes()),
            );
        }
    };
    (kind, key, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leafsync_core::ImageEvent;

    #[test]
    fn every_poison_is_refused_with_its_own_kind() {
        let id = ImageId::new(42).unwrap();
        for n in 0..KINDS.len() as u64 {
            let (kind, key, value) = poison(n, id, 1000);
            let e = ImageEvent::decode_message(Some(&key), value.as_deref(), 1000).unwrap_err();
            assert_eq!(e.kind(), kind);
        }
    }
}
