//! The business calendar (SPEC §4.2): government office calendar import, the shipped years, and
//! `next_business_day` with the Monday–Friday fallback outside the loaded years.
//!
//! Dates are calendar dates in Asia/Taipei; converting "now" to one is the clock's job, not ours.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use time::{Date, Month, Weekday};

#[path = "calendar_data.rs"]
mod calendar_data;

/// The header of the published CSV, column by column.
const HEADER: [&str; 4] = ["西元日期", "星期", "是否放假", "備註"];

/// One row of the office calendar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CalendarDay {
    pub date: Date,
    /// `是否放假` = 2.
    pub day_off: bool,
    /// `備註`: the holiday's name, `補假`, `補行上班`, or empty.
    pub name: String,
}

/// A day on which the office calendar departs from the Monday–Friday rule.
///
/// Only departures are kept: an ordinary weekday or weekend needs no entry, which keeps the
/// shipped data and an imported file the same shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DayKind {
    /// A Monday–Friday day off (holiday, 補假 …).
    DayOff { name: String },
    /// A Saturday or Sunday on which offices work (補行上班).
    MakeUpWorkDay { name: String },
}

impl DayKind {
    pub fn name(&self) -> &str {
        match self {
            Self::DayOff { name } | Self::MakeUpWorkDay { name } => name,
        }
    }
}

/// Where an answer of [`BusinessCalendar::is_business_day`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaySource {
    /// The year is loaded: the office calendar decided.
    Calendar,
    /// The year is not loaded: Monday–Friday was assumed.
    Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusinessDay {
    pub business: bool,
    pub source: DaySource,
}

/// Why an office calendar file or a set of days was refused.
///
/// Lines are 1-based and count the header; `line()` is `None` for faults of the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("the calendar file is empty")]
    Empty,
    #[error("line {line}: the file is neither UTF-8 nor Big5 text (invalid byte sequence)")]
    Encoding { line: usize },
    #[error("line 1: the header must be `西元日期,星期,是否放假,備註`")]
    MissingHeader,
    #[error("line {line}: expected 4 columns `西元日期,星期,是否放假,備註`, found {found}")]
    Columns { line: usize, found: usize },
    #[error("line {line}: bad date `{value}` (expected a real date written YYYYMMDD)")]
    BadDate { line: usize, value: String },
    #[error("line {line}: 是否放假 must be 0 (work day) or 2 (day off), found `{value}`")]
    BadFlag { line: usize, value: String },
    #[error("line {line}: weekday `{found}` does not match {date}, which is a {expected}")]
    WrongWeekday {
        line: usize,
        date: Date,
        found: String,
        expected: char,
    },
    #[error("{}date {date} appears more than once", line_prefix(*.line))]
    DuplicateDate { line: Option<usize>, date: Date },
    #[error("year {year} is incomplete: {missing} is missing (a file must cover whole years)")]
    IncompleteYear { year: i32, missing: Date },
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

impl CalendarError {
    /// The 1-based line the fault is on, when it is on one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Empty | Self::IncompleteYear { .. } => None,
            Self::MissingHeader => Some(1),
            Self::Encoding { line }
            | Self::Columns { line, .. }
            | Self::BadDate { line, .. }
            | Self::BadFlag { line, .. }
            | Self::WrongWeekday { line, .. } => Some(*line),
            Self::DuplicateDate { line, .. } => *line,
        }
    }

    /// A stable machine-readable code (SPEC §4.6).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "calendar_empty",
            Self::Encoding { .. } => "calendar_encoding",
            Self::MissingHeader => "calendar_missing_header",
            Self::Columns { .. } => "calendar_columns",
            Self::BadDate { .. } => "calendar_bad_date",
            Self::BadFlag { .. } => "calendar_bad_flag",
            Self::WrongWeekday { .. } => "calendar_wrong_weekday",
            Self::DuplicateDate { .. } => "calendar_duplicate_date",
            Self::IncompleteYear { .. } => "calendar_incomplete_year",
        }
    }

    /// The message for zh-TW pages, with the line number when there is one.
    pub fn message_zh(&self) -> String {
        let text = match self {
            Self::Empty => "檔案內容為空".to_owned(),
            Self::Encoding { .. } => "檔案編碼錯誤，須為 UTF-8 或 Big5".to_owned(),
            Self::MissingHeader => "缺少標題列「西元日期,星期,是否放假,備註」".to_owned(),
            Self::Columns { found, .. } => format!("欄位數錯誤（應為 4 欄，實為 {found} 欄）"),
            Self::BadDate { .. } => "日期格式錯誤".to_owned(),
            Self::BadFlag { .. } => "是否放假須為 0 或 2".to_owned(),
            Self::WrongWeekday { expected, .. } => format!("星期與日期不符（應為{expected}）"),
            Self::DuplicateDate { date, .. } => format!("日期 {} 重複", yyyymmdd(*date)),
            Self::IncompleteYear { year, missing } => {
                format!("{year} 年資料不完整，缺少 {}", yyyymmdd(*missing))
            }
        };
        match self.line() {
            Some(line) => format!("第 {line} 行：{text}"),
            None => text,
        }
    }
}

fn yyyymmdd(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

fn weekday_zh(w: Weekday) -> char {
    match w {
        Weekday::Monday => '一',
        Weekday::Tuesday => '二',
        Weekday::Wednesday => '三',
        Weekday::Thursday => '四',
        Weekday::Friday => '五',
        Weekday::Saturday => '六',
        Weekday::Sunday => '日',
    }
}

fn is_weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}

/// Parses an office calendar file: UTF-8 (with or without BOM) or else Big5; CRLF or LF.
///
/// Blank lines are skipped. The file must cover whole years, since a partial year would silently
/// turn its missing days into Monday–Friday guesses.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<CalendarDay>, CalendarError> {
    let text = decode(bytes)?;
    let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    if text.trim().is_empty() {
        return Err(CalendarError::Empty);
    }
    let (_, header) = lines.next().ok_or(CalendarError::Empty)?;
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    if header != HEADER {
        return Err(CalendarError::MissingHeader);
    }
    let mut days = Vec::new();
    let mut lines_of = Vec::new();
    for (line, raw) in lines {
        if raw.trim().is_empty() {
            continue;
        }
        days.push(parse_row(line, raw)?);
        lines_of.push(Some(line));
    }
    check_whole_years(&days, &lines_of)?;
    Ok(days)
}

fn decode(bytes: &[u8]) -> Result<String, CalendarError> {
    crate::text::decode_utf8_or_big5(bytes).map_err(|line| CalendarError::Encoding { line })
}

fn parse_row(line: usize, raw: &str) -> Result<CalendarDay, CalendarError> {
    // splitn: a 備註 with a comma in it stays one name rather than becoming a column error.
    let fields: Vec<&str> = raw.trim().splitn(4, ',').map(str::trim).collect();
    if fields.len() < 3 {
        return Err(CalendarError::Columns {
            line,
            found: fields.len(),
        });
    }
    let date = parse_date(fields[0]).ok_or_else(|| CalendarError::BadDate {
        line,
        value: fields[0].to_owned(),
    })?;
    let expected = weekday_zh(date.weekday());
    let mut found = fields[1].chars();
    if found.next() != Some(expected) || found.next().is_some() {
        return Err(CalendarError::WrongWeekday {
            line,
            date,
            found: fields[1].to_owned(),
            expected,
        });
    }
    let day_off = match fields[2] {
        "0" => false,
        "2" => true,
        other => {
            return Err(CalendarError::BadFlag {
                line,
                value: other.to_owned(),
            });
        }
    };
    let name = fields.get(3).copied().unwrap_or("");
    let name = name
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name);
    Ok(CalendarDay {
        date,
        day_off,
        name: name.to_owned(),
    })
}

fn parse_date(s: &str) -> Option<Date> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = s[..4].parse().ok()?;
    let month: u8 = s[4..6].parse().ok()?;
    let day: u8 = s[6..].parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// Checks days the way an import needs them (no date twice, whole years) and returns the
/// years they cover, sorted. Stores call it before replacing those years, so a caller that
/// skipped `parse_csv` still cannot leave a year half-loaded.
pub fn check_days(days: &[CalendarDay]) -> Result<Vec<i32>, CalendarError> {
    check_whole_years(days, &[])?;
    let years: BTreeSet<i32> = days.iter().map(|d| d.date.year()).collect();
    Ok(years.into_iter().collect())
}

/// Refuses duplicates and years with a day missing; `lines` gives each day's source line if any.
fn check_whole_years(days: &[CalendarDay], lines: &[Option<usize>]) -> Result<(), CalendarError> {
    let mut seen = BTreeSet::new();
    for (i, day) in days.iter().enumerate() {
        if !seen.insert(day.date) {
            return Err(CalendarError::DuplicateDate {
                line: lines.get(i).copied().flatten(),
                date: day.date,
            });
        }
    }
    let years: BTreeSet<i32> = seen.iter().map(|d| d.year()).collect();
    for year in years {
        let mut d = Date::from_calendar_date(year, Month::January, 1).expect("January 1st");
        while d.year() == year {
            if !seen.contains(&d) {
                return Err(CalendarError::IncompleteYear { year, missing: d });
            }
            match d.next_day() {
                Some(next) => d = next,
                None => break,
            }
        }
    }
    Ok(())
}

/// The office calendar for the loaded years, and the Monday–Friday rule for all others.
#[derive(Debug, Default)]
pub struct BusinessCalendar {
    years: BTreeSet<i32>,
    exceptions: BTreeMap<Date, DayKind>,
    /// Years answered by the fallback: each is logged once and stays on the health check until
    /// it is imported. Behind a lock because answering a question must not need `&mut`.
    fallback_years: Mutex<BTreeSet<i32>>,
}

impl Clone for BusinessCalendar {
    fn clone(&self) -> Self {
        Self {
            years: self.years.clone(),
            exceptions: self.exceptions.clone(),
            fallback_years: Mutex::new(self.fallback_used()),
        }
    }
}

impl BusinessCalendar {
    /// An empty calendar: every date falls back to Monday–Friday.
    pub fn new() -> Self {
        Self::default()
    }

    /// The years that ship with certreg (see `calendar_data.rs`).
    pub fn shipped() -> Self {
        let mut calendar = Self::new();
        for year in calendar_data::SHIPPED {
            calendar
                .import(expand_shipped(year))
                .expect("shipped calendar data is checked against the published files by tests");
        }
        calendar
    }

    /// The shipped years with the imported ones (as the store keeps them) loaded over them: a
    /// year that was imported replaces the shipped one, so a corrected file wins.
    pub fn with_imported(days: Vec<CalendarDay>) -> Result<Self, CalendarError> {
        let mut calendar = Self::shipped();
        if !days.is_empty() {
            calendar.import(days)?;
        }
        Ok(calendar)
    }

    /// Keeps `previous`'s record of fallback years: swapping in a reloaded calendar must not
    /// hide a year that was guessed and is still not loaded from the health check.
    pub fn remembering_fallbacks_of(self, previous: &BusinessCalendar) -> Self {
        let earlier = previous.fallback_used();
        if let Ok(mut used) = self.fallback_years.lock() {
            used.extend(earlier);
        }
        self
    }

    /// Loads whole years, replacing what was loaded for them before; returns the years, sorted.
    ///
    /// All or nothing: on error nothing changes.
    pub fn import(&mut self, days: Vec<CalendarDay>) -> Result<Vec<i32>, CalendarError> {
        check_whole_years(&days, &[])?;
        let years: BTreeSet<i32> = days.iter().map(|d| d.date.year()).collect();
        for &year in &years {
            let first = Date::from_calendar_date(year, Month::January, 1).expect("January 1st");
            let last = Date::from_calendar_date(year, Month::December, 31).expect("December 31st");
            self.exceptions.retain(|d, _| *d < first || *d > last);
        }
        for day in days {
            let kind = match (day.day_off, is_weekend(day.date)) {
                (true, false) => DayKind::DayOff { name: day.name },
                (false, true) => DayKind::MakeUpWorkDay { name: day.name },
                _ => continue,
            };
            self.exceptions.insert(day.date, kind);
        }
        self.years.extend(&years);
        Ok(years.into_iter().collect())
    }

    /// The loaded years, sorted.
    pub fn years(&self) -> Vec<i32> {
        self.years.iter().copied().collect()
    }

    pub fn covers(&self, year: i32) -> bool {
        self.years.contains(&year)
    }

    /// The departure from Monday–Friday on `d`, if the loaded calendar has one.
    pub fn exception(&self, d: Date) -> Option<&DayKind> {
        self.exceptions.get(&d)
    }

    pub fn is_business_day(&self, d: Date) -> BusinessDay {
        if !self.covers(d.year()) {
            self.note_fallback(d.year());
            return BusinessDay {
                business: !is_weekend(d),
                source: DaySource::Fallback,
            };
        }
        let business = match self.exceptions.get(&d) {
            Some(DayKind::DayOff { .. }) => false,
            Some(DayKind::MakeUpWorkDay { .. }) => true,
            None => !is_weekend(d),
        };
        BusinessDay {
            business,
            source: DaySource::Calendar,
        }
    }

    /// The first business day strictly after `d`, and whether any day looked at on the way was
    /// outside the loaded years (so the answer rests on the Monday–Friday guess).
    pub fn next_business_day(&self, d: Date) -> (Date, bool) {
        let mut fallback = false;
        let mut day = d;
        // Ends: every fallback week has a business day, and `Date::MAX` bounds the loaded years.
        while let Some(next) = day.next_day() {
            day = next;
            let answer = self.is_business_day(day);
            fallback |= answer.source == DaySource::Fallback;
            if answer.business {
                return (day, fallback);
            }
        }
        (day, true)
    }

    /// Years not loaded for which the fallback has answered, sorted.
    pub fn fallback_used(&self) -> BTreeSet<i32> {
        let used = self
            .fallback_years
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        used.iter().copied().filter(|y| !self.covers(*y)).collect()
    }

    /// What the health check should show on `today` (SPEC §4.2); empty when all is well.
    pub fn warnings_for(&self, today: Date) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut reported = BTreeSet::new();
        let this_year = today.year();
        if !self.covers(this_year) {
            warnings.push(format!(
                "the office calendar for {this_year} (the current year) is not loaded: \
                 Monday–Friday is assumed; import it with `certreg calendar import FILE`"
            ));
            reported.insert(this_year);
        }
        // December is when the next year's file is published and when reviews start landing in it.
        if today.month() == Month::December && !self.covers(this_year + 1) {
            let next = this_year + 1;
            warnings.push(format!(
                "the office calendar for {next} is not loaded yet: dates from January on will \
                 assume Monday–Friday; import it with `certreg calendar import FILE`"
            ));
            reported.insert(next);
        }
        for year in self.fallback_used() {
            if !reported.contains(&year) {
                warnings.push(format!(
                    "dates in {year} were computed with the Monday–Friday fallback because its \
                     office calendar is not loaded; import it with `certreg calendar import FILE`"
                ));
            }
        }
        warnings
    }

    fn note_fallback(&self, year: i32) {
        let mut used = self
            .fallback_years
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if used.insert(year) {
            tracing::warn!(
                year,
                "office calendar for {year} not loaded; assuming Monday–Friday business days"
            );
        }
    }
}

/// Turns a shipped year's exceptions back into the whole year of rows an import expects.
fn expand_shipped(year: &calendar_data::ShippedYear) -> Vec<CalendarDay> {
    let date = |&(m, d, _): &(u8, u8, &str)| {
        Month::try_from(m)
            .ok()
            .and_then(|m| Date::from_calendar_date(year.year, m, d).ok())
            .expect("shipped calendar dates are real dates")
    };
    let off: BTreeMap<Date, &str> = year.days_off.iter().map(|e| (date(e), e.2)).collect();
    let work: BTreeMap<Date, &str> = year.work_days.iter().map(|e| (date(e), e.2)).collect();
    let mut days = Vec::with_capacity(366);
    let mut d = Date::from_calendar_date(year.year, Month::January, 1).expect("January 1st");
    while d.year() == year.year {
        let (day_off, name) = if let Some(name) = off.get(&d) {
            (true, *name)
        } else if let Some(name) = work.get(&d) {
            (false, *name)
        } else {
            (is_weekend(d), "")
        };
        days.push(CalendarDay {
            date: d,
            day_off,
            name: name.to_owned(),
        });
        match d.next_day() {
            Some(next) => d = next,
            None => break,
        }
    }
    days
}

/// Renders `calendar_data.rs` from parsed office calendar files: the procedure the shipped data
/// comes from, kept here so the test that checks the data can also regenerate it.
#[cfg(test)]
fn render_shipped(days: &[CalendarDay]) -> String {
    use std::fmt::Write as _;
    let years: BTreeSet<i32> = days.iter().map(|d| d.date.year()).collect();
    let mut out = String::new();
    out.push_str(
        "//! The office calendar years that ship with certreg (SPEC §4.2), as exceptions to the\n\
         //! Monday–Friday rule. Generated from `shared/data/calendar/*.csv` by\n\
         //! `calendar::render_shipped`; the test `spec_4_2_shipped_data_matches_published_files`\n\
         //! checks it (run it with `CERTREG_REGENERATE_CALENDAR=1` to rewrite it). Source:\n\
         //! 行政院人事行政總處（政府資料開放平臺）, Open Government Data License 1.0.\n\
         \n\
         /// One year: weekdays that are days off and weekend days that are work days, each as\n\
         /// (month, day, 備註). Every other day follows Monday–Friday.\n\
         pub(super) struct ShippedYear {\n    \
             pub year: i32,\n    \
             pub days_off: &'static [(u8, u8, &'static str)],\n    \
             pub work_days: &'static [(u8, u8, &'static str)],\n\
         }\n\
         \n\
         pub(super) const SHIPPED: &[ShippedYear] = &[\n",
    );
    let entry = |d: &CalendarDay| {
        format!(
            "({}, {}, {:?})",
            u8::from(d.date.month()),
            d.date.day(),
            d.name
        )
    };
    for year in years {
        let of_year = days.iter().filter(|d| d.date.year() == year);
        let off: Vec<String> = of_year
            .clone()
            .filter(|d| d.day_off && !is_weekend(d.date))
            .map(entry)
            .collect();
        let work: Vec<String> = of_year
            .filter(|d| !d.day_off && is_weekend(d.date))
            .map(entry)
            .collect();
        let _ = writeln!(out, "    ShippedYear {{\n        year: {year},");
        for (field, list) in [("days_off", off), ("work_days", work)] {
            match list.len() {
                0 => {
                    let _ = writeln!(out, "        {field}: &[],");
                }
                1 => {
                    let _ = writeln!(out, "        {field}: &[{}],", list[0]);
                }
                _ => {
                    let _ = writeln!(out, "        {field}: &[");
                    for e in list {
                        let _ = writeln!(out, "            {e},");
                    }
                    let _ = writeln!(out, "        ],");
                }
            }
        }
        out.push_str("    },\n");
    }
    out.push_str("];\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;
    use time::macros::date;

    fn shared(file: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../../shared/data/calendar/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parsed(file: &str) -> Vec<CalendarDay> {
        parse_csv(&shared(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    fn calendar_2025_2026() -> BusinessCalendar {
        let mut cal = BusinessCalendar::new();
        cal.import(parsed("2025.csv")).unwrap();
        cal.import(parsed("2026.csv")).unwrap();
        cal
    }

    /// A whole valid year in LF form, as a base for the error cases.
    fn year_csv(year: i32) -> String {
        let mut s = String::from("西元日期,星期,是否放假,備註\n");
        let mut d = Date::from_calendar_date(year, Month::January, 1).unwrap();
        while d.year() == year {
            let flag = if is_weekend(d) { 2 } else { 0 };
            let _ = writeln!(s, "{},{},{flag},", yyyymmdd(d), weekday_zh(d.weekday()));
            d = d.next_day().unwrap();
        }
        s
    }

    /// `year_csv` with line `line` (1-based) replaced.
    fn with_line(year: i32, line: usize, replacement: &str) -> Vec<u8> {
        let csv = year_csv(year);
        let mut lines: Vec<&str> = csv.lines().collect();
        lines[line - 1] = replacement;
        lines.join("\n").into_bytes()
    }

    #[test]
    fn spec_4_2_parses_the_published_files() {
        for (file, year) in [
            ("2025.csv", 2025),
            ("2025-big5.csv", 2025),
            ("2026.csv", 2026),
        ] {
            let days = parsed(file);
            assert_eq!(days.len(), 365, "{file}");
            assert!(days.iter().all(|d| d.date.year() == year), "{file}");
        }
        let days = parsed("2025.csv");
        assert_eq!(
            days[0],
            CalendarDay {
                date: date!(2025 - 01 - 01),
                day_off: true,
                name: "開國紀念日".into()
            }
        );
        let saturday = days
            .iter()
            .find(|d| d.date == date!(2025 - 02 - 08))
            .unwrap();
        assert!(!saturday.day_off);
        assert_eq!(saturday.name, "補行上班");
    }

    #[test]
    fn spec_4_2_big5_and_utf8_files_are_the_same_days() {
        assert_eq!(parsed("2025-big5.csv"), parsed("2025.csv"));
    }

    #[test]
    fn spec_4_2_utf8_bom_and_lf_are_accepted() {
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend(shared("2026.csv"));
        assert_eq!(parse_csv(&bom).unwrap(), parsed("2026.csv"));

        let lf = String::from_utf8(shared("2026.csv"))
            .unwrap()
            .replace("\r\n", "\n");
        let padded = format!(
            "  西元日期 , 星期,是否放假 ,備註 \n{}\n\n  \n",
            lf.split_once('\n').unwrap().1
        );
        assert_eq!(parse_csv(padded.as_bytes()).unwrap(), parsed("2026.csv"));
    }

    #[test]
    fn spec_4_2_errors_name_the_line() {
        let cases: Vec<(Vec<u8>, CalendarError, &str)> = vec![
            (
                with_line(2027, 12, "2027011,二,0,"),
                CalendarError::BadDate {
                    line: 12,
                    value: "2027011".into(),
                },
                "第 12 行：日期格式錯誤",
            ),
            (
                with_line(2027, 12, "20270230,二,0,"),
                CalendarError::BadDate {
                    line: 12,
                    value: "20270230".into(),
                },
                "第 12 行：日期格式錯誤",
            ),
            (
                with_line(2027, 5, "20270104,一,1,"),
                CalendarError::BadFlag {
                    line: 5,
                    value: "1".into(),
                },
                "第 5 行：是否放假須為 0 或 2",
            ),
            (
                with_line(2027, 5, "20270104,二,0,"),
                CalendarError::WrongWeekday {
                    line: 5,
                    date: date!(2027 - 01 - 04),
                    found: "二".into(),
                    expected: '一',
                },
                "第 5 行：星期與日期不符（應為一）",
            ),
            (
                with_line(2027, 5, "20270104"),
                CalendarError::Columns { line: 5, found: 1 },
                "第 5 行：欄位數錯誤（應為 4 欄，實為 1 欄）",
            ),
            (
                with_line(2027, 1, "date,weekday,off,note"),
                CalendarError::MissingHeader,
                "第 1 行：缺少標題列「西元日期,星期,是否放假,備註」",
            ),
            (
                with_line(2027, 1, "20270101,五,2,開國紀念日"),
                CalendarError::MissingHeader,
                "第 1 行：缺少標題列「西元日期,星期,是否放假,備註」",
            ),
            (Vec::new(), CalendarError::Empty, "檔案內容為空"),
            (
                b"\xEF\xBB\xBF \r\n\r\n".to_vec(),
                CalendarError::Empty,
                "檔案內容為空",
            ),
        ];
        for (input, error, zh) in cases {
            let got = parse_csv(&input).unwrap_err();
            assert_eq!(got, error);
            assert_eq!(got.message_zh(), zh);
        }

        // Line 5 (2027-01-04) repeated in place of line 6 (2027-01-05).
        let dup = parse_csv(&with_line(2027, 6, "20270104,一,0,")).unwrap_err();
        assert_eq!(
            dup,
            CalendarError::DuplicateDate {
                line: Some(6),
                date: date!(2027 - 01 - 04)
            }
        );
        assert_eq!(dup.message_zh(), "第 6 行：日期 20270104 重複");
        assert_eq!(
            dup.to_string(),
            "line 6: date 2027-01-04 appears more than once"
        );

        let csv = year_csv(2027);
        let without_may_day: String = csv
            .lines()
            .filter(|l| !l.starts_with("20270501"))
            .map(|l| format!("{l}\n"))
            .collect();
        let incomplete = parse_csv(without_may_day.as_bytes()).unwrap_err();
        assert_eq!(
            incomplete,
            CalendarError::IncompleteYear {
                year: 2027,
                missing: date!(2027 - 05 - 01)
            }
        );
        assert_eq!(incomplete.line(), None);
        assert_eq!(incomplete.message_zh(), "2027 年資料不完整，缺少 20270501");

        // A header alone mentions no year, so there is nothing to be incomplete.
        assert_eq!(
            parse_csv("西元日期,星期,是否放假,備註\r\n".as_bytes()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn spec_4_2_garbage_bytes_are_an_encoding_error() {
        let mut bytes = year_csv(2027).into_bytes();
        let third_line = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .unwrap()
            .0
            + 1;
        bytes.splice(third_line..third_line, [0xFF, 0x80, 0xFE]);
        let err = parse_csv(&bytes).unwrap_err();
        assert_eq!(err, CalendarError::Encoding { line: 3 });
        assert_eq!(
            err.message_zh(),
            "第 3 行：檔案編碼錯誤，須為 UTF-8 或 Big5"
        );
        assert_eq!(err.code(), "calendar_encoding");

        assert_eq!(
            parse_csv(&[0x80, 0x81, 0xFF]).unwrap_err(),
            CalendarError::Encoding { line: 1 }
        );
    }

    #[test]
    fn spec_4_2_shipped_data_matches_published_files() {
        let mut days = parsed("2025.csv");
        assert_eq!(parsed("2025-big5.csv"), days);
        days.extend(parsed("2026.csv"));
        let rendered = render_shipped(&days);
        let embedded = include_str!("calendar_data.rs");
        if rendered != embedded {
            if std::env::var_os("CERTREG_REGENERATE_CALENDAR").is_some() {
                let path = format!("{}/src/calendar_data.rs", env!("CARGO_MANIFEST_DIR"));
                std::fs::write(&path, &rendered).unwrap();
                panic!("{path} regenerated; rebuild and run the tests again");
            }
            panic!(
                "calendar_data.rs is not what the published files give; rerun this test with CERTREG_REGENERATE_CALENDAR=1"
            );
        }

        let shipped = BusinessCalendar::shipped();
        assert_eq!(shipped.years(), vec![2025, 2026]);
        for day in &days {
            let answer = shipped.is_business_day(day.date);
            assert_eq!(
                answer,
                BusinessDay {
                    business: !day.day_off,
                    source: DaySource::Calendar
                },
                "{}",
                day.date
            );
            if let Some(kind) = shipped.exception(day.date) {
                assert_eq!(kind.name(), day.name, "{}", day.date);
            }
        }
        let imported = calendar_2025_2026();
        assert_eq!(shipped.exceptions, imported.exceptions);
        assert!(shipped.fallback_used().is_empty());
    }

    #[test]
    fn spec_4_2_next_business_day_in_the_loaded_years() {
        let cal = BusinessCalendar::shipped();
        let cases = [
            // Friday before 中秋節 (Monday 2025-10-06).
            (date!(2025 - 10 - 03), date!(2025 - 10 - 07)),
            // Thursday before 國慶日 (Friday 2025-10-10) and a weekend.
            (date!(2025 - 10 - 09), date!(2025 - 10 - 13)),
            // Friday before 孔子誕辰紀念日補假 (Monday 2025-09-29).
            (date!(2025 - 09 - 26), date!(2025 - 09 - 30)),
            // An ordinary weekend.
            (date!(2025 - 03 - 07), date!(2025 - 03 - 10)),
            (date!(2025 - 03 - 08), date!(2025 - 03 - 10)),
            // Lunar New Year 2025: 01-27 to 01-31 off, then a weekend.
            (date!(2025 - 01 - 24), date!(2025 - 02 - 03)),
            // Lunar New Year 2026: 02-16 to 02-20 off.
            (date!(2026 - 02 - 13), date!(2026 - 02 - 23)),
            // The make-up work Saturday, and the day after it.
            (date!(2025 - 02 - 07), date!(2025 - 02 - 08)),
            (date!(2025 - 02 - 08), date!(2025 - 02 - 10)),
            // Across the new year into another loaded year, over 開國紀念日.
            (date!(2025 - 12 - 31), date!(2026 - 01 - 02)),
        ];
        for (from, expected) in cases {
            assert_eq!(
                cal.next_business_day(from),
                (expected, false),
                "after {from}"
            );
        }
        assert!(cal.fallback_used().is_empty());
        assert!(cal.warnings_for(date!(2026 - 06 - 01)).is_empty());
    }

    #[test]
    fn spec_4_2_outside_loaded_years_falls_back_to_monday_to_friday() {
        let cal = BusinessCalendar::shipped();
        assert!(!cal.covers(2030));
        // 2030-01-04 is a Friday.
        assert_eq!(
            cal.is_business_day(date!(2030 - 01 - 04)),
            BusinessDay {
                business: true,
                source: DaySource::Fallback
            }
        );
        assert_eq!(
            cal.is_business_day(date!(2030 - 01 - 05)),
            BusinessDay {
                business: false,
                source: DaySource::Fallback
            }
        );
        assert_eq!(
            cal.next_business_day(date!(2030 - 01 - 04)),
            (date!(2030 - 01 - 07), true)
        );
        // 2027-01-01 is a Friday; the real calendar will make it a holiday, the fallback cannot.
        assert_eq!(
            cal.next_business_day(date!(2026 - 12 - 31)),
            (date!(2027 - 01 - 01), true)
        );
        assert_eq!(cal.fallback_used(), BTreeSet::from([2027, 2030]));

        let warnings = cal.warnings_for(date!(2026 - 12 - 15));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("2027"), "{warnings:?}");
        assert!(warnings[1].contains("2030"), "{warnings:?}");
        let warnings = BusinessCalendar::shipped().warnings_for(date!(2027 - 03 - 01));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("2027 (the current year)"));
        assert!(
            BusinessCalendar::shipped()
                .warnings_for(date!(2026 - 11 - 30))
                .is_empty()
        );

        let mut imported = cal.clone();
        imported
            .import(parse_csv(year_csv(2030).as_bytes()).unwrap())
            .unwrap();
        assert_eq!(imported.fallback_used(), BTreeSet::from([2027]));
        assert_eq!(
            imported.is_business_day(date!(2030 - 01 - 04)).source,
            DaySource::Calendar
        );
    }

    #[test]
    fn spec_4_2_import_replaces_a_year() {
        let mut cal = calendar_2025_2026();
        assert!(!cal.is_business_day(date!(2025 - 10 - 10)).business);
        assert!(cal.is_business_day(date!(2025 - 02 - 08)).business);

        // A corrected 2025 that is plain Monday–Friday.
        let years = cal
            .import(parse_csv(year_csv(2025).as_bytes()).unwrap())
            .unwrap();
        assert_eq!(years, vec![2025]);
        assert_eq!(cal.years(), vec![2025, 2026]);
        assert!(cal.is_business_day(date!(2025 - 10 - 10)).business);
        assert!(!cal.is_business_day(date!(2025 - 02 - 08)).business);
        assert_eq!(cal.exception(date!(2025 - 10 - 10)), None);
        // 2026 is untouched.
        assert!(!cal.is_business_day(date!(2026 - 02 - 16)).business);

        // A refused import changes nothing.
        let mut partial = parsed("2025.csv");
        partial.pop();
        let before = cal.clone();
        assert_eq!(
            cal.import(partial),
            Err(CalendarError::IncompleteYear {
                year: 2025,
                missing: date!(2025 - 12 - 31)
            })
        );
        assert_eq!(cal.exceptions, before.exceptions);
        let mut doubled = parsed("2026.csv");
        doubled.push(doubled[0].clone());
        assert_eq!(
            cal.import(doubled),
            Err(CalendarError::DuplicateDate {
                line: None,
                date: date!(2026 - 01 - 01)
            })
        );
    }

    #[test]
    fn spec_4_2_imported_years_load_over_the_shipped_ones() {
        // A corrected 2025 (plain Monday–Friday) and a new 2030, as a store would return them.
        let mut stored = parse_csv(year_csv(2025).as_bytes()).unwrap();
        stored.extend(parse_csv(year_csv(2030).as_bytes()).unwrap());
        assert_eq!(check_days(&stored), Ok(vec![2025, 2030]));
        let cal = BusinessCalendar::with_imported(stored).unwrap();
        assert_eq!(cal.years(), vec![2025, 2026, 2030]);
        // 國慶日 2025 is gone with the corrected year; 2026's shipped holidays stay.
        assert!(cal.is_business_day(date!(2025 - 10 - 10)).business);
        assert!(!cal.is_business_day(date!(2026 - 02 - 16)).business);
        assert_eq!(
            cal.is_business_day(date!(2030 - 01 - 04)).source,
            DaySource::Calendar
        );
        // A reload remembers the years the fallback answered, except those now loaded.
        let before = BusinessCalendar::shipped();
        before.is_business_day(date!(2030 - 01 - 04));
        before.is_business_day(date!(2031 - 01 - 06));
        let reloaded = cal.clone().remembering_fallbacks_of(&before);
        assert_eq!(reloaded.fallback_used(), BTreeSet::from([2031]));
        assert!(reloaded.warnings_for(date!(2026 - 06 - 01))[0].contains("2031"));
        assert_eq!(
            BusinessCalendar::with_imported(Vec::new()).unwrap().years(),
            BusinessCalendar::shipped().years()
        );
        let mut partial = parse_csv(year_csv(2030).as_bytes()).unwrap();
        partial.pop();
        assert!(matches!(
            BusinessCalendar::with_imported(partial),
            Err(CalendarError::IncompleteYear { year: 2030, .. })
        ));
    }
}
