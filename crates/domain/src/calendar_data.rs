//! The office calendar years that ship with certreg (SPEC §4.2), as exceptions to the
//! Monday–Friday rule. Generated from `shared/data/calendar/*.csv` by
//! `calendar::render_shipped`; the test `spec_4_2_shipped_data_matches_published_files`
//! checks it (run it with `CERTREG_REGENERATE_CALENDAR=1` to rewrite it). Source:
//! 行政院人事行政總處（政府資料開放平臺）, Open Government Data License 1.0.

/// One year: weekdays that are days off and weekend days that are work days, each as
/// (month, day, 備註). Every other day follows Monday–Friday.
pub(super) struct ShippedYear {
    pub year: i32,
    pub days_off: &'static [(u8, u8, &'static str)],
    pub work_days: &'static [(u8, u8, &'static str)],
}

pub(super) const SHIPPED: &[ShippedYear] = &[
    ShippedYear {
        year: 2025,
        days_off: &[
            (1, 1, "開國紀念日"),
            (1, 27, "小年夜"),
            (1, 28, "農曆除夕"),
            (1, 29, "春節"),
            (1, 30, "春節"),
            (1, 31, "春節"),
            (2, 28, "和平紀念日"),
            (4, 3, "補假"),
            (4, 4, "兒童節及民族掃墓節"),
            (5, 30, "補假"),
            (9, 29, "孔子誕辰紀念日補假"),
            (10, 6, "中秋節"),
            (10, 10, "國慶日"),
            (10, 24, ""),
            (12, 25, "行憲紀念日"),
        ],
        work_days: &[(2, 8, "補行上班")],
    },
    ShippedYear {
        year: 2026,
        days_off: &[
            (1, 1, "開國紀念日"),
            (2, 16, "農曆除夕"),
            (2, 17, "春節"),
            (2, 18, "春節"),
            (2, 19, "春節"),
            (2, 20, "補假"),
            (2, 27, "補假"),
            (4, 3, "補假"),
            (4, 6, "補假"),
            (5, 1, "勞動節"),
            (6, 19, "端午節"),
            (9, 25, "中秋節"),
            (9, 28, "孔子誕辰紀念日/教師節"),
            (10, 9, "補假"),
            (10, 26, "補假"),
            (12, 25, "行憲紀念日"),
        ],
        work_days: &[],
    },
];
