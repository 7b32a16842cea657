-- Office calendar years imported with `certreg calendar import` (SPEC §4.2), PostgreSQL. Every day
-- of an imported year is kept, not only the departures from Monday–Friday, so that a year is
-- visibly whole and replacing it is one DELETE by year plus its rows. The shipped years live
-- in the binary; a year stored here is loaded over the shipped one.

CREATE TABLE calendar_days (
    day         TEXT NOT NULL,
    year        INTEGER NOT NULL,
    day_off     BOOLEAN NOT NULL,
    name        TEXT NOT NULL,
    CONSTRAINT calendar_days_pkey PRIMARY KEY (day)
);
CREATE INDEX calendar_days_year_idx ON calendar_days (year);
