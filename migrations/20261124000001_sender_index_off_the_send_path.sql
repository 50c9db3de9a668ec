-- Every message insert paid for this index (about 5 % of steady-state send throughput);
-- export and erasure, its only readers, now find a principal's messages conversation by
-- conversation through messages_conversation_sender_idx instead.
DROP INDEX IF EXISTS messages_sender_idx;
