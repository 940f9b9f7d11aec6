//! Prometheus metrics: every series chatd exports is named here, described, and registered at
//! zero on start-up, so dashboards and alerts never meet a missing series. The pipeline records
//! through the `metrics` macros with these names; [`Metrics::render`] writes the text format.

use std::sync::OnceLock;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const WS_CONNECTIONS: &str = "chat_ws_connections";
pub const WS_OPENED: &str = "chat_ws_connections_opened_total";
pub const WS_CLOSED: &str = "chat_ws_connections_closed_total";
pub const SLOW_CONSUMERS: &str = "chat_slow_consumer_disconnects_total";
pub const MESSAGES_ACCEPTED: &str = "chat_messages_accepted_total";
pub const MESSAGES_REJECTED: &str = "chat_messages_rejected_total";
pub const MESSAGES_DELIVERED: &str = "chat_messages_delivered_total";
pub const DELIVERY_LATENCY: &str = "chat_delivery_latency_seconds";
pub const FANOUT_MISSED: &str = "chat_fanout_missed_events_total";
pub const OUTBOX_DEPTH: &str = "chat_outbox_depth";
pub const OUTBOX_OLDEST_AGE: &str = "chat_outbox_oldest_age_seconds";
pub const PERSIST_BATCHES: &str = "chat_persist_batches_total";
pub const PERSIST_RETRIES: &str = "chat_persist_retries_total";
pub const PERSIST_DURATION: &str = "chat_persist_duration_seconds";
pub const OUTBOX_COMMIT_DURATION: &str = "chat_outbox_commit_duration_seconds";
pub const STORE_UP: &str = "chat_store_up";
pub const DEAD_LETTERS: &str = "chat_dead_letters_total";
pub const DEAD_LETTER_BACKLOG: &str = "chat_dead_letter_backlog";
pub const DLQ_REPLAYS: &str = "chat_dlq_replays_total";
pub const HTTP_REQUESTS: &str = "chat_http_requests_total";
pub const HTTP_DURATION: &str = "chat_http_request_duration_seconds";
pub const RATE_LIMITED: &str = "chat_rate_limited_total";
pub const HTTP_REFUSED: &str = "chat_http_connections_refused_total";
pub const BUILD_INFO: &str = "chat_build_info";
pub const STORAGE_CORRUPTED: &str = "chat_storage_corrupted";
pub const OUTBOX_ROWS_SKIPPED: &str = "chat_outbox_rows_skipped_total";
pub const INSTANCE_INFO: &str = "chat_instance_info";
pub const BUS_PUBLISHED: &str = "chat_bus_published_total";
pub const BUS_PUBLISH_FAILURES: &str = "chat_bus_publish_failures_total";
pub const BUS_RECEIVED: &str = "chat_bus_received_total";
pub const BUS_CONNECTED: &str = "chat_bus_connected";
pub const STREAM_PENDING: &str = "chat_stream_pending";
pub const WS_CONNECTIONS_MAX: &str = "chat_ws_connections_max";
pub const HTTP_CONNECTIONS_MAX: &str = "chat_http_connections_max";

/// The commit chatd was built from (`git rev-parse --short HEAD`, by build.rs), or "unknown"
/// when it was built outside a git checkout.
pub const GIT_REVISION: &str = env!("CHATD_GIT_REVISION");

/// A labelled counter's label values as one enum: where the counter is incremented and where it
/// is registered at zero read the same set, so no value can be emitted without its series
/// existing from the start.
macro_rules! counter_labels {
    ($(#[$doc:meta])* $name:ident: $metric:ident { $key:literal } { $($variant:ident => $value:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            const ALL: &[Self] = &[$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }

            /// Adds one to the counter's series for this value.
            #[allow(dead_code, reason = "a counter shown from the store's totals is never counted here")]
            pub fn count(self) {
                counter!($metric, $key => self.as_str()).increment(1);
            }

            fn register() {
                for value in Self::ALL {
                    counter!($metric, $key => value.as_str()).absolute(0);
                }
            }
        }
    };
}

counter_labels! {
    /// Why a socket closed (`chat_ws_connections_closed_total{reason}`).
    CloseReason: WS_CLOSED { "reason" } {
        Client => "client",
        SlowConsumer => "slow_consumer",
        MissedFrames => "missed_frames",
        Shutdown => "shutdown",
        PongTimeout => "pong_timeout",
        Error => "error",
    }
}

counter_labels! {
    /// Why a send was refused (`chat_messages_rejected_total{reason}`).
    RejectReason: MESSAGES_REJECTED { "reason" } {
        Invalid => "invalid",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        TooLarge => "too_large",
        RateLimited => "rate_limited",
        Unavailable => "unavailable",
    }
}

counter_labels! {
    /// Why the accept loop turned a connection away
    /// (`chat_http_connections_refused_total{reason}`).
    RefusalReason: HTTP_REFUSED { "reason" } {
        Connections => "connections",
        PendingPerClient => "pending_per_client",
    }
}

counter_labels! {
    /// How a store write went (`chat_persist_batches_total{result}`).
    BatchResult: PERSIST_BATCHES { "result" } {
        Ok => "ok",
        Partial => "partial",
        Failed => "failed",
        Unavailable => "unavailable",
    }
}

counter_labels! {
    /// How a dead-letter replay went (`chat_dlq_replays_total{result}`).
    DlqReplayResult: DLQ_REPLAYS { "result" } {
        Replayed => "replayed",
        Failed => "failed",
        NotFound => "not_found",
    }
}

impl DlqReplayResult {
    /// Shows the total the store keeps for the result named `name` (see
    /// `store::DeadLetters`); a name chatd does not know mints no series.
    pub fn show_total(name: &str, total: u64) {
        if let Some(result) = Self::ALL.iter().find(|result| result.as_str() == name) {
            counter!(DLQ_REPLAYS, "result" => result.as_str()).absolute(total);
        }
    }
}

/// chatd's database files (`chat_storage_corrupted{file}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFile {
    Outbox,
    Store,
}

impl StorageFile {
    const ALL: [Self; 2] = [Self::Outbox, Self::Store];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Store => "store",
        }
    }

    pub fn set_corrupted(self, corrupted: bool) {
        gauge!(STORAGE_CORRUPTED, "file" => self.as_str()).set(f64::from(u8::from(corrupted)));
    }
}

/// Delivery is sub-millisecond when healthy; the upper buckets catch stalls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Store writes and HTTP requests: milliseconds to the store timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, and the collector of the process's own series
/// (`metrics-process`): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads` and
/// `process_start_time_seconds`, the names every Prometheus client library uses, read from
/// /proc on Linux at start-up and on every [`Metrics::upkeep`]. There is one per process (the `metrics` facade has one
/// global recorder), shared by every chatd the process starts.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Metrics {
    pub fn install() -> Self {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE
            .get_or_init(|| {
                let handle = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), LATENCY_BUCKETS)
                    .and_then(|b| b.set_buckets(DURATION_BUCKETS))
                    .expect("bucket lists are not empty")
                    .install_recorder()
                    .expect("the only metrics recorder of this process");
                describe();
                register();
                metrics_process::Collector::default().describe();
                handle
            })
            .clone();
        let metrics = Self {
            handle,
            process: metrics_process::Collector::default(),
        };
        // The process's series are there from the first scrape, not from the first upkeep.
        metrics.process.collect();
        metrics
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets and reads the process's memory, CPU
    /// time and file descriptors; run it every few seconds so memory stays bounded between
    /// scrapes and the process's series are at most that old.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
        self.process.collect();
    }
}

fn describe() {
    describe_gauge!(WS_CONNECTIONS, "WebSockets open now");
    describe_counter!(WS_OPENED, "WebSockets opened");
    describe_counter!(WS_CLOSED, "WebSockets closed, by reason");
    describe_counter!(
        SLOW_CONSUMERS,
        "WebSockets closed with 4008 because their send queue was full"
    );
    describe_counter!(
        MESSAGES_ACCEPTED,
        "messages accepted (202, durable in the outbox)"
    );
    describe_counter!(MESSAGES_REJECTED, "sends refused, by reason");
    describe_counter!(MESSAGES_DELIVERED, "frames written to sockets");
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "from acceptance to the frame written to a socket"
    );
    describe_counter!(
        FANOUT_MISSED,
        "events the fan-out skipped after falling behind the bus"
    );
    describe_gauge!(OUTBOX_DEPTH, "messages in the outbox not yet in the store");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        "age of the oldest message waiting in the outbox"
    );
    describe_counter!(PERSIST_BATCHES, "batch writes to the store, by result");
    describe_counter!(
        PERSIST_RETRIES,
        "message writes scheduled again after the store refused them"
    );
    describe_histogram!(
        PERSIST_DURATION,
        Unit::Seconds,
        "duration of one batch write to the store"
    );
    describe_histogram!(
        OUTBOX_COMMIT_DURATION,
        Unit::Seconds,
        "duration of one group commit to the outbox, its disk sync included: every send in the \
         group waits for it before its 202"
    );
    describe_gauge!(STORE_UP, "1 when the store answered its last call, else 0");
    describe_counter!(
        DEAD_LETTERS,
        "messages dead-lettered after spending every attempt"
    );
    describe_gauge!(DEAD_LETTER_BACKLOG, "dead letters waiting for an operator");
    describe_counter!(DLQ_REPLAYS, "dead-letter replays, by result");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route, method and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration, by route"
    );
    describe_counter!(RATE_LIMITED, "API requests refused with 429");
    describe_counter!(
        HTTP_REFUSED,
        "connections answered 503 and closed at accept, by the cap they were over"
    );
    describe_gauge!(
        BUILD_INFO,
        "always 1; the version and the git revision built from are labels"
    );
    describe_gauge!(
        STORAGE_CORRUPTED,
        "1 once a database file was found corrupted while running (until restart), by file"
    );
    describe_counter!(
        OUTBOX_ROWS_SKIPPED,
        "outbox seqs the relay could not read on corrupted pages and skipped"
    );
    describe_gauge!(
        INSTANCE_INFO,
        "always 1; INSTANCE_ID and the mode (single or cluster) are labels"
    );
    describe_counter!(
        BUS_PUBLISHED,
        "cluster mode: messages this instance published to the NATS stream and JetStream stored"
    );
    describe_counter!(
        BUS_PUBLISH_FAILURES,
        "cluster mode: sends refused with 503 because JetStream did not confirm storing them"
    );
    describe_counter!(
        BUS_RECEIVED,
        "cluster mode: messages read from the NATS stream, from every instance"
    );
    describe_gauge!(
        BUS_CONNECTED,
        "1 while the bus reaches every instance (always, in-process); 0 while NATS is unreachable"
    );
    describe_gauge!(
        STREAM_PENDING,
        "cluster mode: messages in the NATS stream the relays have not stored yet, cluster-wide"
    );
    describe_gauge!(
        WS_CONNECTIONS_MAX,
        "WebSockets allowed open at once: MAX_CONNECTIONS, or what ulimit -n left of it"
    );
    describe_gauge!(
        HTTP_CONNECTIONS_MAX,
        "TCP connections allowed open at once, WebSockets included: HTTP_MAX_CONNECTIONS"
    );
}

/// Creates every series at zero (histograms without samples), labelled ones for every label
/// value they can take.
fn register() {
    for name in [
        WS_OPENED,
        SLOW_CONSUMERS,
        MESSAGES_ACCEPTED,
        MESSAGES_DELIVERED,
        FANOUT_MISSED,
        PERSIST_RETRIES,
        DEAD_LETTERS,
        RATE_LIMITED,
        OUTBOX_ROWS_SKIPPED,
        BUS_PUBLISHED,
        BUS_PUBLISH_FAILURES,
        BUS_RECEIVED,
    ] {
        counter!(name).absolute(0);
    }
    CloseReason::register();
    RejectReason::register();
    RefusalReason::register();
    BatchResult::register();
    DlqReplayResult::register();
    for file in StorageFile::ALL {
        file.set_corrupted(false);
    }
    for name in [
        WS_CONNECTIONS,
        OUTBOX_DEPTH,
        OUTBOX_OLDEST_AGE,
        STORE_UP,
        DEAD_LETTER_BACKLOG,
        BUS_CONNECTED,
        STREAM_PENDING,
        WS_CONNECTIONS_MAX,
        HTTP_CONNECTIONS_MAX,
    ] {
        gauge!(name).set(0.0);
    }
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "revision" => GIT_REVISION,
    )
    .set(1.0);
    for name in [DELIVERY_LATENCY, PERSIST_DURATION, OUTBOX_COMMIT_DURATION] {
        // Registering the handle is enough for the series to exist, with empty buckets.
        let _registered = histogram!(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let text = Metrics::install().render();
        for name in [
            WS_CONNECTIONS,
            WS_OPENED,
            WS_CLOSED,
            SLOW_CONSUMERS,
            MESSAGES_ACCEPTED,
            MESSAGES_REJECTED,
            MESSAGES_DELIVERED,
            FANOUT_MISSED,
            OUTBOX_DEPTH,
            OUTBOX_OLDEST_AGE,
            PERSIST_BATCHES,
            PERSIST_RETRIES,
            STORE_UP,
            DEAD_LETTERS,
            DEAD_LETTER_BACKLOG,
            DLQ_REPLAYS,
            RATE_LIMITED,
            HTTP_REFUSED,
            BUILD_INFO,
            STORAGE_CORRUPTED,
            OUTBOX_ROWS_SKIPPED,
            BUS_PUBLISHED,
            BUS_PUBLISH_FAILURES,
            BUS_RECEIVED,
            BUS_CONNECTED,
            STREAM_PENDING,
            WS_CONNECTIONS_MAX,
            HTTP_CONNECTIONS_MAX,
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing from\n{text}"
            );
        }
        for name in [DELIVERY_LATENCY, PERSIST_DURATION, OUTBOX_COMMIT_DURATION] {
            assert!(
                text.contains(&format!("# TYPE {name} histogram")),
                "{name} missing from\n{text}"
            );
            // Other unit tests in this binary may have recorded into the global recorder by
            // now: the bucket must be there, whatever it counts.
            assert!(
                text.contains(&format!("{name}_bucket{{le=\"0.005\"}} ")),
                "{name} has no buckets in\n{text}"
            );
        }
        // Every label value of every labelled counter, from the one enum that emits it.
        for reason in CloseReason::ALL {
            let series = format!("{WS_CLOSED}{{reason=\"{}\"}}", reason.as_str());
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
        // The process's own series, read from /proc: this process has memory, has used some
        // CPU time (a whole second is not guaranteed: the counter counts whole seconds) and
        // holds descriptors under a limit.
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(value(name) > 0.0, "{name} is not positive in\n{text}");
        }
        assert!(value("process_open_fds") < value("process_max_fds"));
        assert!(text.contains(&format!(
            "chat_build_info{{version=\"{}\",revision=\"{GIT_REVISION}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
