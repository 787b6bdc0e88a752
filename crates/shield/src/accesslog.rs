//! The access log in the combined format, bounded so a flood cannot fill the disk or stall
//! requests: up to `max_lines_per_second` lines are written in full, beyond that one line in
//! [`SAMPLE_EVERY`] is written and the rest are counted and summarised once a second. Lines go
//! through a bounded queue to one writer task; a full queue drops lines rather than wait.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// One line in this many is kept once the per-second budget is spent.
pub const SAMPLE_EVERY: u64 = 100;
const QUEUE: usize = 8192;
const MAX_FIELD: usize = 1024;

/// What one request contributes to the log.
pub struct Entry<'a> {
    /// Client address.
    pub client: IpAddr,
    /// Method.
    pub method: &'a str,
    /// Request target.
    pub target: &'a str,
    /// Protocol version, e.g. `HTTP/1.1`.
    pub version: &'a str,
    /// Status sent.
    pub status: u16,
    /// Body bytes, when known.
    pub bytes: Option<u64>,
    /// Referer header.
    pub referer: Option<&'a [u8]>,
    /// User-Agent header.
    pub user_agent: Option<&'a [u8]>,
    /// The shield's decision.
    pub decision: &'static str,
    /// Route class.
    pub route: &'a str,
    /// Time spent, milliseconds.
    pub millis: u64,
}

/// The sampled access log.
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
    budget: u32,
    second: AtomicU64,
    in_second: AtomicU64,
    suppressed: AtomicU64,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        AccessLog {
            tx: None,
            budget: 0,
            second: AtomicU64::new(0),
            in_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the writer task. `path` is `-` for standard output or a file opened for append.
    /// Must be called inside a Tokio runtime.
    pub fn start(path: &str, max_lines_per_second: u32) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        // Writing is blocking IO: keep it on a blocking thread, batched.
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(line) = rx.blocking_recv() {
                buf.extend_from_slice(line.as_bytes());
                while let Ok(l) = rx.try_recv() {
                    buf.extend_from_slice(l.as_bytes());
                    if buf.len() > 256 * 1024 {
                        break;
                    }
                }
                let _ = out.write_all(&buf);
                let _ = out.flush();
                buf.clear();
            }
        });
        Ok(AccessLog {
            tx: Some(tx),
            budget: max_lines_per_second,
            second: AtomicU64::new(0),
            in_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Whether lines are written anywhere.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Lines not written so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Logs one request, subject to the budget and sampling.
    pub fn log(&self, e: &Entry<'_>) {
        if let Some(sec) = self.ticket() {
            self.write(e, sec);
        }
    }

    /// Counts one request against the budget and says whether its line is to be written (with
    /// the second it belongs to). Called before anything is copied for the line, so requests
    /// sampled away cost two atomic operations.
    pub fn ticket(&self) -> Option<u64> {
        let tx = self.tx.as_ref()?;
        let sec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let prev = self.second.load(Relaxed);
        if prev != sec
            && self
                .second
                .compare_exchange(prev, sec, Relaxed, Relaxed)
                .is_ok()
        {
            self.in_second.store(0, Relaxed);
            let n = self.suppressed.swap(0, Relaxed);
            if n > 0 {
                let _ = tx.try_send(format!(
                    "# qalqan: {n} access log lines sampled away in the last second (1 in {SAMPLE_EVERY} kept)\n"
                ));
            }
        }
        let k = self.in_second.fetch_add(1, Relaxed);
        if k >= u64::from(self.budget) && !(k - u64::from(self.budget)).is_multiple_of(SAMPLE_EVERY)
        {
            self.suppressed.fetch_add(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        Some(sec)
    }

    /// Writes a line for which [`AccessLog::ticket`] said yes.
    pub fn write(&self, e: &Entry<'_>, sec: u64) {
        let Some(tx) = &self.tx else { return };
        let line = format_line(e, sec);
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Formats one combined-format line with the shield's fields appended:
/// `addr - - [time] "request" status bytes "referer" "ua" decision route ms`.
pub fn format_line(e: &Entry<'_>, unix_secs: u64) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&e.client.to_string());
    s.push_str(" - - [");
    s.push_str(&clf_time(unix_secs));
    s.push_str("] \"");
    escape_into(&mut s, e.method.as_bytes());
    s.push(' ');
    escape_into(&mut s, e.target.as_bytes());
    s.push(' ');
    escape_into(&mut s, e.version.as_bytes());
    s.push_str("\" ");
    s.push_str(&e.status.to_string());
    s.push(' ');
    match e.bytes {
        Some(b) => s.push_str(&b.to_string()),
        None => s.push('-'),
    }
    s.push_str(" \"");
    escape_into(&mut s, e.referer.unwrap_or(b"-"));
    s.push_str("\" \"");
    escape_into(&mut s, e.user_agent.unwrap_or(b"-"));
    s.push_str("\" ");
    s.push_str(e.decision);
    s.push(' ');
    s.push_str(e.route);
    s.push(' ');
    s.push_str(&e.millis.to_string());
    s.push('\n');
    s
}

/// Escapes like nginx: `"`, `\` and bytes outside printable ASCII become `\xHH`; long fields
/// are cut so one request cannot write kilobytes.
fn escape_into(s: &mut String, b: &[u8]) {
    for &c in b.iter().take(MAX_FIELD) {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            s.push_str(&format!("\\x{c:02X}"));
        } else {
            s.push(c as char);
        }
    }
    if b.len() > MAX_FIELD {
        s.push_str("...");
    }
}

/// `27/Nov/2026:10:08:30 +0000` from Unix seconds (UTC).
pub fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(1_795_774_110), "27/Nov/2026:10:08:30 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
    }

    #[tokio::test]
    async fn a_flood_is_sampled_not_written_line_by_line() {
        let dir = std::env::temp_dir().join(format!("qalqan-log-{}", std::process::id()));
        let log = AccessLog::start(dir.to_str().unwrap(), 50).unwrap();
        // Align to the start of a second so the whole burst falls in one budget window.
        let frac = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if frac > 800 {
            tokio::time::sleep(Duration::from_millis(u64::from(1000 - frac) + 5)).await;
        }
        let sec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut kept = 0;
        let mut n = 0;
        while n < 10_050 {
            if SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                != sec
            {
                break;
            }
            if log.ticket().is_some() {
                kept += 1;
            }
            n += 1;
        }
        assert_eq!(n, 10_050, "the burst did not fit in one second");
        // 50 in full, then one in SAMPLE_EVERY of the other 10,000.
        assert_eq!(kept, 50 + 10_000 / SAMPLE_EVERY);
        assert_eq!(log.dropped(), 10_050 - kept);
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn hostile_fields_are_escaped_and_cut() {
        let ua = vec![b'"'; 5000];
        let e = Entry {
            client: "192.0.2.1".parse().unwrap(),
            method: "GET",
            target: "/a\nb",
            version: "HTTP/1.1",
            status: 200,
            bytes: None,
            referer: None,
            user_agent: Some(&ua),
            decision: "pass",
            route: "default",
            millis: 3,
        };
        let l = format_line(&e, 0);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.contains("/a\\x0Ab"));
        assert!(l.len() < 5000);
    }
}
