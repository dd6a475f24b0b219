//! Shared formatting: conditions, times, colors, column alignment.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A time relative to `now`: `5m ago`, `in 2h`, `-` when absent.
pub fn relative(time: Option<&Time>, now: DateTime<Utc>) -> String {
    let Some(time) = time else {
        return "-".to_owned();
    };
    let seconds = now
        .signed_duration_since(lifeboat_api::time::from_k8s_time(time))
        .num_seconds();
    let span = short_span(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

fn short_span(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Whether to color: on a terminal only (and never with NO_COLOR).
pub fn color_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// How a value reads: good, bad, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Plain,
}

/// `text` in the tone's ANSI color when `color` is on.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    match (color, tone) {
        (true, Tone::Good) => format!("\x1b[32m{text}\x1b[0m"),
        (true, Tone::Bad) => format!("\x1b[31m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// Rows as left-aligned columns two spaces apart; each cell is
/// `(text, tone)`, colored after padding so escapes do not skew widths.
pub fn table(header: &[&str], rows: &[Vec<(String, Tone)>], color: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (cell, _)) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Tone)>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, tone)) in cells.into_iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let padded = if i == last {
                cell
            } else {
                format!("{cell:<width$}  ")
            };
            out.push_str(&paint(&padded, tone, color));
        }
        out.push('\n');
    };
    line(
        header
            .iter()
            .map(|h| ((*h).to_owned(), Tone::Plain))
            .collect(),
        &mut out,
    );
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

/// Bytes for people: `0 B`, `512 B`, `1.5 KiB`, `12.3 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // f64 for display only: exact enough for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A condition for tests.
    pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: lifeboat_api::time::to_k8s_time(Utc::now()),
            observed_generation: None,
        }
    }
    use chrono::TimeZone as _;

    #[test]
    fn relative_times() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let at = |s: i64| lifeboat_api::time::to_k8s_time(now + chrono::TimeDelta::seconds(s));
        assert_eq!(relative(None, now), "-");
        assert_eq!(relative(Some(&at(-30)), now), "30s ago");
        assert_eq!(relative(Some(&at(-600)), now), "10m ago");
        assert_eq!(relative(Some(&at(3 * 3600)), now), "in 3h");
        assert_eq!(relative(Some(&at(-3 * 86_400)), now), "3d ago");
    }

    #[test]
    fn tables_align_and_color_only_when_asked() {
        let rows = vec![vec![
            ("a".to_owned(), Tone::Plain),
            ("long-value".to_owned(), Tone::Bad),
        ]];
        let plain = table(&["NAME", "V"], &rows, false);
        assert_eq!(plain, "NAME  V\na     long-value\n");
        assert!(!plain.contains('\x1b'));
        let colored = table(&["NAME", "V"], &rows, true);
        assert!(colored.contains("\x1b[31mlong-value\x1b[0m"));
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(12_900_000), "12.3 MiB");
        assert_eq!(super::human_bytes(1 << 30), "1.0 GiB");
    }
}
