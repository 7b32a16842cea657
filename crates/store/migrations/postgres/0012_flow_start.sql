-- A flow start in one round trip, the per-session cap included: the starts of one session take
-- turns on a transaction-scoped advisory lock, and the count is taken after it (each statement
-- of a VOLATILE function sees a fresh snapshot under READ COMMITTED), so every start counts
-- the ones committed before it.
CREATE FUNCTION certreg_insert_flow_capped(
    p_id TEXT, p_kind TEXT, p_session TEXT, p_step TEXT, p_data_enc TEXT,
    p_created_at BIGINT, p_touched_at BIGINT, p_version BIGINT,
    p_live_since BIGINT, p_max BIGINT
) RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('certreg:flows:' || p_session, 0));
    INSERT INTO flows (id, kind, session, step, data_enc, created_at, touched_at, version)
    SELECT p_id, p_kind, p_session, p_step, p_data_enc, p_created_at, p_touched_at, p_version
    WHERE (SELECT COUNT(*) FROM flows WHERE session = p_session AND touched_at > p_live_since)
        < p_max;
    RETURN FOUND;
END
$$;
