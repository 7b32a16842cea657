-- Which expiry and revocation notices (web crate's mail.rs) went out on which Taipei day, so
-- that each certificate's notice is mailed once a day across restarts and across the instances
-- sharing a PostgreSQL database. An instance claims a notice before mailing it and gives the
-- claim back when the mail fails; days before today are deleted by the next claim.
CREATE TABLE notices_sent (
    day     TEXT NOT NULL,
    key     TEXT NOT NULL,
    CONSTRAINT notices_sent_pkey PRIMARY KEY (day, key)
);

-- Flows idle for a day are deleted now and then (`certreg serve`), with their challenges: they
-- may hold personal data, and an abandoned flow is of no use once it has expired.
CREATE INDEX flows_touched_at_idx ON flows (touched_at);
