//! Query strings as the dashboard's forms and links send them: an empty field means
//! "any", and page cursors are the store's opaque ones.

use super::error::UiResult;
use crate::store::Cursor;

/// Some text, or `None` when it is empty.
pub fn given(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|t| !t.is_empty())
}

/// The page cursor of a query, when one was given.
pub fn cursor(text: &str) -> UiResult<Option<Cursor>> {
    Ok(given(text).map(Cursor::decode).transpose()?)
}
