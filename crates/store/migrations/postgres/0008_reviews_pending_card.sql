-- One pending review application per card: two flows of the same organization card filing at
-- the same moment leave one application, and the second filer is told one is pending.
-- Applications filed twice before this rule keep the first; the later ones are closed as
-- duplicates (decided when filed, by the system), so the agency sees them as not approved.
UPDATE reviews SET state = 'rejected', decided_at = filed_at, reviewer = '系統',
    note = '同一憑證已有審核中之申請（重複申請）'
WHERE state = 'pending' AND id NOT IN (
    SELECT MIN(id) FROM reviews WHERE state = 'pending' GROUP BY org_issuer, org_serial
);
CREATE UNIQUE INDEX reviews_pending_card_key ON reviews (org_issuer, org_serial)
    WHERE state = 'pending';
