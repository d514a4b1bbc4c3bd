//! The registered images (`/ui/images`): digest, signer, registration time, and the
//! live hosts on each, linking to them.

use super::error::UiResult;
use super::query::cursor;
use super::signin::SignedIn;
use super::view::{time, Chrome};
use super::Ui;
use crate::store::PageRequest;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;
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
    let mut images = Vec::with_capacity(page.items.len());
    for image in page.items {
        images.push(ImageRow {
            live: store.live_hosts_on_image(Some(&image.image_id)).await?,
            id: image.image_id,
            digest: image.baseline_digest,
            signer: image.signer.unwrap_or_default(),
            entries: image.entries,
            created: image.created_at,
            registered: time(image.registered_ms),
        });
    }
    let page = ImagesPage {
        chrome: Chrome::of(&who, "images"),
        images,
        next: page.next_cursor.map(|c| c.encode()),
    };
    Ok(Html(page.render()?))
}
