//! Conversions between the `Time` Kubernetes objects carry (a `jiff`
//! timestamp) and the `chrono` times schedules are computed with.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A `chrono` time as a Kubernetes `Time`; times outside what `jiff`
/// represents (years beyond ±9999) are clamped to its range.
pub fn to_k8s_time(time: DateTime<Utc>) -> Time {
    let timestamp = Timestamp::new(time.timestamp(), time.timestamp_subsec_nanos() as i32)
        .unwrap_or(if time.timestamp() < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        });
    Time(timestamp)
}

/// A Kubernetes `Time` as a `chrono` time.
pub fn from_k8s_time(time: &Time) -> DateTime<Utc> {
    // jiff gives a negative fraction for times before 1970; chrono wants
    // whole seconds rounded down and a non-negative fraction.
    let (mut seconds, mut nanos) = (time.0.as_second(), time.0.subsec_nanosecond());
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    let nanos = u32::try_from(nanos).unwrap_or(0);
    // jiff's range (±9999 years) is inside chrono's, so this cannot fail;
    // the fallback only keeps the function total.
    DateTime::from_timestamp(seconds, nanos).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "2024-10-27T00:30:00Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "2099-02-28T12:00:00.123456789Z",
        ] {
            let t = DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{e}"))
                .with_timezone(&Utc);
            assert_eq!(from_k8s_time(&to_k8s_time(t)), t, "{text}");
        }
        let k8s = to_k8s_time(
            DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
                .unwrap_or_else(|e| panic!("{e}"))
                .with_timezone(&Utc),
        );
        assert_eq!(
            serde_json::to_string(&k8s).unwrap_or_default(),
            "\"2024-01-02T03:04:05Z\""
        );
    }

    #[test]
    fn out_of_range_is_clamped() {
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(to_k8s_time(far).0, Timestamp::MAX);
        assert_eq!(to_k8s_time(DateTime::<Utc>::MIN_UTC).0, Timestamp::MIN);
    }
}
