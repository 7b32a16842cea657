-- The operator's certificate issuer and notAfter (issue 6, point 3), known only when the
-- administrator added or modified the operator with the certificate read from the card; a
-- typed serial leaves both NULL (such operators are checked for revocation by serial only and
-- are not flagged for expiry).
ALTER TABLE operators ADD COLUMN cert_issuer TEXT;
ALTER TABLE operators ADD COLUMN cert_not_after INTEGER;
