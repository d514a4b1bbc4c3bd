//! The registered images (`/ui/images`): digest, signer, registration time, and the
//! hosts on each by state, linking to the filtered hosts list; and the difference
//! between two images' baselines (`/ui/images/diff?from=&to=`, [`super::compare`]).

use super::compare::{compare, BaselineDiff, MAX_FILES};
use super::error::{UiError, UiResult};
use super::query::{cursor, given};
use super::signin::SignedIn;
use super::view::{time, Chrome};
use super::Ui;
use crate::error::ApiError;
use crate::store::{ImageStates, PageRequest, StoreError};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use driftwatch_protocol::report::PackageChange;
use driftwatch_protocol::wire::HostState;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Images per page.
const IMAGES_PER_PAGE: u32 = 50;

/// An image row.
pub struct ImageRow {
    pub id: String,
    pub digest: String,
    pub signer: String,
    pub entries: u64,
    pub created: String,
    pub registered: String,
    /// Hosts claiming it, per state (in [`HostState::ALL`] order).
    pub states: Vec<(&'static str, u64)>,
    pub live: u64,
}

#[derive(Template)]
#[template(path = "ui/images.html")]
struct ImagesPage {
    chrome: Chrome,
    images: Vec<ImageRow>,
    next: Option<String>,
}

/// `/ui/images?cursor=`
#[derive(Debug, Default, Deserialize)]
pub struct ImagesQuery {
    #[serde(default)]
    cursor: String,
}

/// `GET /ui/images`
pub async fn page(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Query(query): Query<ImagesQuery>,
) -> UiResult<Html<String>> {
    let store = ui.app.fleet.store();
    let after = cursor(&query.cursor)?;
    let page = store
        .images(PageRequest {
            after,
            limit: Some(IMAGES_PER_PAGE),
        })
        .await?;
    // One grouped query for every image's hosts, whatever the number of images.
    let by_image: HashMap<Option<String>, ImageStates> = store
        .hosts_by_image_state()
        .await?
        .into_iter()
        .map(|i| (i.image_id.clone(), i))
        .collect();
    let images = page
        .items
        .into_iter()
        .map(|image| {
            let hosts = by_image
                .get(&Some(image.image_id.clone()))
                .cloned()
                .unwrap_or_default();
            ImageRow {
                states: HostState::ALL
                    .iter()
                    .map(|s| s.name())
                    .zip(hosts.by_state)
                    .collect(),
                live: hosts.live(),
                id: image.image_id,
                digest: image.baseline_digest,
                signer: image.signer.unwrap_or_default(),
                entries: image.entries,
                created: image.created_at,
                registered: time(image.registered_ms),
            }
        })
        .collect();
    let page = ImagesPage {
        chrome: Chrome::of(&who, "images"),
        images,
        next: page.next_cursor.map(|c| c.encode()),
    };
    Ok(Html(page.render()?))
}

/// `/ui/images/diff?from=&to=`
#[derive(Debug, Default, Deserialize)]
pub struct DiffQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// One side of a comparison.
pub struct Side {
    pub id: String,
    pub digest: String,
}

#[derive(Template)]
#[template(path = "ui/image_diff.html")]
struct DiffPage {
    chrome: Chrome,
    from: Side,
    to: Side,
    diff: BaselineDiff,
    shown_max: usize,
    more: bool,
    added: Vec<String>,
    removed: Vec<String>,
    upgraded: Vec<String>,
}

/// `GET /ui/images/diff?from=A&to=B`: what changes from image A's baseline to B's.
pub async fn diff(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Query(query): Query<DiffQuery>,
) -> UiResult<Html<String>> {
    let (Some(from), Some(to)) = (given(&query.from), given(&query.to)) else {
        return Err(bad("pick two images to compare"));
    };
    let store = ui.app.fleet.store();
    let mut sides = Vec::with_capacity(2);
    for id in [from, to] {
        let image = store
            .image(id)
            .await?
            .ok_or_else(|| UiError::Api(ApiError::NotFound(format!("no image {id}"))))?;
        let baseline = store.kept_baseline(id).await?.ok_or_else(|| {
            bad(&format!(
                "the collector keeps no baseline of {id} (registered before it kept them, \
                 or larger than it keeps): register it again to compare it"
            ))
        })?;
        sides.push((
            Side {
                id: image.image_id,
                digest: image.baseline_digest,
            },
            baseline,
        ));
    }
    let (to, new) = sides.pop().ok_or_else(|| bad("two images"))?;
    let (from, old) = sides.pop().ok_or_else(|| bad("two images"))?;
    // Reading verifies both digests and decodes every entry: off the async threads.
    let diff = tokio::task::spawn_blocking(move || compare(&old, &new))
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|e| StoreError::Corrupt(format!("a kept baseline does not read: {e}")))?;
    let packages = |change: PackageChange| -> Vec<String> {
        diff.packages
            .iter()
            .flatten()
            .filter(|p| p.change == change)
            .map(|p| p.describe())
            .collect()
    };
    let page = DiffPage {
        chrome: Chrome::of(&who, "images"),
        added: packages(PackageChange::Installed),
        removed: packages(PackageChange::Removed),
        upgraded: packages(PackageChange::VersionChanged),
        more: diff.counts.added + diff.counts.removed + diff.counts.changed
            > diff.files.len() as u64,
        shown_max: MAX_FILES,
        from,
        to,
        diff,
    };
    Ok(Html(page.render()?))
}

fn bad(message: &str) -> UiError {
    UiError::Api(ApiError::BadRequest(message.to_string()))
}
