//! The imported years of the government office calendar.

use super::*;

pub(crate) async fn calendar_days(pool: &Handle) -> Result<Vec<CalendarDay>> {
    let rows = sql::query("SELECT day, day_off, name FROM calendar_days ORDER BY day")
        .fetch_all(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(CalendarDay {
                date: parse_date(&s(r, "day")?)?,
                day_off: col(r, "day_off")?,
                name: s(r, "name")?,
            })
        })
        .collect()
}

/// Rows per multi-row INSERT: well under SQLite's 32766 bound variables for every table here.
const CALENDAR_ROWS_PER_INSERT: usize = 1000;

pub(crate) async fn import_calendar(pool: &Handle, days: &[CalendarDay]) -> Result<()> {
    let years = check_days(days)
        .map_err(|e| DomainError::invalid("calendar", e.to_string(), e.message_zh()))?;
    if years.is_empty() {
        return Ok(());
    }
    let mut tx = begin_write(pool).await.map_err(db)?;
    // Two imports of one year take turns: the second's DELETE sees the first's rows instead
    // of inserting beside them into a unique-key violation.
    serialize(&mut tx, "calendar").await.map_err(db)?;
    for year in &years {
        sql::query("DELETE FROM calendar_days WHERE year = $1")
            .bind(*year)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    for chunk in days.chunks(CALENDAR_ROWS_PER_INSERT) {
        let mut q = sql::QueryBuilder::new("INSERT INTO calendar_days (day, year, day_off, name) ");
        q.push_values(chunk, |mut b, d| {
            b.push_bind(date_text(d.date))
                .push_bind(d.date.year())
                .push_bind(d.day_off)
                .push_bind(d.name.clone());
        });
        q.build().execute(&mut *tx).await.map_err(db)?;
    }
    // An error above drops the transaction, which rolls it back: no year is left half-replaced.
    tx.commit().await.map_err(db)
}
