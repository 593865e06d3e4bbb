-- The audit (CONTRACT §2.4). Each record names the role that allowed it and the operator's
-- pseudonym (16 hex digits of an HMAC under a key derived from SECRET_KEY: never `sub`, an
-- e-mail, a phone or a token), and carries its link in the keyed hash chain: HMAC-SHA256, under a
-- key derived from SECRET_KEY and never stored, of the link before it and of its own content.
-- The chain starts here: rows written before this migration have no link.

ALTER TABLE events
    ADD COLUMN role     text,       -- operator | guardian; NULL: the server by itself
    ADD COLUMN operator text,       -- the pseudonym; NULL: the server by itself
    ADD COLUMN link     bytea;      -- 32 bytes; NULL: older than the chain
