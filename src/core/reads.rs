//! Read state: each participant's read horizon, and unread counts derived from it.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    access::Access,
    events::{Event, EventKind, Origin},
    validate,
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct MarkRead {
    /// Services and admins may mark for another participant.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub user_id: Option<String>,
    /// Defaults to the newest message.
    #[serde(default, deserialize_with = "validate::whole_number")]
    #[schema(minimum = 0)]
    pub up_to_seq: Option<i64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReadState {
    pub conversation_id: Uuid,
    pub user_id: String,
    pub last_read_seq: i64,
    pub unread_count: i64,
}

/// Moves the read horizon forward (never back) and announces it.
pub async fn mark_read(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    input: MarkRead,
    origin: Origin,
) -> AppResult<ReadState> {
    let user_id = match input.user_id {
        Some(u) if u != principal.id => {
            if !principal.is_privileged() {
                return Err(AppError::Forbidden(
                    "only services and admins may mark messages read for someone else".into(),
                ));
            }
            validate::id("user_id", &u)?;
            u
        }
        _ => principal.id.clone(),
    };
    if input.up_to_seq.is_some_and(|s| s < 0) {
        return Err(AppError::invalid_field("up_to_seq", "must not be negative"));
    }
    let access = Access::load(&state.db, principal, conversation_id).await?;
    let mut tx = state.db.begin().await?;
    // `before` is the row as it was (the statement's snapshot): only a horizon that moved
    // is an event for webhooks.
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        r#"
        UPDATE participants p
        SET last_read_seq = greatest(p.last_read_seq, least(coalesce($3, c.last_seq), c.last_seq))
        FROM conversations c, participants before
        WHERE p.conversation_id = $1 AND p.participant_id = $2 AND c.id = p.conversation_id
          AND before.conversation_id = p.conversation_id AND before.participant_id = p.participant_id
        RETURNING p.last_read_seq, c.last_seq, before.last_read_seq
        "#,
    )
    .bind(conversation_id)
    .bind(&user_id)
    .bind(input.up_to_seq)
    .fetch_optional(&mut *tx)
    .await?;
    let (last_read_seq, last_seq, before) = row.ok_or(AppError::Forbidden(
        "only participants have a read state in this conversation".into(),
    ))?;
    let event = Event::new(
        EventKind::MessagesRead,
        conversation_id,
        access.room,
        json!({
            "conversation_id": conversation_id,
            "user_id": user_id,
            "last_read_seq": last_read_seq,
        }),
        origin,
    );
    if last_read_seq > before {
        super::webhooks::record_event(&mut tx, &event, None).await?;
    }
    tx.commit().await?;
    state.events.publish(event);
    Ok(ReadState {
        conversation_id,
        user_id,
        last_read_seq,
        unread_count: (last_seq - last_read_seq).max(0),
    })
}
