-- Full-text search over message text: a generated tsvector kept by Postgres, GIN-indexed.
ALTER TABLE messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED;

COMMENT ON COLUMN messages.search IS
    'English full-text vector of text; deleted messages are filtered out at query time.';

CREATE INDEX messages_search_idx ON messages USING gin (search);
