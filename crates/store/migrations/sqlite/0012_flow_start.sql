-- Nothing on SQLite: its writers take turns, so one INSERT … WHERE (SELECT COUNT(*) …) counts
-- and inserts a flow start with no other write in between. (PostgreSQL gets a function that
-- does the same under a lock.)
SELECT 1;
