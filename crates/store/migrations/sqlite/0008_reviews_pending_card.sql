-- One pending review application per card: two flows of the same organization card filing at
-- the same moment leave one application, and the second filer is told one is pending.
CREATE UNIQUE INDEX reviews_pending_card_key ON reviews (org_issuer, org_serial)
    WHERE state = 'pending';
