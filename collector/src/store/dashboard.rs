//! What the dashboard asks of the store beyond the API's lists: the fleet counted in
//! grouped queries (one answer for every image and state, instead of a query per image
//! or a scan in the collector), the baselines it compares, and its sign-in sessions,
//! kept in the store so that every replica behind a load balancer serves them.

use super::{parse_state, StoreResult};
use driftwatch_protocol::wire::HostState;

/// The hosts of one image (or of none), counted by state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageStates {
    /// The image the hosts claim (`None`: they claim none).
    pub image_id: Option<String>,
    /// Hosts per state, in [`HostState::ALL`] order.
    pub by_state: [u64; 5],
}

impl ImageStates {
    /// Hosts that are not `gone` (what the budget's "of N" counts).
    pub fn live(&self) -> u64 {
        HostState::ALL
            .iter()
            .zip(self.by_state)
            .filter(|(state, _)| **state != HostState::Gone)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Grouped `(image, state, count)` rows as [`ImageStates`], in the rows' image order.
pub(crate) fn image_states(
    rows: impl IntoIterator<Item = (Option<String>, String, i64)>,
) -> StoreResult<Vec<ImageStates>> {
    let mut out: Vec<ImageStates> = Vec::new();
    for (image_id, state, count) in rows {
        let state = parse_state(&state)?;
        let index = HostState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default();
        if out.last().is_none_or(|last| last.image_id != image_id) {
            out.push(ImageStates {
                image_id,
                by_state: [0; 5],
            });
        }
        if let Some(last) = out.last_mut() {
            last.by_state[index] += count.max(0) as u64;
        }
    }
    Ok(out)
}

/// Hosts held for one reason: how many, and the first few ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldHosts {
    /// Every `drifted` host held for the reason.
    pub count: u64,
    /// The first of them by id.
    pub first: Vec<String>,
}

/// A signed-in browser's session as stored: the session id itself is not, only its
/// hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// BLAKE3 (hex) of the session id the cookie carries.
    pub id_hash: String,
    /// The name of the credential that signed in (a stored token's name, or a
    /// configuration file token's).
    pub name: String,
    /// The credential's role.
    pub role: String,
    /// [`crate::store::trust::token_hash`] of the token that signed in: a session
    /// ends when the stored token with this hash is revoked or expires, or when the
    /// configuration's token files no longer hold it.
    pub token_hash: String,
    /// The token every acting form of the session must carry.
    pub csrf: String,
    /// When it ends.
    pub expires_ms: i64,
}

/// Largest baseline kept for the images page's comparison; a larger one is
/// registered all the same, without its entries (the page says so).
pub const MAX_KEPT_BASELINE_BYTES: usize = 64 << 20;
