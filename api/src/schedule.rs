//! Five-field cron schedules in Kubernetes CronJob syntax, evaluated in an
//! IANA time zone, and the CronJob decision of when a scheduled run is due.
//!
//! Syntax (as Kubernetes CronJob, i.e. robfig/cron's standard parser):
//! `minute hour day-of-month month day-of-week`, each field `*`, `?`, a
//! number, a range `a-b`, a step `x/n` (`*/n`, `a-b/n`, `a/n` meaning
//! `a-max/n`) or a comma-separated list of those. Months take `JAN`-`DEC`,
//! weekdays `SUN`-`SAT` (any case); weekday `0` and `7` are both Sunday.
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and
//! `@hourly` are accepted. When both day fields are restricted (neither
//! starts with `*` or `?`), a day matches if **either** matches, as in
//! cron; otherwise both must match.
//!
//! We parse this ourselves instead of using the `cron` crate, whose syntax
//! has a seconds field and numbers weekdays from 1 = Sunday: converting
//! between the two is where `1-5` silently turns into Sunday-Thursday.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::error::{Error, Result};

/// How far ahead [`Schedule::next_after`] and behind the missed-run search
/// look; a schedule with no time in this window is treated as never firing
/// (the same bound robfig/cron uses).
const SEARCH_YEARS: i32 = 5;
/// More than any UTC offset change at a DST transition (2h at most today).
const MAX_DST_SHIFT: TimeDelta = TimeDelta::hours(3);

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed schedule: one bit set per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days_of_month: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    days_of_week: u8,
    /// False when the field starts with `*`/`?` (without a step > 1), which
    /// switches the day match from "either" to "both".
    day_of_month_restricted: bool,
    day_of_week_restricted: bool,
}

#[derive(Clone, Copy)]
enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// Inclusive bounds; day-of-week accepts 7 for Sunday.
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &MONTH_NAMES,
            Field::DayOfWeek => &WEEKDAY_NAMES,
            _ => &[],
        }
    }

    /// Value of the first name (JAN = 1, SUN = 0).
    fn first_name_value(self) -> u32 {
        match self {
            Field::Month => 1,
            _ => 0,
        }
    }
}

/// Bits of one parsed field and whether it counts as unrestricted.
struct ParsedField {
    bits: u64,
    star: bool,
}

impl Schedule {
    /// Parses a 5-field schedule or a `@` descriptor.
    pub fn parse(input: &str) -> Result<Schedule> {
        let trimmed = input.trim();
        for prefix in ["CRON_TZ=", "TZ="] {
            if trimmed.contains(prefix) {
                return Err(Error::ScheduleTimeZonePrefix {
                    schedule: input.to_owned(),
                    prefix,
                });
            }
        }
        let invalid = |problem: String| Error::InvalidSchedule {
            schedule: input.to_owned(),
            problem,
        };
        if trimmed.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        let expanded = if trimmed.starts_with('@') {
            match trimmed {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ if trimmed.starts_with("@every") => {
                    return Err(invalid(
                        "@every is not supported; write a 5-field schedule such as \"*/15 * * * *\""
                            .to_owned(),
                    ));
                }
                _ => {
                    return Err(invalid(
                        "unknown descriptor; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                            .to_owned(),
                    ));
                }
            }
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_ascii_whitespace().collect();
        if fields.len() != 5 {
            let hint = if fields.len() == 6 {
                "; seconds are not supported"
            } else {
                ""
            };
            return Err(invalid(format!(
                "it has {} fields; expected 5 (minute hour day-of-month month day-of-week){hint}",
                fields.len()
            )));
        }
        let mut parsed = Vec::with_capacity(5);
        for (field, text) in Field::ALL.into_iter().zip(fields) {
            parsed.push(parse_field(field, text).map_err(|problem| {
                invalid(format!("{} field {text:?}: {problem}", field.name()))
            })?);
        }
        let [minute, hour, dom, month, dow] = <[ParsedField; 5]>::try_from(parsed)
            .map_err(|_| invalid("internal: field count".to_owned()))?;
        // Day-of-week 7 is Sunday, the same bit as 0.
        let mut dow_bits = dow.bits;
        if dow_bits & (1 << 7) != 0 {
            dow_bits = (dow_bits & !(1 << 7)) | 1;
        }
        let schedule = Schedule {
            source: input.to_owned(),
            minutes: minute.bits,
            hours: hour.bits as u32,
            days_of_month: dom.bits as u32,
            months: month.bits as u16,
            days_of_week: dow_bits as u8,
            day_of_month_restricted: !dom.star,
            day_of_week_restricted: !dow.star,
        };
        if !schedule.can_fire() {
            return Err(invalid(
                "it never fires: none of the selected months has the selected day of the month"
                    .to_owned(),
            ));
        }
        Ok(schedule)
    }

    /// The text the schedule was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether some date matches at all (`0 0 30 2 *` never does).
    fn can_fire(&self) -> bool {
        if !self.day_of_month_restricted || self.day_of_week_restricted {
            // Any weekday-based match hits every month.
            return true;
        }
        (1..=12u32).any(|month| {
            let longest = match month {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            self.months & (1 << month) != 0
                && (1..=longest).any(|day| self.days_of_month & (1 << day) != 0)
        })
    }

    fn month_matches(&self, date: NaiveDate) -> bool {
        self.months & (1 << date.month()) != 0
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.day_of_month_restricted && self.day_of_week_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    fn hour_matches(&self, hour: u32) -> bool {
        self.hours & (1 << hour) != 0
    }

    fn minute_matches(&self, minute: u32) -> bool {
        self.minutes & (1 << minute) != 0
    }

    fn time_matches(&self, t: NaiveDateTime) -> bool {
        let date = t.date();
        self.month_matches(date)
            && self.day_matches(date)
            && self.hour_matches(t.hour())
            && self.minute_matches(t.minute())
    }

    /// The first time strictly after `after` at which the schedule fires,
    /// reading the fields as wall-clock time in `tz`.
    ///
    /// Wall-clock times that do not exist (skipped by a DST change) do not
    /// fire; times that exist twice fire once, at the first occurrence.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Firing times grow with wall-clock time (taking the first
        // occurrence of repeated times), so no wall-clock time at or before
        // `after`'s can fire after `after`.
        let local = after.with_timezone(&tz).naive_local();
        let limit = add_years(local, SEARCH_YEARS)?;
        let mut t = truncate_to_minute(local).checked_add_signed(TimeDelta::minutes(1))?;
        while t <= limit {
            let date = t.date();
            if !self.month_matches(date) {
                t = first_of_next_month(date)?;
            } else if !self.day_matches(date) {
                t = date.succ_opt()?.and_hms_opt(0, 0, 0)?;
            } else if !self.hour_matches(t.hour()) {
                t = truncate_to_hour(t).checked_add_signed(TimeDelta::hours(1))?;
            } else if !self.minute_matches(t.minute()) {
                t = t.checked_add_signed(TimeDelta::minutes(1))?;
            } else {
                if let Some(fire) = first_occurrence(tz, t)
                    && fire > after
                {
                    return Some(fire);
                }
                t = t.checked_add_signed(TimeDelta::minutes(1))?;
            }
        }
        None
    }

    /// The latest firing time `t` with `after < t <= at`, if any.
    pub fn latest_in(
        &self,
        after: DateTime<Utc>,
        at: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        if at <= after {
            return None;
        }
        // A wall-clock time later than `at`'s can still have fired before
        // `at` when `at` is in the second pass of a repeated hour, so start
        // a little later and skip what fires after `at`.
        let local_at = at.with_timezone(&tz).naive_local();
        let start = truncate_to_minute(local_at.checked_add_signed(MAX_DST_SHIFT)?);
        let floor = {
            let local_after = after.with_timezone(&tz).naive_local();
            let by_after = local_after.checked_sub_signed(MAX_DST_SHIFT)?;
            let by_years = add_years(local_at, -SEARCH_YEARS)?;
            by_after.max(by_years)
        };
        let mut t = start;
        while t >= floor {
            let date = t.date();
            if !self.month_matches(date) {
                t = first_of_month(date)?.checked_sub_signed(TimeDelta::minutes(1))?;
            } else if !self.day_matches(date) {
                t = date
                    .and_hms_opt(0, 0, 0)?
                    .checked_sub_signed(TimeDelta::minutes(1))?;
            } else if !self.hour_matches(t.hour()) {
                t = truncate_to_hour(t).checked_sub_signed(TimeDelta::minutes(1))?;
            } else if !self.minute_matches(t.minute()) {
                t = t.checked_sub_signed(TimeDelta::minutes(1))?;
            } else {
                if let Some(fire) = first_occurrence(tz, t) {
                    if fire <= after {
                        // Everything earlier fires earlier still.
                        return None;
                    }
                    if fire <= at {
                        return Some(fire);
                    }
                }
                t = t.checked_sub_signed(TimeDelta::minutes(1))?;
            }
        }
        None
    }

    /// Whether the schedule fires at exactly this instant.
    pub fn fires_at(&self, instant: DateTime<Utc>, tz: Tz) -> bool {
        let local = instant.with_timezone(&tz).naive_local();
        instant.second() == 0
            && instant.nanosecond() == 0
            && self.time_matches(local)
            && first_occurrence(tz, local) == Some(instant)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The UTC instant a wall-clock time first occurs in `tz`, if it exists.
fn first_occurrence(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        chrono::LocalResult::None => None,
    }
}

fn truncate_to_minute(t: NaiveDateTime) -> NaiveDateTime {
    t.date().and_hms_opt(t.hour(), t.minute(), 0).unwrap_or(t)
}

fn truncate_to_hour(t: NaiveDateTime) -> NaiveDateTime {
    t.date().and_hms_opt(t.hour(), 0, 0).unwrap_or(t)
}

fn first_of_month(date: NaiveDate) -> Option<NaiveDateTime> {
    NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?.and_hms_opt(0, 0, 0)
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDateTime> {
    let (year, month) = if date.month() == 12 {
        (date.year().checked_add(1)?, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)?.and_hms_opt(0, 0, 0)
}

fn add_years(t: NaiveDateTime, years: i32) -> Option<NaiveDateTime> {
    let year = t.year().checked_add(years)?;
    // Feb 29 has no twin in most years; the bound need not be exact.
    let date = NaiveDate::from_ymd_opt(year, t.month(), t.day().min(28))?;
    Some(date.and_time(t.time()))
}

fn parse_field(field: Field, text: &str) -> std::result::Result<ParsedField, String> {
    let mut result = ParsedField {
        bits: 0,
        star: false,
    };
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    for part in text.split(',') {
        let (bits, star) = parse_part(field, part)?;
        result.bits |= bits;
        result.star |= star;
    }
    Ok(result)
}

/// One comma-separated element: `*`, `?`, `v`, `a-b`, each optionally `/step`.
fn parse_part(field: Field, part: &str) -> std::result::Result<(u64, bool), String> {
    if part.is_empty() {
        return Err("a list element is empty (\",,\" or a ',' at an end)".to_owned());
    }
    let (min, max) = field.bounds();
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => {
            let step =
                parse_number(step).ok_or_else(|| format!("step {step:?} is not a number"))?;
            if step == 0 {
                return Err("a step must be at least 1".to_owned());
            }
            (range, Some(step))
        }
        None => (part, None),
    };
    let (start, end, star) = if range == "*" || range == "?" {
        // robfig/cron: `*/n` with n > 1 counts as a restriction.
        (min, max_for_star(field), step.is_none_or(|s| s == 1))
    } else {
        match range.split_once('-') {
            Some((a, b)) => {
                let start = parse_value(field, a)?;
                let end = parse_value(field, b)?;
                if start > end {
                    let hint = if matches!(field, Field::DayOfWeek) && end == 0 {
                        " (write Sunday at the end of a range as 7, e.g. 5-7)"
                    } else {
                        ""
                    };
                    return Err(format!("range {range:?} starts after it ends{hint}"));
                }
                (start, end, false)
            }
            // `a/n` means from a to the maximum, every n.
            None => {
                let start = parse_value(field, range)?;
                let end = if step.is_some() {
                    max_for_star(field)
                } else {
                    start
                };
                (start, end, false)
            }
        }
    };
    if start < min || end > max {
        return Err(format!("values must be between {min} and {max}"));
    }
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut value = start;
    while value <= end {
        bits |= 1 << value;
        value = match value.checked_add(step) {
            Some(v) => v,
            None => break,
        };
    }
    Ok((bits, star))
}

/// `*` in day-of-week covers 0-6: 7 is only an alias.
fn max_for_star(field: Field) -> u32 {
    match field {
        Field::DayOfWeek => 6,
        other => other.bounds().1,
    }
}

fn parse_value(field: Field, text: &str) -> std::result::Result<u32, String> {
    if let Some(number) = parse_number(text) {
        let (min, max) = field.bounds();
        if number < min || number > max {
            return Err(format!(
                "{number} is out of range; {} values are {min}-{max}",
                field.name()
            ));
        }
        return Ok(number);
    }
    let upper = text.to_ascii_uppercase();
    if let Some(index) = field.names().iter().position(|name| *name == upper) {
        return Ok(field.first_name_value() + index as u32);
    }
    let names = field.names();
    if names.is_empty() {
        Err(format!("{text:?} is not a number"))
    } else {
        Err(format!(
            "{text:?} is neither a number nor one of {}",
            names.join(", ")
        ))
    }
}

/// Decimal digits only (no sign), small enough to be a field value.
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses an IANA time zone name; an absent name means UTC.
pub fn parse_time_zone(name: Option<&str>) -> Result<Tz> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| Error::InvalidTimeZone {
            zone: name.to_owned(),
        }),
    }
}

/// Why a scheduled time passed without a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The policy was suspended at that time.
    Suspended,
    /// `startingDeadlineSeconds` had passed by the time it was noticed.
    MissedDeadline,
}

/// A scheduled time that will not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedRun {
    pub scheduled: DateTime<Utc>,
    pub reason: SkipReason,
}

/// What the scheduler should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScheduleDecision {
    /// Start a run for this scheduled time now, and record it as
    /// `status.lastScheduleTime`.
    pub run_now: Option<DateTime<Utc>>,
    /// The most recent scheduled time that passed without a run and never
    /// will: record it as `status.lastScheduleTime` too, so that it is not
    /// replayed when the policy is resumed.
    pub skipped: Option<SkippedRun>,
    /// The next scheduled time after `now`: requeue for it. Reported even
    /// while suspended, because the skipped time must still be recorded.
    pub next: Option<DateTime<Utc>>,
}

/// The CronJob controller's decision, as a pure function.
///
/// * Only times after `last_schedule_time` (or after `created` for a policy
///   that never ran) count, so nothing runs for the creation instant or
///   before it.
/// * Of several missed times only the most recent runs.
/// * With `starting_deadline_seconds`, a time older than the deadline does
///   not run (it is reported as skipped).
/// * While `suspended`, nothing runs; passed times are reported as skipped.
pub fn due_run(
    schedule: &Schedule,
    tz: Tz,
    last_schedule_time: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
    starting_deadline_seconds: Option<i64>,
    suspended: bool,
) -> ScheduleDecision {
    let earliest = last_schedule_time.unwrap_or(created);
    let next = schedule.next_after(now, tz);
    let Some(missed) = schedule.latest_in(earliest, now, tz) else {
        return ScheduleDecision {
            run_now: None,
            skipped: None,
            next,
        };
    };
    if suspended {
        return ScheduleDecision {
            run_now: None,
            skipped: Some(SkippedRun {
                scheduled: missed,
                reason: SkipReason::Suspended,
            }),
            next,
        };
    }
    let too_late = starting_deadline_seconds.is_some_and(|seconds| {
        let deadline = TimeDelta::try_seconds(seconds.max(0)).unwrap_or(TimeDelta::MAX);
        missed
            .checked_add_signed(deadline)
            .is_some_and(|latest_start| latest_start < now)
    });
    if too_late {
        return ScheduleDecision {
            run_now: None,
            skipped: Some(SkippedRun {
                scheduled: missed,
                reason: SkipReason::MissedDeadline,
            }),
            next,
        };
    }
    ScheduleDecision {
        run_now: Some(missed),
        skipped: None,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Berlin};

    fn schedule(s: &str) -> Schedule {
        Schedule::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    /// The next `n` firing times, in UTC RFC 3339.
    fn next_n(s: &str, tz: Tz, from: &str, n: usize) -> Vec<String> {
        let sched = schedule(s);
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            match sched.next_after(t, tz) {
                Some(next) => {
                    assert!(next > t);
                    assert!(
                        sched.fires_at(next, tz),
                        "{s}: {next} should be a firing time"
                    );
                    out.push(next.to_rfc3339());
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// Weekdays (Sunday = 0) on which a daily-at-noon schedule with this
    /// day-of-week field fires during one week starting Sunday 2024-06-02.
    fn weekdays(dow: &str) -> Vec<u32> {
        let sched = schedule(&format!("0 12 * * {dow}"));
        let mut t = utc("2024-06-01T23:00:00Z");
        let mut days = Vec::new();
        while let Some(next) = sched.next_after(t, Tz::UTC) {
            if next >= utc("2024-06-09T00:00:00Z") {
                break;
            }
            days.push(next.weekday().num_days_from_sunday());
            t = next;
        }
        days
    }

    #[test]
    fn weekday_forms() {
        assert_eq!(weekdays("1-5"), [1, 2, 3, 4, 5], "1-5 is Monday to Friday");
        assert_eq!(weekdays("0"), [0]);
        assert_eq!(weekdays("7"), [0], "7 is Sunday too");
        assert_eq!(weekdays("SUN"), [0]);
        assert_eq!(weekdays("sun"), [0]);
        assert_eq!(weekdays("5-7"), [0, 5, 6], "Friday to Sunday");
        assert_eq!(weekdays("*/2"), [0, 2, 4, 6]);
        assert_eq!(weekdays("1-5/2"), [1, 3, 5]);
        assert_eq!(weekdays("MON-FRI"), [1, 2, 3, 4, 5]);
        assert_eq!(weekdays("mon,wed,fri"), [1, 3, 5]);
        assert_eq!(weekdays("SAT,SUN"), [0, 6]);
        assert_eq!(weekdays("0,7"), [0]);
        assert_eq!(weekdays("0-7"), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(weekdays("*"), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(weekdays("?"), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(weekdays("3/2"), [3, 5]);
        assert_eq!(weekdays("1-7/3"), [0, 1, 4], "1, 4 and 7");
    }

    #[test]
    fn issue_example_runs_monday_to_friday_at_three() {
        let times = next_n("0 3 * * 1-5", Tz::UTC, "2024-06-01T00:00:00Z", 6);
        assert_eq!(
            times,
            [
                "2024-06-03T03:00:00+00:00",
                "2024-06-04T03:00:00+00:00",
                "2024-06-05T03:00:00+00:00",
                "2024-06-06T03:00:00+00:00",
                "2024-06-07T03:00:00+00:00",
                "2024-06-10T03:00:00+00:00",
            ]
        );
    }

    #[test]
    fn minutes_hours_steps_lists() {
        assert_eq!(
            next_n("*/20 * * * *", Tz::UTC, "2024-01-01T00:05:00Z", 4),
            [
                "2024-01-01T00:20:00+00:00",
                "2024-01-01T00:40:00+00:00",
                "2024-01-01T01:00:00+00:00",
                "2024-01-01T01:20:00+00:00",
            ]
        );
        assert_eq!(
            next_n("5/15 9-10 * * *", Tz::UTC, "2024-01-01T00:00:00Z", 5),
            [
                "2024-01-01T09:05:00+00:00",
                "2024-01-01T09:20:00+00:00",
                "2024-01-01T09:35:00+00:00",
                "2024-01-01T09:50:00+00:00",
                "2024-01-01T10:05:00+00:00",
            ]
        );
        assert_eq!(
            next_n("0,30 8,17 * * *", Tz::UTC, "2024-01-01T08:00:00Z", 3),
            [
                "2024-01-01T08:30:00+00:00",
                "2024-01-01T17:00:00+00:00",
                "2024-01-01T17:30:00+00:00",
            ]
        );
        // Strictly after: a time exactly on the schedule is not returned.
        assert_eq!(
            next_n("0 * * * *", Tz::UTC, "2024-01-01T08:00:00Z", 1),
            ["2024-01-01T09:00:00+00:00"]
        );
        // Seconds in the start time.
        assert_eq!(
            next_n("0 * * * *", Tz::UTC, "2024-01-01T07:59:59.5Z", 1),
            ["2024-01-01T08:00:00+00:00"]
        );
    }

    #[test]
    fn month_names_and_descriptors() {
        assert_eq!(
            next_n("0 0 1 jan,JUL *", Tz::UTC, "2024-02-01T00:00:00Z", 2),
            ["2024-07-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("0 0 1 MAR-MAY/2 *", Tz::UTC, "2024-01-01T00:00:00Z", 2),
            ["2024-03-01T00:00:00+00:00", "2024-05-01T00:00:00+00:00"]
        );
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (descriptor, fields) in cases {
            assert_eq!(
                next_n(descriptor, Berlin, "2024-03-05T10:17:00Z", 3),
                next_n(fields, Berlin, "2024-03-05T10:17:00Z", 3),
                "{descriptor}"
            );
        }
        assert_eq!(
            next_n("@weekly", Tz::UTC, "2024-06-05T00:00:00Z", 1),
            ["2024-06-09T00:00:00+00:00"],
            "a Sunday"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: the 13th OR any Friday.
        let times = next_n("0 0 13 * 5", Tz::UTC, "2024-09-01T00:00:00Z", 5);
        assert_eq!(
            times,
            [
                "2024-09-06T00:00:00+00:00", // Friday
                "2024-09-13T00:00:00+00:00", // Friday the 13th, once
                "2024-09-20T00:00:00+00:00",
                "2024-09-27T00:00:00+00:00",
                "2024-10-04T00:00:00+00:00",
            ]
        );
        let times = next_n("0 0 1 * MON", Tz::UTC, "2024-06-25T00:00:00Z", 3);
        assert_eq!(
            times,
            [
                "2024-07-01T00:00:00+00:00", // the 1st, a Monday
                "2024-07-08T00:00:00+00:00",
                "2024-07-15T00:00:00+00:00",
            ]
        );
        // Day-of-week unrestricted: only the day of month counts.
        assert_eq!(
            next_n("0 0 13 * *", Tz::UTC, "2024-09-01T00:00:00Z", 1),
            ["2024-09-13T00:00:00+00:00"]
        );
        // Day-of-month `*`: only the weekday counts.
        assert_eq!(
            next_n("0 0 * * 5", Tz::UTC, "2024-09-01T00:00:00Z", 1),
            ["2024-09-06T00:00:00+00:00"]
        );
        // `*/2` in day-of-month is a restriction (robfig/cron): odd days OR Sunday.
        assert_eq!(
            next_n("0 0 */2 * 0", Tz::UTC, "2024-09-01T12:00:00Z", 4),
            [
                "2024-09-03T00:00:00+00:00",
                "2024-09-05T00:00:00+00:00",
                "2024-09-07T00:00:00+00:00",
                "2024-09-08T00:00:00+00:00", // Sunday
            ]
        );
        // `*/1` is not a restriction: AND with the weekday.
        assert_eq!(
            next_n("0 0 */1 * 0", Tz::UTC, "2024-09-01T12:00:00Z", 1),
            ["2024-09-08T00:00:00+00:00"]
        );
    }

    #[test]
    fn month_ends_and_leap_days() {
        assert_eq!(
            next_n("0 0 31 * *", Tz::UTC, "2024-01-31T00:00:00Z", 4),
            [
                "2024-03-31T00:00:00+00:00",
                "2024-05-31T00:00:00+00:00",
                "2024-07-31T00:00:00+00:00",
                "2024-08-31T00:00:00+00:00",
            ]
        );
        assert_eq!(
            next_n("0 0 30 * *", Tz::UTC, "2025-01-30T00:00:00Z", 2),
            ["2025-03-30T00:00:00+00:00", "2025-04-30T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("0 12 29 2 *", Tz::UTC, "2024-03-01T00:00:00Z", 2),
            ["2028-02-29T12:00:00+00:00", "2032-02-29T12:00:00+00:00"]
        );
        assert_eq!(
            next_n("59 23 28-29 FEB *", Tz::UTC, "2100-02-01T00:00:00Z", 2),
            ["2100-02-28T23:59:00+00:00", "2101-02-28T23:59:00+00:00"],
            "2100 is not a leap year"
        );
        // New year across the boundary.
        assert_eq!(
            next_n("0 0 1 1 *", Tz::UTC, "2024-12-31T23:59:59Z", 1),
            ["2025-01-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn berlin_spring_forward_skips_the_missing_hour() {
        // 2024-03-31 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            next_n("30 2 * * *", Berlin, "2024-03-30T00:00:00Z", 3),
            [
                "2024-03-30T01:30:00+00:00", // 02:30 CET
                // 2024-03-31 02:30 does not exist: skipped
                "2024-04-01T00:30:00+00:00", // 02:30 CEST
                "2024-04-02T00:30:00+00:00",
            ]
        );
        assert_eq!(
            next_n("0 * * * *", Berlin, "2024-03-31T00:30:00Z", 2),
            ["2024-03-31T01:00:00+00:00", "2024-03-31T02:00:00+00:00"],
            "02:00 local does not exist: 03:00 CEST (01:00 UTC) and 04:00 CEST follow"
        );
    }

    #[test]
    fn berlin_fall_back_fires_once_at_the_first_occurrence() {
        // 2024-10-27 03:00 CEST goes back to 02:00 CET; 02:xx happens twice.
        assert_eq!(
            next_n("30 2 * * *", Berlin, "2024-10-26T12:00:00Z", 2),
            ["2024-10-27T00:30:00+00:00", "2024-10-28T01:30:00+00:00"]
        );
        assert_eq!(
            next_n("*/30 2-3 27 10 *", Berlin, "2024-10-26T22:00:00Z", 5),
            [
                "2024-10-27T00:00:00+00:00", // 02:00 CEST
                "2024-10-27T00:30:00+00:00", // 02:30 CEST
                // 02:00 and 02:30 CET are repeats: not again
                "2024-10-27T02:00:00+00:00", // 03:00 CET
                "2024-10-27T02:30:00+00:00", // 03:30 CET
                "2025-10-27T01:00:00+00:00", // next year, 02:00 CET
            ]
        );
        // Starting inside the repeated hour does not go back in time.
        let sched = schedule("45 2 * * *");
        let inside_second_pass = utc("2024-10-27T01:10:00Z"); // 02:10 CET
        assert_eq!(
            sched.next_after(inside_second_pass, Berlin),
            Some(utc("2024-10-28T01:45:00Z"))
        );
    }

    #[test]
    fn new_york_dst_both_ways() {
        // 2024-03-10 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            next_n("15 2 * * *", New_York, "2024-03-09T00:00:00Z", 2),
            ["2024-03-09T07:15:00+00:00", "2024-03-11T06:15:00+00:00"]
        );
        // 2024-11-03 02:00 EDT goes back to 01:00 EST.
        assert_eq!(
            next_n("30 1 * * *", New_York, "2024-11-02T12:00:00Z", 2),
            ["2024-11-03T05:30:00+00:00", "2024-11-04T06:30:00+00:00"]
        );
        // The issue's example in New York time.
        assert_eq!(
            next_n("0 3 * * 1-5", New_York, "2024-11-01T12:00:00Z", 2),
            ["2024-11-04T08:00:00+00:00", "2024-11-05T08:00:00+00:00"]
        );
    }

    #[test]
    fn latest_in_finds_the_most_recent_time() {
        let sched = schedule("0 * * * *");
        assert_eq!(
            sched.latest_in(
                utc("2024-01-01T00:00:00Z"),
                utc("2024-01-01T05:30:00Z"),
                Tz::UTC
            ),
            Some(utc("2024-01-01T05:00:00Z"))
        );
        // Bounds: exclusive below, inclusive above.
        assert_eq!(
            sched.latest_in(
                utc("2024-01-01T05:00:00Z"),
                utc("2024-01-01T05:59:00Z"),
                Tz::UTC
            ),
            None
        );
        assert_eq!(
            sched.latest_in(
                utc("2024-01-01T04:59:00Z"),
                utc("2024-01-01T05:00:00Z"),
                Tz::UTC
            ),
            Some(utc("2024-01-01T05:00:00Z"))
        );
        // Inside Berlin's repeated hour, the first pass's later minute has
        // already fired.
        let sched = schedule("50 2 * * *");
        assert_eq!(
            sched.latest_in(
                utc("2024-10-26T00:00:00Z"),
                utc("2024-10-27T01:10:00Z"),
                Berlin
            ),
            Some(utc("2024-10-27T00:50:00Z"))
        );
        // Far apart times stay cheap and exact.
        let sched = schedule("0 12 29 2 *");
        assert_eq!(
            sched.latest_in(
                utc("2020-01-01T00:00:00Z"),
                utc("2024-12-01T00:00:00Z"),
                Tz::UTC
            ),
            Some(utc("2024-02-29T12:00:00Z"))
        );
    }

    #[test]
    fn parse_errors_are_clear() {
        let cases = [
            ("TZ=UTC 0 3 * * *", "spec.timeZone"),
            ("CRON_TZ=Europe/Berlin 0 3 * * *", "CRON_TZ="),
            ("", "empty"),
            ("   ", "empty"),
            ("0 3 * *", "has 4 fields; expected 5"),
            ("0 0 3 * * *", "seconds are not supported"),
            ("60 * * * *", "minute field \"60\": 60 is out of range"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field \"0\""),
            ("* * 32 * *", "out of range"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week values are 0-7"),
            ("* * * * MON-SUN", "write Sunday at the end of a range as 7"),
            ("5-1 * * * *", "starts after it ends"),
            ("*/0 * * * *", "step must be at least 1"),
            ("*/x * * * *", "step \"x\" is not a number"),
            ("1,,2 * * * *", "list element is empty"),
            ("a * * * *", "\"a\" is not a number"),
            ("* * * FOO *", "neither a number nor one of JAN"),
            ("* * * * FOO", "SUN, MON"),
            ("-1 * * * *", "is not a number"),
            ("+1 * * * *", "is not a number"),
            ("@every 1h", "@every is not supported"),
            ("@reboot", "unknown descriptor"),
            ("0 0 30 2 *", "never fires"),
            ("0 0 31 4,6 *", "never fires"),
        ];
        for (input, expected) in cases {
            match Schedule::parse(input) {
                Ok(s) => panic!("{input:?} should be rejected, got {s:?}"),
                Err(e) => {
                    assert!(
                        e.to_string().contains(expected),
                        "{input:?}: {e} should mention {expected:?}"
                    );
                    assert_eq!(e.reason(), "InvalidSchedule");
                }
            }
        }
        // Feb 29 or a weekday is fine; surrounding whitespace is fine.
        schedule("0 0 29 2 *");
        schedule("0 0 30 2 1");
        schedule("  0   3 * *   1-5 ");
    }

    #[test]
    fn time_zones() {
        assert_eq!(parse_time_zone(None), Ok(Tz::UTC));
        assert_eq!(parse_time_zone(Some("Europe/Berlin")), Ok(Berlin));
        assert_eq!(
            parse_time_zone(Some("America/Argentina/Buenos_Aires")),
            Ok(chrono_tz::America::Argentina::Buenos_Aires)
        );
        for bad in ["Europe/Atlantis", "", "Local", "berlin", "UTC+2"] {
            let e = parse_time_zone(Some(bad)).err();
            assert!(
                matches!(e, Some(Error::InvalidTimeZone { .. })),
                "{bad:?}: {e:?}"
            );
            assert_eq!(e.map(|e| e.reason()), Some("InvalidTimeZone"));
        }
    }

    // --- the CronJob decision ---------------------------------------------

    fn decide(
        s: &str,
        last: Option<&str>,
        created: &str,
        now: &str,
        deadline: Option<i64>,
        suspended: bool,
    ) -> ScheduleDecision {
        due_run(
            &schedule(s),
            Tz::UTC,
            last.map(utc),
            utc(created),
            utc(now),
            deadline,
            suspended,
        )
    }

    #[test]
    fn no_run_at_creation() {
        // Created exactly on a scheduled time.
        let d = decide(
            "0 3 * * *",
            None,
            "2024-06-01T03:00:00Z",
            "2024-06-01T03:00:00Z",
            None,
            false,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(d.next, Some(utc("2024-06-02T03:00:00Z")));
        // Created a little after it.
        let d = decide(
            "0 3 * * *",
            None,
            "2024-06-01T03:00:01Z",
            "2024-06-01T03:05:00Z",
            None,
            false,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(d.skipped, None);
    }

    #[test]
    fn first_run_after_creation() {
        let d = decide(
            "0 3 * * *",
            None,
            "2024-06-01T02:00:00Z",
            "2024-06-01T03:00:05Z",
            None,
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-01T03:00:00Z")));
        assert_eq!(d.next, Some(utc("2024-06-02T03:00:00Z")));
    }

    #[test]
    fn only_the_most_recent_missed_run() {
        // The operator was down for three days.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-01T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-04T10:00:00Z",
            None,
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-04T03:00:00Z")));
        assert_eq!(d.skipped, None);
        // Once recorded, nothing more is due until the next time.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-04T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-04T10:00:00Z",
            None,
            false,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(d.next, Some(utc("2024-06-05T03:00:00Z")));
    }

    #[test]
    fn starting_deadline() {
        // Within the window.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-01T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-02T03:04:00Z",
            Some(300),
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-02T03:00:00Z")));
        // At the window's end.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-01T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-02T03:05:00Z",
            Some(300),
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-02T03:00:00Z")));
        // Past it.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-01T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-02T03:05:01Z",
            Some(300),
            false,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(
            d.skipped,
            Some(SkippedRun {
                scheduled: utc("2024-06-02T03:00:00Z"),
                reason: SkipReason::MissedDeadline
            })
        );
        assert_eq!(d.next, Some(utc("2024-06-03T03:00:00Z")));
        // A zero deadline only allows starting on the dot.
        let d = decide(
            "* * * * *",
            None,
            "2024-06-01T00:00:00Z",
            "2024-06-01T01:00:00Z",
            Some(0),
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-01T01:00:00Z")));
        // Negative deadlines behave as zero.
        let d = decide(
            "* * * * *",
            None,
            "2024-06-01T00:00:00Z",
            "2024-06-01T01:00:30Z",
            Some(-5),
            false,
        );
        assert_eq!(d.run_now, None);
    }

    #[test]
    fn suspended_policies_skip_and_never_replay() {
        let d = decide(
            "0 3 * * *",
            Some("2024-06-01T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-02T04:00:00Z",
            None,
            true,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(
            d.skipped,
            Some(SkippedRun {
                scheduled: utc("2024-06-02T03:00:00Z"),
                reason: SkipReason::Suspended
            })
        );
        assert_eq!(d.next, Some(utc("2024-06-03T03:00:00Z")));
        // The operator records the skipped time; after resuming, it is not
        // replayed.
        let d = decide(
            "0 3 * * *",
            Some("2024-06-02T03:00:00Z"),
            "2024-05-01T00:00:00Z",
            "2024-06-02T05:00:00Z",
            None,
            false,
        );
        assert_eq!(d.run_now, None);
        assert_eq!(d.skipped, None);
    }

    #[test]
    fn decisions_in_a_time_zone() {
        // 03:00 Berlin is 01:00 UTC in summer.
        let d = due_run(
            &schedule("0 3 * * 1-5"),
            Berlin,
            None,
            utc("2024-06-02T00:00:00Z"),
            utc("2024-06-03T01:00:30Z"),
            None,
            false,
        );
        assert_eq!(d.run_now, Some(utc("2024-06-03T01:00:00Z")));
        assert_eq!(d.next, Some(utc("2024-06-04T01:00:00Z")));
    }
}
