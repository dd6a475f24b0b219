//! Any string as a schedule: parsing never panics, and a parsed schedule's
//! next time is after the start and is a time the schedule fires at.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use lifeboat_api::schedule::Schedule;

fuzz_target!(|input: (&str, u32, u8)| {
    let (text, seconds, zone) = input;
    let Ok(schedule) = Schedule::parse(text) else {
        return;
    };
    let zones = [
        chrono_tz::Tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
    ];
    let tz = zones[usize::from(zone) % zones.len()];
    let Some(start) = DateTime::<Utc>::from_timestamp(i64::from(seconds) * 7, 0) else {
        return;
    };
    if let Some(next) = schedule.next_after(start, tz) {
        assert!(next > start);
        assert!(schedule.fires_at(next, tz), "{text:?} in {tz}: {next}");
        assert_eq!(schedule.latest_in(start, next, tz), Some(next));
    }
});
