//! Human and machine output: aligned tables, JSON, sizes, times, progress bars.

use crate::error::{CliError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use unicode_width::UnicodeWidthStr;

/// A table printed with aligned columns (or tab-separated without a header in scripted mode).
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names; `right` marks right-aligned (numeric) columns.
    pub fn new(header: Vec<String>, right: Vec<bool>) -> Table {
        Table {
            header,
            right,
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table.
    pub fn render(&self, scripted: bool) -> String {
        let mut out = String::new();
        if scripted {
            for r in &self.rows {
                out.push_str(&r.join("\t"));
                out.push('\n');
            }
            return out;
        }
        let n = self.header.len();
        let mut w = vec![0usize; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.width());
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                let pad = w[i] - c.width();
                let last = i + 1 == n;
                if self.right.get(i).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self, scripted: bool) -> Result<()> {
        print_str(&self.render(scripted))
    }
}

/// Writes text to stdout, treating a closed pipe as success.
pub fn print_str(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::io("writing to stdout", e)),
    }
}

/// A JSON object whose keys keep the order given (a map would sort them).
pub struct OrderedObject(pub Vec<(String, serde_json::Value)>);

impl serde::Serialize for OrderedObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Failed(format!("encoding JSON output: {e}")))?;
    s.push('\n');
    print_str(&s)
}

/// A size for humans (`1.50G`), or exact bytes when `parsable`.
pub fn size(bytes: u64, parsable: bool) -> String {
    if parsable {
        bytes.to_string()
    } else {
        zvol::format_size(bytes)
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch (or the number when `parsable`).
pub fn time(secs: u64, parsable: bool) -> String {
    if parsable {
        return secs.to_string();
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A byte-count progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => {
            let pb = ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
            {
                pb.set_style(style);
            }
            pb
        }
    };
    pb.set_message(what.to_string());
    pb
}

/// A spinner on stderr for work without a byte count (only on a terminal).
pub fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(
            vec!["NAME".into(), "SIZE".into(), "PATH".into()],
            vec![false, true, false],
        );
        t.row(vec!["tank".into(), "1.00G".into(), "/a".into()]);
        t.row(vec!["a".into(), "10M".into(), "/bb".into()]);
        assert_eq!(
            t.render(false),
            "NAME   SIZE  PATH\ntank  1.00G  /a\na       10M  /bb\n"
        );
        assert_eq!(t.render(true), "tank\t1.00G\t/a\na\t10M\t/bb\n");
        // Wide characters take two columns each: the next column still lines up.
        let mut t = Table::new(vec!["NOTE".into(), "USED".into()], vec![false, true]);
        t.row(vec!["日本".into(), "1M".into()]);
        t.row(vec!["abcd".into(), "10M".into()]);
        assert_eq!(t.render(false), "NOTE  USED\n日本    1M\nabcd   10M\n");
    }

    #[test]
    fn formats_times() {
        assert_eq!(time(0, false), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(951_782_400, false), "2000-02-29 00:00:00 UTC");
        assert_eq!(time(1_700_000_000, false), "2023-11-14 22:13:20 UTC");
        assert_eq!(time(5, true), "5");
    }
}
