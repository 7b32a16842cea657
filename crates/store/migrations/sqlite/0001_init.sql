-- certreg schema, SQLite. Times are INTEGER unix seconds (UTC); dates are TEXT YYYY-MM-DD.
-- Constraint names are the same as in ../postgres/0001_init.sql: the store maps them to domain
-- errors by name. National IDs are stored encrypted (*_enc) with a keyed hash (*_hash) for lookup.

CREATE TABLE agencies (
    code            TEXT NOT NULL,
    name            TEXT NOT NULL,
    county          TEXT NOT NULL,
    org_identifier  TEXT,
    CONSTRAINT agencies_pkey PRIMARY KEY (code)
);

CREATE TABLE registrations (
    code                TEXT NOT NULL,
    org_issuer          TEXT NOT NULL,
    org_serial          TEXT NOT NULL,
    org_subject         TEXT NOT NULL,
    org_sha256          TEXT NOT NULL,
    org_not_before      INTEGER NOT NULL,
    org_not_after       INTEGER NOT NULL,
    org_identifier      TEXT NOT NULL,
    org_name            TEXT NOT NULL,
    admin_issuer        TEXT NOT NULL,
    admin_serial        TEXT NOT NULL,
    admin_subject       TEXT NOT NULL,
    admin_sha256        TEXT NOT NULL,
    admin_not_before    INTEGER NOT NULL,
    admin_not_after     INTEGER NOT NULL,
    admin_holder_name   TEXT NOT NULL,
    admin_id_last4      TEXT NOT NULL,
    admin_id_enc        TEXT NOT NULL,
    admin_id_hash       TEXT NOT NULL,
    contact_name        TEXT NOT NULL,
    contact_email       TEXT NOT NULL,
    contact_phone       TEXT NOT NULL,
    contact_phone_ext   TEXT,
    contact_mobile      TEXT,
    contact_unit        TEXT,
    contact_title       TEXT,
    registered_at       INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    version             INTEGER NOT NULL,
    CONSTRAINT registrations_pkey PRIMARY KEY (code),
    CONSTRAINT registrations_code_fkey FOREIGN KEY (code) REFERENCES agencies (code)
);
CREATE INDEX registrations_admin_id_hash_idx ON registrations (admin_id_hash);

CREATE TABLE cert_history (
    id              INTEGER NOT NULL,
    code            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    cert_issuer     TEXT NOT NULL,
    cert_serial     TEXT NOT NULL,
    cert_subject    TEXT NOT NULL,
    cert_sha256     TEXT NOT NULL,
    cert_not_before INTEGER NOT NULL,
    cert_not_after  INTEGER NOT NULL,
    replaced_at     INTEGER NOT NULL,
    CONSTRAINT cert_history_pkey PRIMARY KEY (id AUTOINCREMENT),
    CONSTRAINT cert_history_code_fkey FOREIGN KEY (code) REFERENCES registrations (code),
    CONSTRAINT cert_history_kind_check CHECK (kind IN ('organization', 'administrator'))
);
CREATE INDEX cert_history_code_idx ON cert_history (code, id);

CREATE TABLE operators (
    id                  INTEGER NOT NULL,
    code                TEXT NOT NULL,
    serial              TEXT NOT NULL,
    name                TEXT NOT NULL,
    national_id_enc     TEXT NOT NULL,
    national_id_hash    TEXT NOT NULL,
    -- JSON array of function ids, in catalogue order.
    functions           TEXT NOT NULL,
    updated_at          INTEGER NOT NULL,
    version             INTEGER NOT NULL,
    CONSTRAINT operators_pkey PRIMARY KEY (id AUTOINCREMENT),
    CONSTRAINT operators_code_serial_key UNIQUE (code, serial),
    CONSTRAINT operators_code_fkey FOREIGN KEY (code) REFERENCES registrations (code)
);
CREATE INDEX operators_national_id_hash_idx ON operators (national_id_hash);

CREATE TABLE reviews (
    id                  INTEGER NOT NULL,
    code                TEXT NOT NULL,
    org_issuer          TEXT NOT NULL,
    org_serial          TEXT NOT NULL,
    org_subject         TEXT NOT NULL,
    org_sha256          TEXT NOT NULL,
    org_not_before      INTEGER NOT NULL,
    org_not_after       INTEGER NOT NULL,
    org_identifier      TEXT NOT NULL,
    org_name            TEXT NOT NULL,
    on_file             TEXT,
    applicant_name      TEXT NOT NULL,
    applicant_phone     TEXT NOT NULL,
    filed_at            INTEGER NOT NULL,
    state               TEXT NOT NULL,
    decided_at          INTEGER,
    effective           TEXT,
    reviewer            TEXT,
    note                TEXT,
    CONSTRAINT reviews_pkey PRIMARY KEY (id AUTOINCREMENT),
    CONSTRAINT reviews_code_fkey FOREIGN KEY (code) REFERENCES agencies (code),
    CONSTRAINT reviews_state_check CHECK (state IN ('pending', 'approved', 'rejected'))
);
CREATE INDEX reviews_code_idx ON reviews (code, filed_at);
CREATE INDEX reviews_state_idx ON reviews (state, filed_at);

CREATE TABLE receipts (
    id          INTEGER NOT NULL,
    code        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    review_id   INTEGER,
    CONSTRAINT receipts_pkey PRIMARY KEY (id AUTOINCREMENT),
    CONSTRAINT receipts_code_fkey FOREIGN KEY (code) REFERENCES agencies (code),
    CONSTRAINT receipts_review_id_fkey FOREIGN KEY (review_id) REFERENCES reviews (id),
    CONSTRAINT receipts_kind_check CHECK (kind IN ('first_registration', 'replace_org',
        'replace_admin', 'replace_both', 'review_application'))
);
CREATE INDEX receipts_code_idx ON receipts (code, at);

CREATE TABLE flows (
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    session     TEXT NOT NULL,
    step        TEXT NOT NULL,
    -- The collected data (may hold an administrator's national ID): encrypted JSON.
    data_enc    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    touched_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    CONSTRAINT flows_pkey PRIMARY KEY (id)
);

CREATE TABLE challenges (
    id          TEXT NOT NULL,
    flow_id     TEXT NOT NULL,
    session     TEXT NOT NULL,
    step        TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    origin      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    CONSTRAINT challenges_pkey PRIMARY KEY (id),
    CONSTRAINT challenges_flow_id_fkey FOREIGN KEY (flow_id) REFERENCES flows (id) ON DELETE CASCADE
);
CREATE INDEX challenges_flow_id_idx ON challenges (flow_id);

CREATE TABLE reviewers (
    id          INTEGER NOT NULL,
    name        TEXT NOT NULL,
    section     TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    active      BOOLEAN NOT NULL,
    CONSTRAINT reviewers_pkey PRIMARY KEY (id AUTOINCREMENT),
    CONSTRAINT reviewers_cert_serial_key UNIQUE (cert_serial),
    CONSTRAINT reviewers_section_check CHECK (section IN ('first', 'second'))
);

-- Web sessions (the web crate's session store). data is encrypted like flow data.
CREATE TABLE sessions (
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    code        TEXT,
    data_enc    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    touched_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    CONSTRAINT sessions_pkey PRIMARY KEY (id)
);
CREATE INDEX sessions_kind_code_idx ON sessions (kind, code);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- The audit log: append-only, each row chained to the previous by hash (SPEC §4.5).
CREATE TABLE audit_log (
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    code        TEXT,
    cert        TEXT,
    client      TEXT,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    -- JSON text exactly as hashed (never re-serialised).
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    CONSTRAINT audit_log_pkey PRIMARY KEY (seq)
);
CREATE INDEX audit_log_code_idx ON audit_log (code, seq);

-- The chain head: one row, updated by every append. Updating it first serialises appenders on
-- PostgreSQL (row lock) and lets verification notice that the newest rows were deleted.
CREATE TABLE audit_head (
    id      INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    hash    TEXT NOT NULL,
    CONSTRAINT audit_head_pkey PRIMARY KEY (id),
    CONSTRAINT audit_head_single_row CHECK (id = 1)
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
