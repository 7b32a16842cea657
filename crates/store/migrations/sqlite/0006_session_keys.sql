-- Sessions are named by the SHA-256 of their id (the cookie value or bearer token), so a copy
-- of the table holds nothing a browser could present; flows and challenges are bound to that
-- key too. The rows written before held the ids themselves: those sessions end here (users log
-- in again), with the token handles and the flows in progress that named them.
DELETE FROM token_sessions;
DELETE FROM sessions;
DELETE FROM challenges;
DELETE FROM flows;

-- Every change of a session's data bumps its version; a save names the version it read, so a
-- request never overwrites what a concurrent one wrote, and a session that was deleted
-- meanwhile (logout, replacement, revocation) is never written again.
ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- A reviewer's card is known by issuer and serial: the issuer is learnt at the first login of
-- an account created with a serial alone.
ALTER TABLE reviewers ADD COLUMN cert_issuer TEXT;
