-- The version of the terms (用戶約定條款) the applicant accepted with a registration or a
-- replacement; NULL on a review application and on receipts filed before versions were kept.
ALTER TABLE receipts ADD COLUMN terms_version TEXT;
