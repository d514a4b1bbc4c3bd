//! The spool: a durable on-disk queue of [`Event`]s on their way to the collector, in
//! `state_dir/spool/`.
//!
//! Delivery is at least once: an event is written and fsync'd before [`Spool::append`]
//! returns, and leaves the spool only when the collector has acknowledged it
//! ([`Spool::ack`]). Its id, `{spool_id}:{seq}`, is fixed when it is spooled, so an
//! event sent again after a crash or a lost answer is recognised by the collector as a
//! duplicate instead of being stored twice. Losing an event is the one thing the spool
//! must never do; sending one twice is always safe.
//!
//! On disk:
//!
//! - `segment-<first seq>.jsonl`: append-only files of [`Line`]s, one JSON document a
//!   line. Only the newest segment is appended to; a new one is started once it holds
//!   an eighth of the bound, so acknowledged events free their space segment by
//!   segment (a fully acknowledged segment is deleted).
//! - `acked.json`: the spool id and the highest acknowledged seq, replaced atomically
//!   (write a temporary file, fsync, rename, fsync the directory).
//!
//! A crash in the middle of an append leaves a torn last line: opening the spool cuts
//! it off (that event was never reported as spooled, and the daemon finds its finding
//! again). A corrupt `acked.json` is recovered from by re-sending every event still on
//! disk.
//!
//! The spool is bounded by `spool_max_bytes`. When an append would go over, the spool
//! is **compacted**: every unacknowledged event is replaced by one event per finding
//! the daemon currently remembers. Findings are never withdrawn, so that set is all the
//! collector needs to know; only the history of when each was first reported is lost.
//! The unacknowledged events are also kept in memory (they fit the same bound), so
//! sending never re-reads the disk.

use driftwatch_protocol::wire::{Event, EventBody};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tracing::{debug, warn};

/// The spool's directory inside `state_dir`.
pub const SPOOL_DIR: &str = "spool";
/// The acknowledged position.
const ACK_FILE: &str = "acked.json";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".jsonl";
/// A new segment is started when the current one holds this share of the bound.
const SEGMENTS_PER_BOUND: u64 = 8;
/// Segments stay below this, however large the bound, so acknowledged space is freed
/// in reasonable steps.
const MAX_SEGMENT_BYTES: u64 = 4 << 20;

/// The highest seq a spool may hold: more than any host spools in its life (an event a
/// second for 285 million years), exact in every JSON reader, and far enough from
/// `u64::MAX` that the next seq never wraps. A larger seq on disk is corrupt or forged:
/// resuming after it would wrap to seqs already acknowledged and stop delivery.
const MAX_SEQ: u64 = 1 << 53;

/// One line of a segment.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    event: Spooled,
}

/// An event as spooled: one this agent reads, or one it does not — a kind that a newer
/// agent spooled before this one replaced it (a downgrade) — kept as written and sent
/// as it is: the collector decides, and rejects it alone if it cannot read it either.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Spooled {
    /// An event this agent knows.
    Known(Box<Event>),
    /// An event of a kind it does not know.
    Foreign(ForeignEvent),
}

/// An event of a kind this agent cannot read: its id and time, and its body as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForeignEvent {
    /// Its id, as spooled.
    pub id: String,
    /// When it was observed.
    pub at: String,
    /// What it says (an object with a `type`).
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl Spooled {
    fn id(&self) -> &str {
        match self {
            Spooled::Known(event) => &event.id,
            Spooled::Foreign(event) => &event.id,
        }
    }
}

/// The content of `acked.json`.
#[derive(Debug, Serialize, Deserialize)]
struct AckFile {
    spool_id: String,
    acked_seq: u64,
}

/// A segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// The seq of its last line (its first seq is in its name).
    last_seq: u64,
    bytes: u64,
}

/// Events the collector has not acknowledged yet, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Unacked {
    /// The events.
    pub events: Vec<Event>,
    /// Events among them of kinds this agent does not know (spooled by a newer one).
    pub foreign: Vec<ForeignEvent>,
    /// The seq of the last one: acknowledge up to here once the collector took them.
    pub through: u64,
}

/// Events with their seqs, and the bytes of their lines.
type Encoded = (Vec<(u64, Spooled)>, Vec<u8>);

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The events were added.
    Added(usize),
    /// The spool was full: `folded` unacknowledged events (including the new ones)
    /// were replaced by `kept`, one per current finding.
    Compacted {
        /// Events replaced.
        folded: usize,
        /// Events now in the spool.
        kept: usize,
    },
}

/// The durable queue.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    spool_id: String,
    next_seq: u64,
    acked_seq: u64,
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment>,
    /// The newest segment, open for appending.
    writer: Option<File>,
    /// Unacknowledged events with their seqs, oldest first.
    unacked: VecDeque<(u64, Spooled)>,
    created: bool,
}

impl Spool {
    /// Opens the spool in `dir`, creating it (with a new random spool id) when absent,
    /// and repairing a torn last line.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let ack_path = dir.join(ACK_FILE);
        let ack = match fs::read(&ack_path) {
            Ok(bytes) => match serde_json::from_slice::<AckFile>(&bytes) {
                Ok(ack) if !ack.spool_id.is_empty() && ack.acked_seq <= MAX_SEQ => Some(ack),
                _ => {
                    // Re-sending is safe (the collector dedupes by id); forgetting what
                    // is still unsent is not: start over from the oldest event on disk.
                    warn!(path = %ack_path.display(), "The spool's acknowledged position is corrupt; unacknowledged events may be sent again.");
                    None
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SpoolError::Io {
                    path: ack_path,
                    source,
                })
            }
        };
        let acked_seq = ack.as_ref().map_or(0, |a| a.acked_seq);

        let mut segments = Vec::new();
        let mut unacked = VecDeque::new();
        let mut max_seq = acked_seq;
        let mut first_id = None;
        let paths = segment_paths(dir).map_err(io)?;
        let newest = paths.len().checked_sub(1);
        for (index, path) in paths.into_iter().enumerate() {
            let lines = read_segment(&path, Some(index) == newest)?;
            let bytes = lines.bytes;
            let mut last_seq = 0;
            for line in lines.lines {
                last_seq = last_seq.max(line.seq);
                max_seq = max_seq.max(line.seq);
                first_id.get_or_insert_with(|| line.event.id().to_string());
                if line.seq > acked_seq {
                    unacked.push_back((line.seq, line.event));
                }
            }
            segments.push(Segment {
                path,
                last_seq,
                bytes,
            });
        }
        let created = ack.is_none() && segments.is_empty();
        let spool_id = match (&ack, first_id) {
            (Some(ack), _) => ack.spool_id.clone(),
            // The ids already given out must stay the same: take the spool id back from
            // them.
            (None, Some(id)) => id
                .rsplit_once(':')
                .map_or(id.clone(), |(spool, _)| spool.to_string()),
            (None, None) => random_id(),
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            spool_id,
            next_seq: max_seq + 1,
            acked_seq,
            segments,
            writer: None,
            unacked,
            created,
        };
        if ack.is_none() {
            spool.write_ack(acked_seq)?;
        }
        spool.delete_acknowledged_segments()?;
        debug!(
            unacked = spool.unacked.len(),
            bytes = spool.bytes(),
            "Spool opened."
        );
        Ok(spool)
    }

    /// Whether this open created the spool (nothing was spooled before: the caller may
    /// want to seed it with what it already knows).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The random id that prefixes every event id of this spool.
    pub fn spool_id(&self) -> &str {
        &self.spool_id
    }

    /// Events not acknowledged yet.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Changes the bound (a reloaded configuration); it applies from the next append.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    /// Appends events (time observed, body), durably: they are on disk when this
    /// returns. When they do not fit the bound, the spool is compacted to one event
    /// per entry of `current` (the daemon's current findings, which include the new
    /// ones) instead.
    pub fn append(
        &mut self,
        events: Vec<(String, EventBody)>,
        current: impl FnOnce() -> Vec<(String, EventBody)>,
    ) -> Result<Appended, SpoolError> {
        if events.is_empty() {
            return Ok(Appended::Added(0));
        }
        let count = events.len();
        let (lines, bytes) = self.encode(events)?;
        if self.bytes() + bytes.len() as u64 > self.max_bytes {
            let folded = self.unacked.len() + count;
            let kept = self.compact(current())?;
            warn!(
                folded,
                kept,
                max_bytes = self.max_bytes,
                "The spool is full; unsent events were folded into one per current finding."
            );
            return Ok(Appended::Compacted { folded, kept });
        }
        self.write(&bytes)?;
        self.next_seq += count as u64;
        self.unacked.extend(lines);
        Ok(Appended::Added(count))
    }

    /// The oldest unacknowledged events, at most `max`.
    pub fn peek(&self, max: usize) -> Option<Unacked> {
        let taken: Vec<&(u64, Spooled)> = self.unacked.iter().take(max).collect();
        let through = taken.last()?.0;
        let (mut events, mut foreign) = (Vec::new(), Vec::new());
        for (_, event) in taken {
            match event {
                Spooled::Known(event) => events.push(Event::clone(event)),
                Spooled::Foreign(event) => foreign.push(event.clone()),
            }
        }
        Some(Unacked {
            events,
            foreign,
            through,
        })
    }

    /// Records that the collector has every event up to `seq`; deletes segments that
    /// hold nothing else. Acknowledging an older position than the current one (a
    /// batch sent before a compaction) does nothing.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked_seq {
            return Ok(());
        }
        self.write_ack(seq)?;
        self.acked_seq = seq;
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
        self.delete_acknowledged_segments()
    }

    /// Serialises events with fresh seqs; returns them and the bytes to write.
    fn encode(&self, events: Vec<(String, EventBody)>) -> Result<Encoded, SpoolError> {
        let mut bytes = Vec::new();
        let mut lines = Vec::with_capacity(events.len());
        for (seq, (at, body)) in (self.next_seq..).zip(events) {
            let line = Line {
                seq,
                event: Spooled::Known(Box::new(Event {
                    id: format!("{}:{seq}", self.spool_id),
                    at,
                    body,
                })),
            };
            serde_json::to_writer(&mut bytes, &line).map_err(|e| SpoolError::Io {
                path: self.dir.clone(),
                source: io::Error::other(e),
            })?;
            bytes.push(b'\n');
            lines.push((line.seq, line.event));
        }
        Ok((lines, bytes))
    }

    /// Appends encoded lines to the newest segment (starting one when it is full or
    /// there is none) and fsyncs it.
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let segment_bytes = (self.max_bytes / SEGMENTS_PER_BOUND).clamp(1, MAX_SEGMENT_BYTES);
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.bytes >= segment_bytes);
        if full || self.writer.is_none() {
            let path = if full {
                let path = self.dir.join(segment_name(self.next_seq));
                self.segments.push(Segment {
                    path: path.clone(),
                    last_seq: 0,
                    bytes: 0,
                });
                path
            } else {
                self.segments
                    .last()
                    .map(|s| s.path.clone())
                    .unwrap_or_default()
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| SpoolError::Io {
                    path: path.clone(),
                    source,
                })?;
            if full {
                sync_dir(&self.dir)?;
            }
            self.writer = Some(file);
        }
        let (Some(file), Some(segment)) = (self.writer.as_mut(), self.segments.last_mut()) else {
            return Ok(());
        };
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        if let Err(source) = written {
            // Cut off whatever part made it, or the next append would glue its line to a
            // torn one and both would be lost.
            let _ = file.set_len(segment.bytes);
            self.writer = None;
            return Err(SpoolError::Io {
                path: segment.path.clone(),
                source,
            });
        }
        segment.bytes += bytes.len() as u64;
        segment.last_seq = self.next_seq + count_lines(bytes) - 1;
        Ok(())
    }

    /// Replaces every unacknowledged event by `current`; returns how many events the
    /// spool now holds. The new segment is durable before the acknowledged position
    /// moves past the old events (the commit point), and the old segments are deleted
    /// after: a crash in between re-sends more, never less.
    fn compact(&mut self, current: Vec<(String, EventBody)>) -> Result<usize, SpoolError> {
        let kept = current.len();
        let first = self.next_seq;
        let (lines, bytes) = self.encode(current)?;
        let path = self.dir.join(segment_name(first));
        let temp = self.dir.join(".compact.tmp");
        write_durably(&temp, &path, &bytes)?;
        if bytes.len() as u64 > self.max_bytes {
            // Never drop a current finding to keep the bound: the collector would not
            // learn of it until the host is replaced.
            warn!(
                bytes = bytes.len(),
                max_bytes = self.max_bytes,
                "The current findings alone exceed the spool bound; keeping them all."
            );
        }
        self.writer = None;
        self.next_seq = first + kept as u64;
        let old = std::mem::take(&mut self.segments);
        self.segments.push(Segment {
            path,
            last_seq: self.next_seq - 1,
            bytes: bytes.len() as u64,
        });
        self.write_ack(first - 1)?;
        self.acked_seq = first - 1;
        for segment in old {
            remove(&segment.path)?;
        }
        sync_dir(&self.dir)?;
        self.unacked = lines.into();
        if kept == 0 {
            self.delete_acknowledged_segments()?;
        }
        Ok(kept)
    }

    fn write_ack(&self, acked_seq: u64) -> Result<(), SpoolError> {
        let ack = AckFile {
            spool_id: self.spool_id.clone(),
            acked_seq,
        };
        let bytes = serde_json::to_vec(&ack).map_err(|e| SpoolError::Io {
            path: self.dir.join(ACK_FILE),
            source: io::Error::other(e),
        })?;
        write_durably(
            &self.dir.join(format!(".{ACK_FILE}.tmp")),
            &self.dir.join(ACK_FILE),
            &bytes,
        )
    }

    fn delete_acknowledged_segments(&mut self) -> Result<(), SpoolError> {
        let acked = self.acked_seq;
        let before = self.segments.len();
        let mut kept = Vec::with_capacity(before);
        for segment in std::mem::take(&mut self.segments) {
            if segment.last_seq <= acked {
                remove(&segment.path)?;
            } else {
                kept.push(segment);
            }
        }
        self.segments = kept;
        if self.segments.len() != before {
            // The appended-to segment may be among them.
            self.writer = None;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// A segment's lines, and its size after repair.
struct SegmentContent {
    lines: Vec<Line>,
    bytes: u64,
}

/// Reads a segment. In the newest one a torn last line (a crash mid-append) is cut
/// off; a line that does not parse elsewhere is skipped with a warning.
fn read_segment(path: &Path, newest: bool) -> Result<SegmentContent, SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut data = fs::read(path).map_err(io)?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < data.len() {
        if newest {
            warn!(path = %path.display(), bytes = data.len() - complete, "Cutting off a torn line at the end of the spool.");
            let file = OpenOptions::new().write(true).open(path).map_err(io)?;
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else {
            warn!(path = %path.display(), "Ignoring an unterminated line in the spool.");
        }
        data.truncate(complete);
    }
    let mut lines = Vec::new();
    let mut bad = 0usize;
    for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(raw) {
            Ok(line) if line.seq <= MAX_SEQ => lines.push(line),
            _ => bad += 1,
        }
    }
    if bad > 0 {
        warn!(path = %path.display(), lines = bad, "Skipping unreadable lines in the spool.");
    }
    Ok(SegmentContent {
        lines,
        bytes: data.len() as u64,
    })
}

/// Segment files in seq order.
fn segment_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Writes `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(temp: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::create(temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(temp, path).map_err(io)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
            path: path.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// 16 random hex digits: unique enough among the spools (and `check --report` runs)
/// of one host.
pub fn random_id() -> String {
    driftwatch_protocol::random::hex(8).unwrap_or_else(|_| {
        // No randomness source at all: the time still makes a clash unlikely.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{:016x}", nanos ^ u64::from(std::process::id()))
    })
}

/// Why the spool cannot be used.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// A file of the spool cannot be read or written.
    #[error("spool {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::report::{FileChange, FileFinding, Finding, Severity};

    fn finding(path: &str) -> EventBody {
        EventBody::Finding {
            finding: Finding::File(Box::new(FileFinding {
                change: FileChange::Modified,
                path: path.into(),
                path_bytes_b64: None,
                attributes: vec![],
                severity: Severity::High,
                rule: "r".into(),
                baseline: None,
                observed: None,
                package: None,
                container: None,
            })),
        }
    }

    fn events(paths: &[&str]) -> Vec<(String, EventBody)> {
        paths
            .iter()
            .map(|p| ("2026-01-01T00:00:00Z".to_string(), finding(p)))
            .collect()
    }

    #[test]
    fn events_of_unknown_kinds_are_kept_and_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append(events(&["/a"]), Vec::new).unwrap();
        }
        let id = Spool::open(dir.path(), 1 << 20)
            .unwrap()
            .spool_id()
            .to_string();
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(SEGMENT_SUFFIX))
            .unwrap();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        let newer = format!(
            "{{\"seq\":2,\"event\":{{\"id\":\"{id}:2\",\"at\":\"t\",\"body\":{{\"type\":\"quantum\",\"q\":1}}}}}}\n"
        );
        file.write_all(newer.as_bytes()).unwrap();
        file.write_all(b"{\"seq\":3,\"event\":{\"body\":7}}\n")
            .unwrap();
        drop(file);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let unacked = spool.peek(10).unwrap();
        assert_eq!(paths(&unacked), ["/a"]);
        assert_eq!(unacked.foreign.len(), 1, "{unacked:?}");
        assert_eq!(unacked.foreign[0].id, format!("{id}:2"));
        assert_eq!(unacked.foreign[0].body["type"], "quantum");
        assert_eq!(unacked.through, 2);
        spool.ack(unacked.through).unwrap();
        assert_eq!(spool.peek(10), None);
    }

    fn paths(unacked: &Unacked) -> Vec<String> {
        unacked
            .events
            .iter()
            .map(|e| match &e.body {
                EventBody::Finding {
                    finding: Finding::File(f),
                } => f.path.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn no_compaction() -> Vec<(String, EventBody)> {
        panic!("unexpected compaction")
    }

    fn segments(dir: &Path) -> usize {
        segment_paths(dir).unwrap().len()
    }

    #[test]
    fn round_trip_with_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.created());
        assert_eq!(spool.peek(10), None);
        assert_eq!(
            spool.append(events(&["/a", "/b"]), no_compaction).unwrap(),
            Appended::Added(2)
        );
        spool.append(events(&["/c"]), no_compaction).unwrap();
        let first = spool.peek(2).unwrap();
        assert_eq!(paths(&first), ["/a", "/b"]);
        let id = spool.spool_id().to_string();
        assert_eq!(first.events[0].id, format!("{id}:1"));
        assert_eq!(first.events[1].id, format!("{id}:2"));
        assert_eq!(first.through, 2);
        // Reopened (a restart): the same events with the same ids, nothing created.
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!spool.created());
        let all = spool.peek(10).unwrap();
        assert_eq!(paths(&all), ["/a", "/b", "/c"]);
        assert_eq!(all.events[..2], first.events[..]);
        assert_eq!(all.events[2].id, format!("{id}:3"));
    }

    #[test]
    fn acknowledgement_survives_reopen_and_frees_segments() {
        let dir = tempfile::tempdir().unwrap();
        // A small bound: segments of 1 KiB, so a few events fill one.
        let mut spool = Spool::open(dir.path(), 8 << 10).unwrap();
        for i in 0..20 {
            spool
                .append(events(&[&format!("/f{i}")]), no_compaction)
                .unwrap();
        }
        assert!(segments(dir.path()) > 2, "{}", segments(dir.path()));
        let batch = spool.peek(15).unwrap();
        spool.ack(batch.through).unwrap();
        assert_eq!(spool.len(), 5);
        // Acknowledging an older position changes nothing.
        spool.ack(3).unwrap();
        assert_eq!(spool.len(), 5);
        drop(spool);

        let mut spool = Spool::open(dir.path(), 8 << 10).unwrap();
        let rest = spool.peek(100).unwrap();
        assert_eq!(paths(&rest), ["/f15", "/f16", "/f17", "/f18", "/f19"]);
        spool.ack(rest.through).unwrap();
        assert_eq!(spool.peek(1), None);
        assert_eq!(
            segments(dir.path()),
            0,
            "fully acknowledged segments remain"
        );
        // Seqs go on after every segment is gone: ids are never reused.
        spool.append(events(&["/g"]), no_compaction).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 8 << 10).unwrap();
        assert_eq!(spool.peek(1).unwrap().through, 21);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(events(&["/a", "/b"]), no_compaction).unwrap();
        drop(spool);
        let segment = segment_paths(dir.path()).unwrap().pop().unwrap();
        let good = fs::metadata(&segment).unwrap().len();
        // A crash mid-append: half a line, then (ext4 after a crash) zeroes.
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"{\"seq\":3,\"event\":{\"id\":\"x\0\0\0")
            .unwrap();
        drop(file);

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(fs::metadata(&segment).unwrap().len(), good);
        assert_eq!(paths(&spool.peek(10).unwrap()), ["/a", "/b"]);
        // Appends go on cleanly after the repair, with the torn event's seq.
        spool.append(events(&["/c"]), no_compaction).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let all = spool.peek(10).unwrap();
        assert_eq!(paths(&all), ["/a", "/b", "/c"]);
        assert_eq!(all.through, 3);
    }

    #[test]
    fn seqs_beyond_the_bound_are_refused_not_wrapped() {
        // Found by the spool fuzz target: a line (or acked.json) with seq u64::MAX made
        // the next seq overflow — a panic in debug builds, and in release a wrap to
        // seqs already acknowledged, so new events would never be delivered.
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(events(&["/a"]), no_compaction).unwrap();
        let id = spool.spool_id().to_string();
        drop(spool);
        let segment = segment_paths(dir.path()).unwrap().pop().unwrap();
        let mut forged = fs::read_to_string(&segment).unwrap();
        forged.push_str(&forged.replacen("\"seq\":1", &format!("\"seq\":{}", u64::MAX), 1));
        fs::write(&segment, forged).unwrap();

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(paths(&spool.peek(10).unwrap()), ["/a"]);
        spool.append(events(&["/b"]), no_compaction).unwrap();
        let all = spool.peek(10).unwrap();
        assert_eq!(paths(&all), ["/a", "/b"]);
        assert_eq!(all.events[1].id, format!("{id}:2"));
        drop(spool);

        // An acknowledged position beyond the bound is corrupt: everything is re-sent.
        let ack = format!("{{\"spool_id\":\"{id}\",\"acked_seq\":{}}}", u64::MAX);
        fs::write(dir.path().join(ACK_FILE), ack).unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(paths(&spool.peek(10).unwrap()), ["/a", "/b"]);
        assert_eq!(spool.spool_id(), id);
    }

    #[test]
    fn a_crash_between_send_and_ack_resends_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool
            .append(events(&["/a", "/b", "/c"]), no_compaction)
            .unwrap();
        let sent = spool.peek(2).unwrap();
        // The collector stored the batch, the agent died before `ack`.
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let again = spool.peek(2).unwrap();
        assert_eq!(again, sent, "a retry must carry the same ids");
        spool.ack(again.through).unwrap();
        assert_eq!(paths(&spool.peek(10).unwrap()), ["/c"]);
    }

    #[test]
    fn compaction_keeps_the_bound_and_every_current_finding() {
        let dir = tempfile::tempdir().unwrap();
        let max = 4 << 10;
        let mut spool = Spool::open(dir.path(), max).unwrap();
        // The same few findings reported over and over (say, a flapping file seen by
        // every check while the collector is down), plus new ones.
        let mut current = Vec::new();
        let mut compactions = 0;
        for i in 0..200 {
            let path = format!("/f{}", i % 7);
            if !current.contains(&path) {
                current.push(path.clone());
            }
            let now: Vec<&str> = current.iter().map(String::as_str).collect();
            match spool.append(events(&[&path]), || events(&now)).unwrap() {
                Appended::Added(1) => {}
                Appended::Compacted { folded, kept } => {
                    compactions += 1;
                    assert!(folded > kept, "{folded} folded into {kept}");
                    assert_eq!(kept, current.len());
                }
                other => panic!("{other:?}"),
            }
            assert!(spool.bytes() <= max, "{} > {max}", spool.bytes());
        }
        assert!(compactions > 0);
        // Every current finding is still there to send, also after a restart.
        drop(spool);
        let spool = Spool::open(dir.path(), max).unwrap();
        let mut pending = paths(&spool.peek(usize::MAX).unwrap());
        pending.sort();
        pending.dedup();
        let mut expected = current.clone();
        expected.sort();
        assert_eq!(pending, expected);
        assert!(spool.bytes() <= max);
    }

    #[test]
    fn a_batch_sent_before_a_compaction_acknowledges_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 2 << 10).unwrap();
        spool.append(events(&["/a"]), no_compaction).unwrap();
        let in_flight = spool.peek(10).unwrap();
        let mut compacted = false;
        for i in 0..40 {
            let p = format!("/long/path/to/make/the/lines/bigger/{i}");
            if let Appended::Compacted { .. } = spool
                .append(events(&[&p]), || events(&["/a", "/current"]))
                .unwrap()
            {
                compacted = true;
                break;
            }
        }
        assert!(compacted);
        spool.ack(in_flight.through).unwrap();
        assert_eq!(paths(&spool.peek(10).unwrap()), ["/a", "/current"]);
    }

    #[test]
    fn a_corrupt_ack_file_resends_rather_than_loses() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool
            .append(events(&["/a", "/b", "/c"]), no_compaction)
            .unwrap();
        let id = spool.spool_id().to_string();
        spool.ack(2).unwrap();
        drop(spool);
        fs::write(dir.path().join(ACK_FILE), b"{\"spool_id\":").unwrap();

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!spool.created());
        // The spool id comes back from the events; everything on disk is unsent again
        // (the collector answers "duplicate" for what it has).
        assert_eq!(spool.spool_id(), id);
        let all = spool.peek(10).unwrap();
        assert_eq!(paths(&all), ["/a", "/b", "/c"]);
        assert_eq!(all.events[0].id, format!("{id}:1"));
        // New events do not reuse a seq.
        spool.append(events(&["/d"]), no_compaction).unwrap();
        assert_eq!(spool.peek(10).unwrap().through, 4);
        // And the repaired position holds.
        spool.ack(4).unwrap();
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 1 << 20).unwrap().peek(1), None);
    }

    #[test]
    fn a_corrupt_ack_file_with_nothing_spooled_starts_a_new_spool_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let old = spool.spool_id().to_string();
        drop(spool);
        fs::write(dir.path().join(ACK_FILE), b"garbage").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        // A fresh random id cannot collide with the ids given out before.
        assert_ne!(spool.spool_id(), old);
        assert_eq!(spool.peek(1), None);
    }
}
