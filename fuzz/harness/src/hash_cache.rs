//! The daemon's hash cache (`state_dir/hash-cache`). The first byte picks a file as
//! found, or records sealed here (a forged cache with a valid digest).

use driftwatch_agent::daemon::cache::{HashCache, MAGIC};

/// Runs the `hash_cache` target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let cache = if mode % 2 == 0 {
        HashCache::from_bytes(body)
    } else {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(body);
        file.extend_from_slice(blake3::hash(body).as_bytes());
        HashCache::from_bytes(&file)
    };
    let _ = cache.len();
}
