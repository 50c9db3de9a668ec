-- Batched webhook delivery: up to batch_size events per request (one conversation's,
-- in order). 1 keeps one event per request.
ALTER TABLE webhooks
    ADD COLUMN batch_size integer NOT NULL DEFAULT 1 CHECK (batch_size BETWEEN 1 AND 100);
