//! What a run measured: a human report and `--json`.

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub target: String,
    pub duration_secs: f64,
    pub sockets: usize,
    pub sent: u64,
    pub accepted: u64,
    pub errors: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub sends_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    /// POST /api/messages, from the request to its 202.
    pub rest_p50_ms: f64,
    pub rest_p99_ms: f64,
    pub rest_p999_ms: f64,
    /// Server CPU time per delivery, when the server's pid is known (started here, or `--pid`).
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The server's resident memory, when its pid is known. With several pids (one per
    /// instance of a cluster), both figures are the sums over all of them.
    pub server_rss_kib: Option<u64>,
    /// Each pid's part of the two figures above, when there are several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerShare>,
    /// Anything else the scenario measures (idle, drain, ceiling).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One server process's part of a run's server figures.
#[derive(Debug, Serialize)]
pub struct ServerShare {
    pub pid: u32,
    /// Its CPU time over the run divided by all the deliveries, so the parts add up.
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_kib: Option<u64>,
}

pub fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

impl Summary {
    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(self).expect("a summary serializes")
            );
            return;
        }
        println!(
            "{} against {} for {:.1} s",
            self.scenario, self.target, self.duration_secs
        );
        if self.sockets > 0 {
            println!("  sockets            {}", self.sockets);
        }
        if self.sent > 0 {
            println!(
                "  sent               {} ({:.0}/s), accepted {}, errors {}",
                self.sent, self.sends_per_sec, self.accepted, self.errors
            );
        }
        if self.expected_deliveries > 0 {
            println!(
                "  delivered          {} of {} expected ({:.0}/s)",
                self.delivered, self.expected_deliveries, self.deliveries_per_sec
            );
            println!(
                "  delivery latency   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                self.latency_p50_ms,
                self.latency_p90_ms,
                self.latency_p99_ms,
                self.latency_p999_ms,
                self.latency_max_ms
            );
            println!(
                "  REST latency       p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
                self.rest_p50_ms, self.rest_p99_ms, self.rest_p999_ms
            );
        }
        if let Some(cpu) = self.server_cpu_us_per_delivery {
            println!("  server CPU         {cpu:.2} µs per delivery");
        }
        if let Some(rss) = self.server_rss_kib {
            println!("  server RSS         {rss} KiB");
        }
        for share in &self.servers {
            let name = format!("pid {}", share.pid);
            let cpu = share
                .cpu_us_per_delivery
                .map_or("-".into(), |cpu| format!("{cpu:.2} µs per delivery"));
            let rss = share
                .rss_kib
                .map_or("-".into(), |rss| format!("{rss} KiB RSS"));
            println!("    {name:<16} {cpu}, {rss}");
        }
        for (key, value) in &self.extra {
            println!("  {key:<18} {value}");
        }
    }
}
