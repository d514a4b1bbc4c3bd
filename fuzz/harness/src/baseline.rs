//! The baseline decoder: seal, signature and structure (`driftwatch_protocol::baseline`).
//!
//! A random file almost never carries a matching BLAKE3 digest, so the first byte picks
//! what the rest is: a whole file as found on disk; content that is sealed here (as an
//! attacker who rewrites an unsigned baseline can); content signed with a key the
//! reader trusts; or content with a seal whose key and signature are the input's own.

use driftwatch_protocol::baseline::BaselineReader;
use driftwatch_protocol::sign::PrivateKey;

const SEAL_MAGIC: &[u8; 8] = b"DWSEAL\r\n";

/// Appends a seal (`digest, flag[, key, signature]`) and the trailer.
fn seal(content: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut file = content.to_vec();
    file.extend_from_slice(blake3::hash(content).as_bytes());
    file.extend_from_slice(tail);
    let seal_len = (32 + tail.len()) as u32;
    file.extend_from_slice(&seal_len.to_le_bytes());
    file.extend_from_slice(SEAL_MAGIC);
    file
}

fn read_all(file: &[u8], key: Option<&driftwatch_protocol::sign::PublicKey>) {
    let Ok(reader) = BaselineReader::open(file, key) else {
        return;
    };
    let _ = (reader.meta(), reader.entry_count(), reader.size());
    let mut paths = Vec::new();
    for entry in reader.entries().take(10_000) {
        match entry {
            Ok(entry) => paths.push(entry.path),
            Err(_) => break,
        }
    }
    for path in paths.iter().take(16) {
        let _ = reader.lookup(path);
        let _ = reader.entries_within(path).take(100).count();
    }
    let _ = reader.lookup(b"/etc/passwd");
    let _ = reader.entries_within(b"/usr").take(100).count();
}

/// Runs the `baseline` target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let key = PrivateKey::from_seed([7; 32]);
    match mode % 4 {
        0 => read_all(body, None),
        1 => read_all(&seal(body, &[0]), None),
        2 => {
            let digest = *blake3::hash(body).as_bytes();
            let mut tail = vec![1];
            tail.extend_from_slice(&key.public_key().to_bytes());
            tail.extend_from_slice(&key.sign_digest(&digest));
            read_all(&seal(body, &tail), Some(&key.public_key()));
        }
        _ => {
            // The last 96 bytes are a claimed key and signature.
            let split = body.len().saturating_sub(96);
            let (content, claimed) = body.split_at(split);
            let mut tail = vec![1];
            tail.extend_from_slice(claimed);
            tail.resize(1 + 96, 0);
            read_all(&seal(content, &tail), None);
        }
    }
}
