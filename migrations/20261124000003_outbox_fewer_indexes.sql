-- Every message an endpoint subscribes to inserts, leases and deletes one outbox row, in
-- the send path's statement; each index on the table is written for each of those. Keep
-- the two the dispatcher needs (the primary key and the pending queues) and index dead
-- letters alone, which are few. Delivery ids stay random UUIDs; lookups by id always
-- name their endpoint too.
DROP INDEX IF EXISTS webhook_deliveries_webhook_idx;
CREATE INDEX IF NOT EXISTS webhook_deliveries_dead_idx
    ON webhook_deliveries (webhook_id, pos) WHERE state = 'dead';
ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_id_key;
