//! The spool as the daemon opens it after a crash: `acked.json` and a segment file are
//! the input (split at the first NUL byte; without one, all of it is the segment), and
//! the real `Spool::open` reads, repairs and resumes them.

use driftwatch_agent::sink::spool::Spool;
use driftwatch_protocol::wire::{EventBody, Heartbeat};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per fuzzing process, in memory where the system has it.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("driftwatch-fuzz-spool-{}", std::process::id()))
    })
}

/// Runs the `spool` target on one input.
pub fn run(data: &[u8]) {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let (ack, segment) = match data.iter().position(|&b| b == 0) {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    };
    if let Some(ack) = ack {
        let _ = std::fs::write(dir.join("acked.json"), ack);
    }
    let _ = std::fs::write(dir.join("segment-00000000000000000001.jsonl"), segment);
    if let Ok(mut spool) = Spool::open(dir, 1 << 20) {
        if let Some(unacked) = spool.peek(100) {
            let _ = spool.ack(unacked.through);
        }
        // Resuming after what was read: the next seq and the segment bookkeeping.
        let heartbeat = || {
            vec![(
                "2026-01-01T00:00:00Z".to_string(),
                EventBody::Heartbeat(Heartbeat {
                    agent_version: "fuzz".into(),
                    findings: 0,
                    last_full_verification: None,
                    interval_secs: 60,
                }),
            )]
        };
        let _ = spool.append(heartbeat(), heartbeat);
    }
    let _ = std::fs::remove_dir_all(dir);
}
