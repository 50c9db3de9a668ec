-- Conversations, participants, messages and reactions.
-- Invariants live here: the per-conversation sequence is unique, idempotency keys are
-- unique per sender, platform ids are unique per platform, children cascade on delete.

CREATE TABLE conversations (
    id                       uuid PRIMARY KEY,
    name                     text,
    description              text,
    platform                 text NOT NULL
        CHECK (platform IN ('websocket', 'telegram', 'discord', 'x', 'whatsapp')),
    platform_conversation_id text NOT NULL,
    platform_metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by               text NOT NULL,
    message_count            bigint NOT NULL DEFAULT 0,
    last_seq                 bigint NOT NULL DEFAULT 0,
    last_message_at          timestamptz,
    archived_at              timestamptz,
    metadata                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags                     text[] NOT NULL DEFAULT '{}',
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_platform_id_key UNIQUE (platform, platform_conversation_id)
);

COMMENT ON COLUMN conversations.last_seq IS
    'Highest message seq handed out; incremented in the same transaction as the message insert, so seqs are gapless.';
COMMENT ON COLUMN conversations.message_count IS
    'Messages ever stored (soft-deleted ones included); equals last_seq.';
COMMENT ON COLUMN conversations.platform_conversation_id IS
    'The id of the room on its platform; defaults to the conversation id. Sent to Socket.IO clients as roomId/channelId.';

CREATE INDEX conversations_platform_conversation_id_idx ON conversations (platform_conversation_id);
CREATE INDEX conversations_activity_idx ON conversations ((coalesce(last_message_at, created_at)) DESC, id DESC);
CREATE INDEX conversations_tags_idx ON conversations USING gin (tags);

CREATE TABLE participants (
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    participant_id   text NOT NULL,
    participant_type text NOT NULL DEFAULT 'user'
        CHECK (participant_type IN ('user', 'agent', 'system')),
    role             text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    display_name     text,
    joined_at        timestamptz NOT NULL DEFAULT now(),
    last_read_seq    bigint NOT NULL DEFAULT 0,
    is_pinned        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (conversation_id, participant_id)
);

COMMENT ON COLUMN participants.last_read_seq IS
    'Read horizon: every message with seq <= this is read. Only moves forward. Sending a message moves it to that message. unread = conversations.last_seq - last_read_seq.';

CREATE INDEX participants_participant_idx ON participants (participant_id, conversation_id);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq               bigint NOT NULL,
    sender_id         text NOT NULL,
    sender_name       text,
    sender_type       text NOT NULL DEFAULT 'user' CHECK (sender_type IN ('user', 'agent', 'system')),
    text              text NOT NULL,
    client_message_id text,
    platform_context  jsonb NOT NULL DEFAULT '{}'::jsonb,
    attachments       jsonb NOT NULL DEFAULT '[]'::jsonb,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    thread_id         text,
    reactions         jsonb NOT NULL DEFAULT '{}'::jsonb,
    edit_history      jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CONSTRAINT messages_conversation_seq_key UNIQUE (conversation_id, seq),
    CONSTRAINT messages_client_id_key UNIQUE (conversation_id, sender_id, client_message_id)
);

COMMENT ON COLUMN messages.client_message_id IS
    'Idempotency key chosen by the client; a retried send with the same key returns the stored message.';
COMMENT ON COLUMN messages.reactions IS
    'Denormalised {emoji: count}, maintained in the same transaction as the reactions table.';

CREATE INDEX messages_conversation_sender_idx ON messages (conversation_id, sender_id, seq);
CREATE INDEX messages_conversation_created_idx ON messages (conversation_id, created_at);

CREATE TABLE reactions (
    message_id   uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    principal_id text NOT NULL,
    emoji        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, principal_id, emoji)
);

CREATE TABLE agents (
    agent_id   text PRIMARY KEY,
    owner_id   text NOT NULL,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE agents IS
    'Agent ids registered by their owners; an owner reads every conversation its agent is in.';

CREATE INDEX agents_owner_idx ON agents (owner_id);
