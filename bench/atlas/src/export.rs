//! The STIX 2.1 export (`GET /api/v1/stix/bundle`) over the registry `read_run` fills: bundles
//! of growing size (the incidents of longer and longer time windows, with their sightings and
//! indicators) are streamed to the end while this process's resident memory is sampled. The
//! export streams when its peak memory stays flat while the bundle grows by orders of magnitude.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use qalqan_atlas::model::format_time;

use crate::HttpClient;

/// Resident memory of this process in KiB (Linux), 0 where unknown.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Streams bundles of the first `windows` incidents each (by start time) as `bearer`; returns
/// the Markdown table.
pub async fn measure(
    client: &HttpClient,
    addr: SocketAddr,
    bearer: &str,
    windows: &[i64],
) -> anyhow::Result<String> {
    let mut table = String::from(
        "\nOne export at a time, read to the end as fast as the client can; the member is the viewer \
         above (about 40 % of the incidents of each window are visible to it). Each window is \
         exported twice in a row: the first run reads what the fill left in the caches, the second \
         what the first read. Resident memory is this whole process's (server and client; \
         PostgreSQL's own processes are not in it), sampled every 10 ms.\n\n\
         | incidents in the window | run | status | bundle MB | seconds | MB/s | RSS before MiB | peak RSS MiB | peak − before MiB |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, run) in windows.iter().flat_map(|&n| [(n, 1), (n, 2)]) {
        // Incidents start at 1600000000000 + x minutes for x = 1, 2, …
        let from = format_time(1_600_000_000_000);
        let to = format_time(1_600_000_000_000 + (n + 1) * 60_000);
        let uri = format!("http://{addr}/api/v1/stix/bundle?from={from}&to={to}");
        let before = rss_kib();
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Relaxed) {
                    peak.fetch_max(rss_kib(), Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let t = Instant::now();
        let req = http::Request::get(&uri)
            .header("authorization", format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))?;
        let r = client.request(req).await?;
        let status = r.status().as_u16();
        let mut body = r.into_body();
        let mut bytes: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame?.into_data() {
                bytes += d.len() as u64;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        done.store(true, Relaxed);
        let _ = sampler.await;
        let peak = peak.load(Relaxed);
        let mb = bytes as f64 / 1e6;
        let line = format!(
            "| {n} | {run} | {status} | {mb:.1} | {secs:.1} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
            mb / secs.max(1e-9),
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0
        );
        eprint!("{line}");
        table.push_str(&line);
    }
    Ok(table)
}
