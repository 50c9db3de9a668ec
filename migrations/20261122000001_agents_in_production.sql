-- Webhooks (a transactional outbox) and built-in agent responders (contract §8).

CREATE TABLE webhooks (
    id                     uuid PRIMARY KEY,
    url                    text NOT NULL,
    events                 text[] NOT NULL,
    conversation_id        uuid REFERENCES conversations (id) ON DELETE CASCADE,
    agent_id               text,
    description            text,
    secret                 text NOT NULL,
    created_by             text NOT NULL,
    -- Registered by an admin or a service (not bound to an agent's ownership).
    created_by_privileged  boolean NOT NULL DEFAULT false,
    active                 boolean NOT NULL DEFAULT true,
    last_success_at        timestamptz,
    last_failure_at        timestamptz,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhooks_created_by_idx ON webhooks (created_by);

COMMENT ON TABLE webhooks IS
    'HTTP endpoints that receive committed events; matched inside the transaction that commits each event.';

-- One row per (endpoint, committed event) not yet delivered: written in the same statement
-- or transaction as the change. Delivered rows are deleted; dead letters stay until replayed
-- or the endpoint is deleted.
CREATE TABLE webhook_deliveries (
    pos              bigserial PRIMARY KEY,
    id               uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    -- No foreign key: each send would take a share lock on the endpoint's row, and
    -- deleting an endpoint would stall sends. The dispatcher sweeps orphans.
    webhook_id       uuid NOT NULL,
    conversation_id  uuid NOT NULL,
    event_type       text NOT NULL,
    -- Message events name the message; it is rendered as the REST API shows it when sent.
    message_id       uuid,
    data             jsonb,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

COMMENT ON COLUMN webhook_deliveries.pos IS
    'Delivery order per (webhook, conversation): a conversation''s message rows are numbered while its row is locked, so in seq order.';

CREATE INDEX webhook_deliveries_pending_idx
    ON webhook_deliveries (webhook_id, conversation_id, pos) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, pos);

CREATE TABLE agent_responders (
    agent_id       text PRIMARY KEY,
    model          text NOT NULL,
    system_prompt  text NOT NULL DEFAULT '',
    temperature    double precision,
    max_history    integer NOT NULL DEFAULT 20,
    base_url       text,
    api_key        text,
    enabled        boolean NOT NULL DEFAULT true,
    updated_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON COLUMN agent_responders.api_key IS
    'The provider key; never returned by the API nor logged.';
