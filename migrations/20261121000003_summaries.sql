-- Cached conversation summaries, one per conversation, valid while nothing they cover
-- changes: a new message moves `last_seq` past `covered_through_seq`, and an edit or a
-- delete drops the row through the trigger below.
CREATE TABLE conversation_summaries (
    conversation_id     uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    covered_through_seq bigint      NOT NULL,
    provider            text        NOT NULL,
    method              text        NOT NULL,
    body                jsonb       NOT NULL,
    generated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION conversation_summaries_invalidate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM conversation_summaries WHERE conversation_id = NEW.conversation_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_invalidate_summary
AFTER UPDATE OF text, deleted_at ON messages
FOR EACH ROW
WHEN (OLD.text IS DISTINCT FROM NEW.text OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
EXECUTE FUNCTION conversation_summaries_invalidate();
