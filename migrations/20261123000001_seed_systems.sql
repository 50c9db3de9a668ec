-- The seed systems' own APIs (contract §7), guest sessions (§5), data in and out (§3).

-- Profile claims (`name`, `preferred_username`, `picture`) as last seen in a principal's
-- token: shown where the seeds show profiles (Avee messaging's `sender_info`, …).
CREATE TABLE profiles (
    principal_id  text PRIMARY KEY,
    kind          text NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'agent', 'service')),
    display_name  text,
    handle        text,
    avatar_url    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE profiles IS
    'Profile claims from each principal''s latest token; removed by erasure (DELETE /users/{id}).';

-- Anonymous guest sessions on /ws (GUEST_BOT_ID): the conversation, its guest and where
-- it connected from. Idle sessions are deleted with their conversation and messages.
CREATE TABLE guest_sessions (
    conversation_id  uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    guest_id         text NOT NULL,
    bot_id           text NOT NULL,
    client_ip        inet,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_active_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX guest_sessions_idle_idx ON guest_sessions (last_active_at);

COMMENT ON COLUMN guest_sessions.last_active_at IS
    'Last connect or message; the session is purged GUEST_SESSION_TTL after it.';

-- Erasure and export look up everything one principal did.
CREATE INDEX messages_sender_idx ON messages (sender_id, id);
CREATE INDEX reactions_principal_idx ON reactions (principal_id);
