//! Baseline files on disk: written atomically, opened only after verification.
//!
//! The format itself (and its checks) lives in `driftwatch_protocol::baseline`; this
//! module adds what touches the filesystem: a temporary file renamed into place only
//! once complete and synced — so a crash mid-bake never leaves a half baseline where a
//! host would read it — and key files.

use crate::error::{Error, Result};
use driftwatch_protocol::baseline::{BaselineMeta, BaselineReader, BaselineWriter, Sealed};
use driftwatch_protocol::sign::{PrivateKey, PublicKey};
use driftwatch_protocol::Entry;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A baseline being written; it appears at its path only when [`finish`](Self::finish)
/// succeeds.
pub struct PendingBaseline {
    writer: Option<BaselineWriter<BufWriter<File>>>,
    temp: PathBuf,
    target: PathBuf,
}

fn write_error(path: &Path, source: io::Error) -> Error {
    Error::WriteBaseline {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

impl PendingBaseline {
    /// Starts writing a baseline to a temporary file beside `target`.
    pub fn create(target: &Path, meta: &BaselineMeta) -> Result<Self> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let temp = target.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)
            .map_err(|e| write_error(target, e))?;
        let writer = BaselineWriter::new(BufWriter::with_capacity(256 * 1024, file), meta)
            .map_err(|source| Error::WriteBaseline {
                path: target.to_path_buf(),
                source,
            })?;
        Ok(PendingBaseline {
            writer: Some(writer),
            temp,
            target: target.to_path_buf(),
        })
    }

    /// The temporary file being written (it may lie inside the scanned tree).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Appends one entry (in walk order).
    pub fn push(&mut self, entry: &Entry) -> Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| write_error(&self.target, io::Error::other("already finished")))?;
        writer.push(entry).map_err(|source| Error::WriteBaseline {
            path: self.target.clone(),
            source,
        })
    }

    /// Seals (and signs) the baseline, syncs it and moves it into place.
    pub fn finish(mut self, key: Option<&PrivateKey>) -> Result<Sealed> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| write_error(&self.target, io::Error::other("already finished")))?;
        let (out, sealed) = writer.finish(key).map_err(|source| Error::WriteBaseline {
            path: self.target.clone(),
            source,
        })?;
        let file = out
            .into_inner()
            .map_err(|e| write_error(&self.target, e.into_error()))?;
        file.sync_all().map_err(|e| write_error(&self.target, e))?;
        fs::rename(&self.temp, &self.target).map_err(|e| write_error(&self.target, e))?;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; a failure here is not worth failing the bake.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(sealed)
    }
}

impl Drop for PendingBaseline {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Opens and verifies a baseline (digest always; signature against `trusted_key` when
/// given, else against the key it carries).
pub fn open(path: &Path, trusted_key: Option<&PublicKey>) -> Result<BaselineReader<File>> {
    let file = File::open(path).map_err(|source| Error::OpenBaseline {
        path: path.to_path_buf(),
        source,
    })?;
    BaselineReader::open(file, trusted_key).map_err(|source| Error::VerifyBaseline {
        path: path.to_path_buf(),
        source,
    })
}

fn read_key_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::KeyFile {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PKCS#8 PEM signing key.
pub fn read_private_key(path: &Path) -> Result<PrivateKey> {
    PrivateKey::from_pem(&read_key_file(path)?).map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads an SPKI PEM public key.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    PublicKey::from_pem(&read_key_file(path)?).map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a new file with `mode`, refusing to replace an existing one (a key pair
/// overwritten by mistake cannot be recovered).
pub fn write_new_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let key_error = |source| Error::KeyFile {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(key_error)?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(key_error)
}
