-- The flows a session holds are counted on every flow start (the per-session cap).
CREATE INDEX flows_session_idx ON flows (session, touched_at);
