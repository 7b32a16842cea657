-- A grant's optional validity period (從/至, Taipei calendar dates as YYYY-MM-DD, both
-- inclusive; NULL: open): outside it the operator's card logs in no more.
ALTER TABLE operators ADD COLUMN valid_from TEXT;
ALTER TABLE operators ADD COLUMN valid_until TEXT;
