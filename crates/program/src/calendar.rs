//! The working-day calendar: Monday to Friday minus California state holidays.
//!
//! The holidays are data, not code: `mappings/calendar/ca-state-holidays.csv` (`date,name`, one
//! observed closure per line, `#` comments allowed) is embedded as the default
//! ([`Calendar::default_ca`]) and a deployment can load its own file with [`Calendar::from_csv`].
//! The shipped file follows CalHR's state-holiday list and observance rules (a Sunday holiday moves to
//! Monday; a Saturday holiday is not moved, except Veterans Day which moves to Friday).
//!
//! Invariants:
//! - **A working day is a Monday–Friday date that is not listed as a holiday.** Weekends are never
//!   working days whatever the file says.
//! - **Dates outside the years the file covers are counted with weekends only**; [`Calendar::covers`]
//!   tells the caller whether a date is inside the covered years so it can warn.
//! - Parsing is bounded ([`MAX_CALENDAR_BYTES`], [`MAX_HOLIDAYS`]) and never panics; day arithmetic is
//!   bounded ([`MAX_WORKING_DAYS`]) and returns `None` instead of overflowing.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, Weekday};

/// The embedded California state-holiday file.
pub const CA_STATE_HOLIDAYS_CSV: &str =
    include_str!("../../../mappings/calendar/ca-state-holidays.csv");

/// Largest calendar text accepted by [`Calendar::from_csv`].
pub const MAX_CALENDAR_BYTES: usize = 256 * 1024;
/// Most holiday rows accepted by [`Calendar::from_csv`].
pub const MAX_HOLIDAYS: usize = 2_000;
/// Largest working-day offset [`Calendar::add_working_days`] and
/// [`Calendar::sub_working_days`] compute (about ten years).
pub const MAX_WORKING_DAYS: u32 = 2_600;
/// Longest holiday name accepted.
const MAX_NAME_CHARS: usize = 200;

/// Why a holiday file was rejected. Messages carry line numbers, never file content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The text is larger than [`MAX_CALENDAR_BYTES`].
    #[error("calendar text is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the text.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_HOLIDAYS`] rows.
    #[error("calendar has more than {max} holidays")]
    TooManyHolidays {
        /// The limit.
        max: usize,
    },
    /// The first non-comment line is not the `date,name` header.
    #[error("calendar header must be `date,name`")]
    MissingHeader,
    /// A row could not be read.
    #[error("calendar line {line}: {problem}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// A set of non-working dates on top of weekends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Calendar {
    holidays: BTreeMap<NaiveDate, String>,
}

impl Calendar {
    /// A calendar with weekends only and no holidays.
    pub fn weekends_only() -> Self {
        Self::default()
    }

    /// The shipped California state-holiday calendar (2025–2028).
    pub fn default_ca() -> Self {
        // The embedded file is checked by a unit test; should it ever fail to parse, fall back to
        // weekends only rather than panic.
        Self::from_csv(CA_STATE_HOLIDAYS_CSV).unwrap_or_default()
    }

    /// Parses a `date,name` CSV (header required, `#` comment and blank lines ignored, the name is the
    /// rest of the line after the first comma). A date listed twice is an error.
    pub fn from_csv(text: &str) -> Result<Self, CalendarError> {
        if text.len() > MAX_CALENDAR_BYTES {
            return Err(CalendarError::TooLarge {
                len: text.len(),
                max: MAX_CALENDAR_BYTES,
            });
        }
        let mut holidays = BTreeMap::new();
        let mut header_seen = false;
        for row in crate::table::rows(text) {
            let (line, rec) = match row {
                Ok(r) => (r.line, r.fields),
                Err(line) => {
                    return Err(CalendarError::BadLine {
                        line,
                        problem: "not a CSV row",
                    })
                }
            };
            if !header_seen {
                let row: Vec<&str> = rec.iter().collect();
                if row
                    .join(",")
                    .replace(' ', "")
                    .eq_ignore_ascii_case("date,name")
                {
                    header_seen = true;
                    continue;
                }
                return Err(CalendarError::MissingHeader);
            }
            if rec.len() < 2 {
                return Err(CalendarError::BadLine {
                    line,
                    problem: "expected `date,name`",
                });
            }
            let date = rec.get(0).unwrap_or_default();
            let name = crate::table::rest(&rec, 1);
            let date = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").map_err(|_| {
                CalendarError::BadLine {
                    line,
                    problem: "date is not YYYY-MM-DD",
                }
            })?;
            let name = name.trim();
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                return Err(CalendarError::BadLine {
                    line,
                    problem: "name is empty or longer than 200 characters",
                });
            }
            if holidays.len() >= MAX_HOLIDAYS {
                return Err(CalendarError::TooManyHolidays { max: MAX_HOLIDAYS });
            }
            if holidays.insert(date, name.to_string()).is_some() {
                return Err(CalendarError::BadLine {
                    line,
                    problem: "date listed twice",
                });
            }
        }
        if !header_seen {
            return Err(CalendarError::MissingHeader);
        }
        Ok(Self { holidays })
    }

    /// The holiday name for a date, if it is listed.
    pub fn holiday(&self, date: NaiveDate) -> Option<&str> {
        self.holidays.get(&date).map(String::as_str)
    }

    /// All listed holidays in date order.
    pub fn holidays(&self) -> impl Iterator<Item = (NaiveDate, &str)> + '_ {
        self.holidays.iter().map(|(d, n)| (*d, n.as_str()))
    }

    /// Whether the date's year lies between the first and last year the file lists.
    pub fn covers(&self, date: NaiveDate) -> bool {
        match (
            self.holidays.keys().next(),
            self.holidays.keys().next_back(),
        ) {
            (Some(first), Some(last)) => (first.year()..=last.year()).contains(&date.year()),
            _ => false,
        }
    }

    /// Monday–Friday and not a listed holiday.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains_key(&date)
    }

    /// The `n`th working day strictly after `date` (`n = 0` gives `date` itself). `None` past
    /// [`MAX_WORKING_DAYS`] or chrono's date range.
    pub fn add_working_days(&self, date: NaiveDate, n: u32) -> Option<NaiveDate> {
        self.step_working_days(date, n, true)
    }

    /// The `n`th working day strictly before `date` (`n = 0` gives `date` itself). `None` past
    /// [`MAX_WORKING_DAYS`] or chrono's date range.
    pub fn sub_working_days(&self, date: NaiveDate, n: u32) -> Option<NaiveDate> {
        self.step_working_days(date, n, false)
    }

    fn step_working_days(&self, date: NaiveDate, n: u32, forward: bool) -> Option<NaiveDate> {
        if n > MAX_WORKING_DAYS {
            return None;
        }
        let mut current = date;
        let mut counted = 0;
        // Terminates: every 7 consecutive dates hold 5 weekdays and at most MAX_HOLIDAYS are holidays.
        while counted < n {
            current = if forward {
                current.succ_opt()?
            } else {
                current.pred_opt()?
            };
            if self.is_working_day(current) {
                counted += 1;
            }
        }
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn embedded_file_parses_and_covers_2025_to_2028() {
        let cal = Calendar::from_csv(CA_STATE_HOLIDAYS_CSV).unwrap();
        assert_eq!(cal, Calendar::default_ca());
        assert!(cal.covers(d(2025, 6, 1)) && cal.covers(d(2028, 12, 31)));
        assert!(!cal.covers(d(2029, 1, 2)) && !cal.covers(d(2024, 12, 31)));
        for year in 2025..=2028 {
            // 11 CalHR holidays a year, including any Saturday ones listed for information.
            assert_eq!(
                cal.holidays().filter(|(h, _)| h.year() == year).count(),
                11,
                "{year}"
            );
        }
    }

    #[test]
    fn known_closures() {
        let cal = Calendar::default_ca();
        for date in [
            d(2026, 11, 26), // Thanksgiving
            d(2026, 11, 27), // day after
            d(2026, 12, 25),
            d(2027, 1, 1),
            d(2026, 3, 31),  // Cesar Chavez Day
            d(2027, 7, 5),   // July 4 on Sunday, observed Monday
            d(2028, 11, 10), // Veterans Day on Saturday, observed Friday
        ] {
            assert!(!cal.is_working_day(date), "{date}");
            assert!(cal.holiday(date).is_some(), "{date}");
        }
        // Not CalHR closures: Juneteenth, Native American Day, Lincoln's Birthday, Columbus Day.
        for date in [
            d(2026, 6, 19),
            d(2026, 9, 25),
            d(2026, 2, 12),
            d(2026, 10, 12),
        ] {
            assert!(cal.is_working_day(date), "{date}");
        }
        // July 4 2026 is a Saturday: no weekday closure on Friday the 3rd.
        assert!(cal.is_working_day(d(2026, 7, 3)));
    }

    #[test]
    fn working_day_arithmetic() {
        let cal = Calendar::default_ca();
        // Monday 23 Nov 2026 + 5 working days skips Thanksgiving, the day after and the weekend.
        assert_eq!(
            cal.add_working_days(d(2026, 11, 23), 5),
            Some(d(2026, 12, 2))
        );
        assert_eq!(
            cal.add_working_days(d(2026, 11, 23), 0),
            Some(d(2026, 11, 23))
        );
        // Friday + 1 is Monday.
        assert_eq!(
            cal.add_working_days(d(2026, 12, 4), 1),
            Some(d(2026, 12, 7))
        );
        assert_eq!(
            cal.sub_working_days(d(2026, 12, 7), 1),
            Some(d(2026, 12, 4))
        );
        assert_eq!(
            cal.sub_working_days(d(2026, 12, 2), 5),
            Some(d(2026, 11, 23))
        );
        assert_eq!(
            cal.add_working_days(d(2026, 1, 1), MAX_WORKING_DAYS + 1),
            None
        );
        assert_eq!(cal.add_working_days(NaiveDate::MAX, 1), None);
        assert_eq!(cal.sub_working_days(NaiveDate::MIN, 1), None);
    }

    #[test]
    fn csv_rows_quotes_comments_and_line_numbers() {
        let cal = Calendar::from_csv(
            "# a \"quoted\" comment\r\ndate,name\r\n2026-01-01,\"New Year's Day, observed\"\r\n2026-07-03, Independence Day, observed \r\n",
        )
        .unwrap();
        assert_eq!(
            cal.holiday(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()),
            Some("New Year's Day, observed")
        );
        // An unquoted comma stays part of the name, as it always has.
        assert_eq!(
            cal.holiday(NaiveDate::from_ymd_opt(2026, 7, 3).unwrap()),
            Some("Independence Day, observed")
        );
        // Comment and blank lines count towards the line number.
        assert!(matches!(
            Calendar::from_csv("# c\ndate,name\n\n2026-13-01,x"),
            Err(CalendarError::BadLine { line: 4, .. })
        ));
    }

    #[test]
    fn csv_errors_are_typed() {
        assert_eq!(Calendar::from_csv(""), Err(CalendarError::MissingHeader));
        assert_eq!(
            Calendar::from_csv("day,label\n2026-01-01,x"),
            Err(CalendarError::MissingHeader)
        );
        assert!(matches!(
            Calendar::from_csv("date,name\n2026-13-01,x"),
            Err(CalendarError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            Calendar::from_csv("date,name\n2026-01-01"),
            Err(CalendarError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            Calendar::from_csv("date,name\n2026-01-01,a\n2026-01-01,b"),
            Err(CalendarError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            Calendar::from_csv(&"#".repeat(MAX_CALENDAR_BYTES + 1)),
            Err(CalendarError::TooLarge { .. })
        ));
        let many: String = std::iter::once("date,name".to_string())
            .chain(
                (0..=MAX_HOLIDAYS as i64)
                    .map(|i| format!("{},h", d(2000, 1, 1) + chrono::Duration::days(i))),
            )
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            Calendar::from_csv(&many),
            Err(CalendarError::TooManyHolidays { max: MAX_HOLIDAYS })
        );
        let ok = Calendar::from_csv("# c\n\ndate,name\n2026-06-19, Juneteenth \n").unwrap();
        assert_eq!(ok.holiday(d(2026, 6, 19)), Some("Juneteenth"));
        assert!(!ok.is_working_day(d(2026, 6, 19)));
    }
}
