//! Where a backfill reads images from. A source hands out *pages* of raw documents in a stable
//! order and can say, after each page, a position to resume from; everything else (decoding,
//! the stale-guarded write, dead letters, the checkpoint) is the same for every source. Two
//! sources exist: a MongoDB database ([`MongoSource`]) and JSON Lines files ([`JsonLinesSource`]).

use std::future::Future;
use std::path::PathBuf;

use futures::TryStreamExt as _;
use leafsync_core::document::document_to_json;
use leafsync_core::{Store, StoreError};
use mongodb::bson::{doc, Bson, Document};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncSeekExt as _, BufReader};

use crate::dead_letter::header;

/// One document as the source holds it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The document in the event format (`docs/events.md`), as JSON bytes.
    pub payload: Vec<u8>,
    /// The image id, when the source can tell it without decoding (the dead letter's key).
    pub key: Option<String>,
    /// Where it is in the source (the dead letter's position headers).
    pub at: At,
}

/// A record's position in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// A MongoDB document, by its `_id`.
    Document(String),
    /// A line of a file, counted from 1.
    Line(u64),
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source database failed (its class says whether a retry may help).
    #[error(transparent)]
    Database(#[from] StoreError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A saved checkpoint does not fit this source (written by another version or source).
    #[error("checkpoint position {0} does not fit this source; run with --restart")]
    BadPosition(String),
}

impl SourceError {
    /// Whether retrying the same read may succeed (a database outage, not a missing file).
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Database(e) if e.is_transient())
    }
}

/// Where a source's documents are: its name for the checkpoint and logs (`Display`:
/// `mongodb:producer.potato_images`, `jsonl:/data/potato.jsonl`) and the dead-letter headers
/// that locate one of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A collection of a MongoDB database.
    Collection {
        /// The database.
        database: String,
        /// The collection.
        collection: String,
    },
    /// A file, by its absolute path.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Collection {
                database,
                collection,
            } => write!(f, "mongodb:{database}.{collection}"),
            Location::File(path) => write!(f, "jsonl:{}", path.display()),
        }
    }
}

impl Location {
    /// Dead-letter headers that locate `at` here.
    pub fn headers(&self, at: &At) -> Vec<(&'static str, String)> {
        let mut v = match self {
            Location::Collection {
                database,
                collection,
            } => vec![
                (header::SOURCE_DATABASE, database.clone()),
                (header::SOURCE_COLLECTION, collection.clone()),
            ],
            Location::File(path) => vec![(header::SOURCE_FILE, path.display().to_string())],
        };
        v.push(match at {
            At::Document(id) => (header::SOURCE_DOCUMENT_ID, id.clone()),
            At::Line(n) => (header::SOURCE_LINE, n.to_string()),
        });
        v
    }
}

/// A source of one image type's documents, read in pages in a stable order.
pub trait Source: Send {
    /// Where its documents are.
    fn location(&self) -> Location;
    /// The size of the whole source, when known, for the ETA: in bytes when
    /// [`bytes_read`](Self::bytes_read) counts progress, else in documents.
    fn size(&self) -> impl Future<Output = Result<Option<u64>, SourceError>> + Send;
    /// Continues after `position`, a value [`position`](Self::position) returned earlier.
    fn resume(
        &mut self,
        position: &Document,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// Up to `max` records after the current position; empty once the source is exhausted.
    /// On error the position is unchanged, so the same call can be retried.
    fn next_page(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Record>, SourceError>> + Send;
    /// The position after the last record returned (what the checkpoint saves).
    fn position(&self) -> Document;
    /// How far a file has been read, in bytes; `None` for a source whose progress is the
    /// number of documents read.
    fn bytes_read(&self) -> Option<u64>;
}

/// One collection of a MongoDB database (the producer database, or a restored dump), read in
/// `id` order with `_id` breaking ties. Documents whose `id` is not a number cannot be placed
/// in that order; they are read last, in `_id` order, and are refused by the decoder like any
/// other bad document (a range filter on `id` would silently skip them).
#[derive(Debug)]
pub struct MongoSource {
    store: Store,
    collection: String,
    phase: Phase,
    /// `(id, _id)` of the last document returned in the current phase.
    last: Option<(Bson, Bson)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Documents with a numeric `id`, by `(id, _id)`.
    ById,
    /// The rest, by `_id`.
    Other,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::ById => "by_id",
            Phase::Other => "other",
        }
    }
}

impl MongoSource {
    /// Reads `collection` of the database `store` points at.
    pub fn new(store: Store, collection: &str) -> Self {
        Self {
            store,
            collection: collection.to_owned(),
            phase: Phase::ById,
            last: None,
        }
    }

    fn filter(&self) -> Document {
        let numeric = doc! {"$type": "number"};
        match (self.phase, &self.last) {
            (Phase::ById, None) => doc! {"id": numeric},
            // Type bracketing: `$gt` on a number only matches numbers.
            (Phase::ById, Some((id, oid))) => doc! {"$or": [
                {"id": {"$gt": id.clone()}},
                {"id": id.clone(), "_id": {"$gt": oid.clone()}},
            ]},
            (Phase::Other, None) => doc! {"id": {"$not": numeric}},
            (Phase::Other, Some((_, oid))) => {
                doc! {"id": {"$not": numeric}, "_id": {"$gt": oid.clone()}}
            }
        }
    }

    fn sort(&self) -> Document {
        match self.phase {
            Phase::ById => doc! {"id": 1, "_id": 1},
            Phase::Other => doc! {"_id": 1},
        }
    }

    async fn page(&self, max: usize) -> Result<Vec<Document>, StoreError> {
        self.store
            .collection(&self.collection)
            .find(self.filter())
            .sort(self.sort())
            .limit(i64::try_from(max).unwrap_or(i64::MAX))
            .await
            .map_err(|e| StoreError::driver("find (backfill source)", e))?
            .try_collect()
            .await
            .map_err(|e| StoreError::driver("find (backfill source)", e))
    }
}

/// A document's `_id` as a dead-letter header shows it: hex for an ObjectId.
fn show_id(v: &Bson) -> String {
    match v {
        Bson::ObjectId(o) => o.to_hex(),
        Bson::String(s) => s.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

impl Source for MongoSource {
    fn location(&self) -> Location {
        Location::Collection {
            database: self.store.database().name().to_owned(),
            collection: self.collection.clone(),
        }
    }

    async fn size(&self) -> Result<Option<u64>, SourceError> {
        let n = self
            .store
            .collection(&self.collection)
            .estimated_document_count()
            .await
            .map_err(|e| StoreError::driver("count (backfill source)", e))?;
        Ok(Some(n))
    }

    async fn resume(&mut self, position: &Document) -> Result<(), SourceError> {
        let bad = || SourceError::BadPosition(position.to_string());
        self.phase = match position.get_str("phase").map_err(|_| bad())? {
            "by_id" => Phase::ById,
            "other" => Phase::Other,
            _ => return Err(bad()),
        };
        self.last = match (position.get("id"), position.get("_id")) {
            (Some(id), Some(oid)) => Some((id.clone(), oid.clone())),
            (None, None) => None,
            _ => return Err(bad()),
        };
        Ok(())
    }

    async fn next_page(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        let mut docs = self.page(max).await?;
        if docs.is_empty() && self.phase == Phase::ById {
            self.phase = Phase::Other;
            self.last = None;
            docs = self.page(max).await?;
        }
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            let oid = d.get("_id").cloned().unwrap_or(Bson::Null);
            let id = d.get("id").cloned().unwrap_or(Bson::Null);
            let key = match &id {
                Bson::Int32(i) => Some(i.to_string()),
                Bson::Int64(i) => Some(i.to_string()),
                _ => None,
            };
            // The stored form back to the event format: dates as RFC 3339, `_id` dropped.
            let payload = serde_json::to_vec(&document_to_json(&d)).unwrap_or_default();
            out.push(Record {
                payload,
                key,
                at: At::Document(show_id(&oid)),
            });
            self.last = Some((id, oid));
        }
        Ok(out)
    }

    fn position(&self) -> Document {
        let mut d = doc! {"phase": self.phase.as_str()};
        if let Some((id, oid)) = &self.last {
            d.insert("id", id.clone());
            d.insert("_id", oid.clone());
        }
        d
    }

    fn bytes_read(&self) -> Option<u64> {
        None
    }
}

/// A JSON Lines file: one image per line in the event format. Blank lines are skipped; every
/// other line is a document, including a last line cut short (the decoder refuses it and it
/// is dead-lettered with its line number). A line longer than the event size limit is not
/// held whole: its first bytes go to the decoder, which refuses it as too large.
#[derive(Debug)]
pub struct JsonLinesSource {
    path: PathBuf,
    reader: Option<BufReader<tokio::fs::File>>,
    max_line: u64,
    /// Byte offset after the last line returned.
    offset: u64,
    /// Number of the last line returned.
    line: u64,
}

impl JsonLinesSource {
    /// Reads `path`; lines over `max_event_bytes` are refused as too large.
    pub fn new(path: PathBuf, max_event_bytes: usize) -> Self {
        Self {
            path,
            reader: None,
            max_line: max_event_bytes as u64 + 1,
            offset: 0,
            line: 0,
        }
    }

    fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::File {
            path: self.path.display().to_string(),
            source,
        }
    }

    async fn open(&mut self) -> Result<&mut BufReader<tokio::fs::File>, SourceError> {
        if self.reader.is_none() {
            let mut f = tokio::fs::File::open(&self.path)
                .await
                .map_err(|e| self.io(e))?;
            f.seek(std::io::SeekFrom::Start(self.offset))
                .await
                .map_err(|e| self.io(e))?;
            self.reader = Some(BufReader::with_capacity(256 * 1024, f));
        }
        // Just set if it was empty.
        self.reader
            .as_mut()
            .ok_or_else(|| SourceError::BadPosition("no reader".into()))
    }

    /// The next line (without its line break) and the bytes it took; `None` at the end.
    async fn read_line(&mut self) -> Result<Option<(Vec<u8>, u64)>, SourceError> {
        let max = self.max_line;
        let reader = self.open().await?;
        let mut buf = Vec::new();
        let n = reader.take(max).read_until(b'\n', &mut buf).await;
        let mut n = n.map_err(|e| self.io(e))? as u64;
        if n == 0 {
            return Ok(None);
        }
        if n == max && buf.last() != Some(&b'\n') {
            // Too long: skip the rest of the line without holding it.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let reader = self.open().await?;
                let m = reader.take(max).read_until(b'\n', &mut rest).await;
                let m = m.map_err(|e| self.io(e))? as u64;
                n += m;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Ok(Some((buf, n)))
    }
}

impl Source for JsonLinesSource {
    fn location(&self) -> Location {
        Location::File(std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone()))
    }

    async fn size(&self) -> Result<Option<u64>, SourceError> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        Ok(Some(meta.len()))
    }

    async fn resume(&mut self, position: &Document) -> Result<(), SourceError> {
        let bad = || SourceError::BadPosition(position.to_string());
        let offset = position.get_i64("offset").map_err(|_| bad())?;
        let line = position.get_i64("line").map_err(|_| bad())?;
        self.offset = u64::try_from(offset).map_err(|_| bad())?;
        self.line = u64::try_from(line).map_err(|_| bad())?;
        self.reader = None;
        Ok(())
    }

    async fn next_page(&mut self, max: usize) -> Result<Vec<Record>, SourceError> {
        let (start_offset, start_line) = (self.offset, self.line);
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            match self.read_line().await {
                Ok(None) => break,
                Ok(Some((line, n))) => {
                    self.offset += n;
                    self.line += 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    out.push(Record {
                        payload: line,
                        key: None,
                        at: At::Line(self.line),
                    });
                }
                Err(e) => {
                    // Back to where the page started, so a retry reads the same lines.
                    self.offset = start_offset;
                    self.line = start_line;
                    self.reader = None;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn position(&self) -> Document {
        doc! {
            "offset": i64::try_from(self.offset).unwrap_or(i64::MAX),
            "line": i64::try_from(self.line).unwrap_or(i64::MAX),
        }
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_pages(s: &mut JsonLinesSource, page: usize) -> Vec<Vec<Record>> {
        let mut out = Vec::new();
        loop {
            let p = s.next_page(page).await.unwrap();
            if p.is_empty() {
                return out;
            }
            out.push(p);
        }
    }

    #[tokio::test]
    async fn json_lines_number_lines_skip_blanks_and_keep_a_cut_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("potato.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":").unwrap();
        let mut s = JsonLinesSource::new(path, 1024);
        let pages = all_pages(&mut s, 2).await;
        let got: Vec<(Vec<u8>, At)> = pages
            .concat()
            .into_iter()
            .map(|r| (r.payload, r.at))
            .collect();
        assert_eq!(
            got,
            [
                (b"{\"a\":1}".to_vec(), At::Line(1)),
                (b"{\"b\":2}".to_vec(), At::Line(4)),
                (b"{\"c\":".to_vec(), At::Line(5)),
            ]
        );
        assert_eq!(s.bytes_read(), s.size().await.unwrap());
    }

    #[tokio::test]
    async fn json_lines_resume_after_a_saved_position_reads_the_rest_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let text: String = (1..=7).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut first = JsonLinesSource::new(path.clone(), 1024);
        let p1 = first.next_page(3).await.unwrap();
        assert_eq!(p1.len(), 3);
        let saved = first.position();
        let mut second = JsonLinesSource::new(path, 1024);
        second.resume(&saved).await.unwrap();
        let rest = all_pages(&mut second, 3).await.concat();
        let lines: Vec<At> = rest.iter().map(|r| r.at.clone()).collect();
        assert_eq!(lines, [4, 5, 6, 7].map(At::Line));
        assert_eq!(rest[0].payload, b"{\"n\":4}");
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_cut_not_held_and_the_next_line_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(5000));
        std::fs::write(&path, format!("{big}\n{{\"ok\":1}}\n")).unwrap();
        let mut s = JsonLinesSource::new(path, 100);
        let recs = all_pages(&mut s, 10).await.concat();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload.len(), 101, "held only up to the limit + 1");
        assert_eq!(recs[1].payload, b"{\"ok\":1}");
        assert_eq!(recs[1].at, At::Line(2));
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let mut s = JsonLinesSource::new(PathBuf::from("/nonexistent/x.jsonl"), 100);
        let e = s.next_page(5).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.jsonl"), "{e}");
        assert!(!e.is_transient());
    }
}
