-- The keys that sign the operators' tokens for other systems (ES256 JWTs, web crate's
-- token.rs), and which session each token's `sid` names.
--
-- One row per key: the public key in the clear (published at /.well-known/jwks.json), the
-- PKCS#8 private key encrypted with the store's secrets like session data. At most one key is
-- current (retired_at NULL); a rotation retires it and keeps it published until
-- publish_until, when the last token it signed has expired.
CREATE TABLE signing_keys (
    kid             TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    private_enc     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT,
    publish_until   BIGINT,
    CONSTRAINT signing_keys_pkey PRIMARY KEY (kid)
);
CREATE UNIQUE INDEX signing_keys_one_current_idx ON signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;

-- A token names its session by a random handle, never by the session id (a credential); the
-- handle goes with the session.
CREATE TABLE token_sessions (
    sid         TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    CONSTRAINT token_sessions_pkey PRIMARY KEY (sid),
    CONSTRAINT token_sessions_session_fkey FOREIGN KEY (session_id)
        REFERENCES sessions (id) ON DELETE CASCADE
);
CREATE INDEX token_sessions_session_idx ON token_sessions (session_id);
