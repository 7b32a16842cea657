-- Encrypted values are bound to their rows (associated data names the table, column and
-- row). Values written before are re-encrypted once, by the first instance that migrates,
-- which then deletes this row (see `Db::migrate`).
CREATE TABLE pending_rebinds (
    name    TEXT NOT NULL,
    CONSTRAINT pending_rebinds_pkey PRIMARY KEY (name)
);
INSERT INTO pending_rebinds (name) VALUES ('row_bound_values');
