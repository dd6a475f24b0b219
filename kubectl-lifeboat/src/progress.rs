//! Byte progress of an export or import, on stderr: a line rewritten in
//! place on a terminal, one line per step of 10 % (and at the end) with
//! `--progress=plain` for scripts and CI logs, nothing with `none` (the
//! default off a terminal). stdout stays the digest alone.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A line rewritten in place when stderr is a terminal, else nothing.
    #[default]
    Auto,
    /// One line per 10 % and one at the end, terminal or not.
    Plain,
    None,
}

/// Bytes done so far (shared by the streams that move them) of a total
/// learnt once the manifests are read.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Progress {
    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One progress line: `verb 12.3 MiB / 100.0 MiB (12 %), 45.6 MiB/s`.
pub fn line(verb: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let share = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    format!(
        "{verb} {} / {} ({share} %), {}/s",
        human_bytes(done),
        human_bytes(total),
        human_bytes(rate as u64)
    )
}

/// Which 10 % step `done` has reached (plain mode prints once per step).
pub fn step(done: u64, total: u64) -> u64 {
    done.saturating_mul(10)
        .checked_div(total)
        .unwrap_or(10)
        .min(10)
}

/// Reports `progress` on stderr every half second until dropped.
pub struct Reporter {
    task: Option<tokio::task::JoinHandle<()>>,
    mode: ProgressMode,
    terminal: bool,
    progress: Progress,
    verb: &'static str,
    started: Instant,
}

impl Reporter {
    pub fn start(mode: ProgressMode, verb: &'static str, progress: &Progress) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let shown = match mode {
            ProgressMode::Auto => terminal,
            ProgressMode::Plain => true,
            ProgressMode::None => false,
        };
        let started = Instant::now();
        let task = shown.then(|| {
            let progress = progress.clone();
            let in_place = mode == ProgressMode::Auto;
            tokio::spawn(async move {
                let mut printed_step = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let (done, total) = (progress.done(), progress.total());
                    if total == 0 {
                        continue;
                    }
                    let text = line(verb, done, total, started.elapsed());
                    if in_place {
                        eprint!("\r\x1b[2K{text}");
                    } else if step(done, total) > printed_step && done < total {
                        printed_step = step(done, total);
                        eprintln!("{text}");
                    }
                }
            })
        });
        Reporter {
            task,
            mode,
            terminal,
            progress: progress.clone(),
            verb,
            started,
        }
    }

    /// Stops reporting; the last line says where it ended.
    pub fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let text = line(
                self.verb,
                self.progress.done(),
                self.progress.total(),
                self.started.elapsed(),
            );
            if self.mode == ProgressMode::Auto && self.terminal {
                eprintln!("\r\x1b[2K{text}");
            } else {
                eprintln!("{text}");
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.mode == ProgressMode::Auto && self.terminal {
                eprintln!();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_bytes_share_and_rate() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(
            line(
                "importing",
                50 * 1024 * 1024,
                100 * 1024 * 1024,
                Duration::from_secs(2)
            ),
            "importing 50.0 MiB / 100.0 MiB (50 %), 25.0 MiB/s"
        );
        assert_eq!(
            line("x", 0, 0, Duration::ZERO),
            "x 0 B / 0 B (100 %), 0 B/s"
        );
    }

    #[test]
    fn plain_mode_steps_by_tenths() {
        assert_eq!(step(0, 1000), 0);
        assert_eq!(step(99, 1000), 0);
        assert_eq!(step(100, 1000), 1);
        assert_eq!(step(999, 1000), 9);
        assert_eq!(step(5000, 1000), 10);
        assert_eq!(step(0, 0), 10);
    }
}
