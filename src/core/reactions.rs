//! Reactions: one per principal per emoji, counted on the message in the same transaction.

use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    access::Access,
    events::EventKind,
    messages::{self, Message},
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct AddReaction {
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub emoji: String,
}

fn validate_emoji(emoji: &str) -> AppResult<()> {
    if emoji.trim().is_empty() || emoji.chars().count() > 32 || emoji.chars().any(char::is_control)
    {
        return Err(AppError::invalid_field(
            "emoji",
            "must be 1 to 32 visible characters",
        ));
    }
    Ok(())
}

/// Adds the caller's reaction; returns the message and whether it was new.
pub async fn add(
    state: &AppState,
    principal: &Principal,
    message_id: Uuid,
    emoji: &str,
) -> AppResult<(Message, bool)> {
    validate_emoji(emoji)?;
    let message = messages::get(state, principal, message_id).await?;
    let access = Access::load(&state.db, principal, message.conversation_id).await?;
    access.require_write()?;
    if message.deleted_at.is_some() {
        return Err(AppError::Conflict {
            code: "MESSAGE_DELETED",
            message: "a deleted message cannot be reacted to".into(),
        });
    }
    let mut tx = state.db.begin().await?;
    // Holding the message row until commit orders this against a concurrent delete: the
    // delete either erased the reactions after this one, or this sees the tombstone.
    let live: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM messages WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(message_id)
            .fetch_optional(&mut *tx)
            .await?;
    if live.is_none() {
        return Err(AppError::Conflict {
            code: "MESSAGE_DELETED",
            message: "a deleted message cannot be reacted to".into(),
        });
    }
    let inserted = sqlx::query(
        "INSERT INTO reactions (message_id, principal_id, emoji) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(message_id)
    .bind(&principal.id)
    .bind(emoji)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        recount(&mut tx, message_id, emoji).await?;
    }
    let message = messages::fetch(&mut *tx, message_id).await?;
    let event =
        inserted.then(|| messages::event(EventKind::ReactionUpdated, &access.room, &message));
    if let Some(event) = &event {
        super::webhooks::record_event(&mut tx, event, None).await?;
    }
    tx.commit().await?;
    if let Some(event) = event {
        state.events.publish(event);
    }
    Ok((message, inserted))
}

pub async fn remove(
    state: &AppState,
    principal: &Principal,
    message_id: Uuid,
    emoji: &str,
) -> AppResult<Message> {
    // No reaction can have an emoji that adding refuses: there is nothing to remove.
    if validate_emoji(emoji).is_err() {
        return Err(AppError::NotFound("reaction"));
    }
    let message = messages::get(state, principal, message_id).await?;
    let access = Access::load(&state.db, principal, message.conversation_id).await?;
    let mut tx = state.db.begin().await?;
    let removed = sqlx::query(
        "DELETE FROM reactions WHERE message_id = $1 AND principal_id = $2 AND emoji = $3",
    )
    .bind(message_id)
    .bind(&principal.id)
    .bind(emoji)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if removed == 0 {
        return Err(AppError::NotFound("reaction"));
    }
    recount(&mut tx, message_id, emoji).await?;
    let message = messages::fetch(&mut *tx, message_id).await?;
    let event = messages::event(EventKind::ReactionUpdated, &access.room, &message);
    super::webhooks::record_event(&mut tx, &event, None).await?;
    tx.commit().await?;
    state.events.publish(event);
    Ok(message)
}

/// Rewrites one emoji's count in the message's denormalised `reactions` map.
async fn recount(conn: &mut sqlx::PgConnection, message_id: Uuid, emoji: &str) -> AppResult<()> {
    sqlx::query(
        r#"
        UPDATE messages m SET reactions = CASE
            WHEN n.count = 0 THEN m.reactions - $2
            ELSE jsonb_set(m.reactions, ARRAY[$2], to_jsonb(n.count))
        END
        FROM (SELECT count(*) AS count FROM reactions WHERE message_id = $1 AND emoji = $2) n
        WHERE m.id = $1
        "#,
    )
    .bind(message_id)
    .bind(emoji)
    .execute(conn)
    .await?;
    Ok(())
}
