//! The business operations every transport calls: plain async functions over
//! [`AppState`](crate::state::AppState) returning typed output or [`AppError`](crate::error::AppError).

pub mod access;
pub mod analytics;
pub mod conversations;
pub mod events;
pub mod guests;
pub mod history;
pub mod insights;
pub mod messages;
pub mod participants;
pub mod profiles;
pub mod reactions;
pub mod reads;
pub mod responders;
pub mod summary;
pub mod transfer;
pub mod validate;
pub mod webhooks;
pub mod writer;

use serde::Serialize;
use utoipa::ToSchema;

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items matching the query across all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, total: i64, limit: i64, offset: i64) -> Self {
        let has_more = offset + (items.len() as i64) < total;
        Self {
            items,
            total,
            limit,
            offset,
            has_more,
        }
    }
}
