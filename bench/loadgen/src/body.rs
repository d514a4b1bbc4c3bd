//! What the simulated hosts send: the agent's batches, gzip'd as the agent does, and the
//! image they claim.
//!
//! Findings are file findings of the kind a drifted host reports — a changed config
//! file, an added unit, a removed cron job — with both entry states and real-looking
//! BLAKE3 digests (random, so bodies compress like real ones). Host *n*'s *k*-th
//! finding is about the same path on every host (drift across a fleet repeats), and a
//! host never reports a path twice, not even in a later run, so every finding is new
//! to the collector — the costly case: a new finding is stored, alerted on and makes
//! the collector re-decide the host. None is
//! `critical`: marking hosts for replacement is rare and has its own costs, and is not
//! what ingest throughput is about.

use crate::agents::Host;
use crate::error::{Error, Result};
use driftwatch_protocol::baseline::{digest_string, BaselineMeta, BaselineWriter};
use driftwatch_protocol::entry::{Entry, FileType, Timestamp};
use driftwatch_protocol::report::{
    Attribute, EntryState, FileChange, FileFinding, Finding, Severity,
};
use driftwatch_protocol::sign::PrivateKey;
use driftwatch_protocol::wire::{Batch, Event, EventBody, Heartbeat, ImageClaim, INGEST_SCHEMA};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// The image the simulated fleet runs.
const IMAGE_ID: &str = "loadgen-image-1";

/// What every batch of a run has in common.
pub struct Payload {
    /// Makes event ids unique across runs against the same database.
    pub nonce: String,
    /// Part of every finding's file name, so that a later run's findings are new to
    /// the collector too (a finding seen before is only refreshed, which costs less).
    pub run_tag: String,
    /// The image every host claims.
    pub image: ImageClaim,
    /// The heartbeat interval the hosts announce.
    pub interval_secs: u64,
}

impl Payload {
    /// A payload for a run starting now.
    pub fn new(image: ImageClaim, interval_secs: u64) -> Payload {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Payload {
            nonce: format!("lg{:x}", nanos & 0xffff_ffff_ffff),
            run_tag: format!("{:x}", (nanos / 1_000_000) & 0xff_ffff),
            image,
            interval_secs,
        }
    }

    /// A batch from `host` with `findings` file findings and a heartbeat, gzip'd;
    /// returns the body.
    pub fn batch(&self, host: &Host, findings: usize) -> Result<Vec<u8>> {
        let at = driftwatch_protocol::time::now_rfc3339();
        let first_event = host
            .events
            .fetch_add(findings as u64 + 1, Ordering::Relaxed);
        let first_finding = host.findings.fetch_add(findings as u64, Ordering::Relaxed);
        let mut events = Vec::with_capacity(findings + 1);
        for i in 0..findings as u64 {
            events.push(Event {
                id: format!("{}:{}", self.nonce, first_event + i),
                at: at.clone(),
                body: EventBody::Finding {
                    finding: file_finding(&self.run_tag, first_finding + i),
                },
            });
        }
        events.push(Event {
            id: format!("{}:{}", self.nonce, first_event + findings as u64),
            at,
            body: EventBody::Heartbeat(Heartbeat {
                agent_version: concat!("driftwatch-loadgen ", env!("CARGO_PKG_VERSION")).into(),
                findings: first_finding + findings as u64,
                last_full_verification: Some("2026-11-27T06:00:00Z".into()),
                interval_secs: self.interval_secs,
            }),
        });
        let batch = Batch {
            schema: INGEST_SCHEMA.into(),
            host_id: host.host_id.clone(),
            hostname: host.host_id.clone(),
            image: self.image.clone(),
            events,
        };
        let json = serde_json::to_vec(&batch).map_err(Error::context("cannot encode a batch"))?;
        gzip(&json)
    }
}

/// (directory, file stem, extension, severity, policy rule) of the findings, in turn.
const TEMPLATES: [(&str, &str, &str, Severity, &str); 8] = [
    ("/etc/nginx/conf.d", "site", ".conf", Severity::High, "/etc"),
    (
        "/etc/systemd/system",
        "worker",
        ".service",
        Severity::High,
        "/etc",
    ),
    ("/opt/app/lib", "plugin", ".jar", Severity::Medium, "/opt"),
    ("/etc/cron.d", "job", "", Severity::High, "/etc"),
    (
        "/var/lib/app/config",
        "settings",
        ".yaml",
        Severity::Medium,
        "/var/lib/app",
    ),
    (
        "/usr/share/doc/app",
        "notes",
        ".txt",
        Severity::Low,
        "default",
    ),
    ("/etc/default", "service", "", Severity::High, "/etc"),
    (
        "/usr/local/share/app",
        "data",
        ".json",
        Severity::Medium,
        "default",
    ),
];

/// The `k`-th finding of a host in run `tag`: the same on every host, a new path for
/// every `k`.
pub(crate) fn file_finding(tag: &str, k: u64) -> Finding {
    let (dir, stem, extension, severity, rule) = TEMPLATES[(k % TEMPLATES.len() as u64) as usize];
    let path = format!("{dir}/{stem}-{tag}-{k}{extension}");
    let state = |salt: u64, size: u64, mode: &str, mtime: &str| EntryState {
        file_type: "file".into(),
        mode: mode.into(),
        uid: 0,
        gid: 0,
        size,
        mtime: mtime.into(),
        rdev: None,
        blake3: Some(blake3::hash(&(k ^ salt).to_le_bytes()).to_hex().to_string()),
        sha256: None,
        link_target: None,
        xattrs: BTreeMap::new(),
    };
    let size = 512 + (k * 7919) % 40_000;
    let baked = || state(0, size, "644", "2026-11-20T08:14:03.118273645Z");
    let found = |mode| state(0x5eed, size + 37, mode, "2026-11-27T09:41:52.604117302Z");
    let (change, attributes, baseline, observed) = match k % 10 {
        // A file that was not in the image.
        0 => (FileChange::Added, Vec::new(), None, Some(found("644"))),
        // A file the image had.
        1 => (FileChange::Removed, Vec::new(), Some(baked()), None),
        // Edited, and its mode loosened.
        2 => (
            FileChange::Modified,
            vec![
                Attribute::Mode,
                Attribute::Size,
                Attribute::Content,
                Attribute::Mtime,
            ],
            Some(baked()),
            Some(found("666")),
        ),
        // Edited in place.
        _ => (
            FileChange::Modified,
            vec![Attribute::Size, Attribute::Content, Attribute::Mtime],
            Some(baked()),
            Some(found("644")),
        ),
    };
    Finding::File(Box::new(FileFinding {
        change,
        path,
        path_bytes_b64: None,
        attributes,
        severity,
        rule: rule.into(),
        baseline,
        observed,
        package: None,
        container: None,
    }))
}

thread_local! {
    /// One deflate state per thread, reset for each body: a new one per body would
    /// allocate and clear a few hundred KiB every time, which at thousands of
    /// heartbeats per second is CPU taken from the collector on the same machine.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

/// `data` as a gzip member (the agent's level, 6).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    DEFLATE.with(|deflate| -> Result<()> {
        let mut deflate = deflate.borrow_mut();
        deflate.reset();
        loop {
            let consumed = usize::try_from(deflate.total_in())
                .map_err(|_| Error::new("gzip: input too large"))?;
            out.reserve(data.len().saturating_sub(consumed).max(1024));
            let status = deflate
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .map_err(Error::context("gzip"))?;
            if status == Status::StreamEnd {
                return Ok(());
            }
        }
    })?;
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32, by definition.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// A small baseline for the fleet's image, signed with `key` if given: (image id,
/// baseline, digest).
pub fn image_baseline(key: Option<&PrivateKey>) -> Result<(String, Vec<u8>, String)> {
    let policy = "# driftwatch-loadgen: a stand-in image\n";
    let meta = BaselineMeta {
        image_id: Some(IMAGE_ID.into()),
        created_at: "2026-11-20T08:14:03Z".into(),
        tool: concat!("driftwatch-loadgen ", env!("CARGO_PKG_VERSION")).into(),
        policy: policy.into(),
        policy_digest: format!("blake3:{}", blake3::hash(policy.as_bytes()).to_hex()),
        hashes: vec!["blake3".into()],
        packages: None,
        runtime: None,
    };
    let context = Error::context("cannot write the image's baseline");
    let mut writer = match BaselineWriter::new(Vec::new(), &meta) {
        Ok(writer) => writer,
        Err(err) => return Err(context(err)),
    };
    let entry = Entry {
        path: b"/etc/loadgen.conf".to_vec(),
        file_type: FileType::File,
        mode: 0o644,
        size: 12,
        mtime: Timestamp {
            secs: 1_795_000_000,
            nanos: 0,
        },
        blake3: Some(*blake3::hash(b"loadgen=yes\n").as_bytes()),
        ..Entry::default()
    };
    let sealed = writer.push(&entry).and_then(|()| writer.finish(key));
    match sealed {
        Ok((bytes, sealed)) => Ok((IMAGE_ID.into(), bytes, digest_string(&sealed.digest))),
        Err(err) => Err(context(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_round_trips_with_a_reused_state() {
        for data in [&b""[..], b"hello", &[7u8; 100_000]] {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&gzip(data).unwrap()[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, data);
        }
    }

    #[test]
    fn findings_have_distinct_paths_and_no_critical_severity() {
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|k| file_finding("t", k).key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!((0..1000).all(|k| file_finding("t", k).severity() < Severity::Critical));
        assert_ne!(file_finding("t", 1).key(), file_finding("u", 1).key());
    }

    #[test]
    fn the_image_baseline_verifies() {
        let (id, bytes, digest) = image_baseline(None).unwrap();
        let reader = driftwatch_protocol::baseline::BaselineReader::open(&bytes[..], None).unwrap();
        assert_eq!(reader.meta().image_id.as_deref(), Some(id.as_str()));
        assert_eq!(digest_string(reader.digest()), digest);
    }
}
