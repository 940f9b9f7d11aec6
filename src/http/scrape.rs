//! `GET /metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics::gauge;

use super::AppState;
use crate::error::Chain;
use crate::integrity::Database;
use crate::telemetry;

/// How long a scrape waits for the store's dead-letter count before showing the last one.
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /metrics`: the Prometheus text format, with the gauges read fresh from the pipeline.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    description = "Prometheus text exposition format. With `METRICS_PORT` set, served on that internal port only, not on the main one.",
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
pub async fn render(State(state): State<AppState>) -> Response {
    gauge!(telemetry::WS_CONNECTIONS).set(state.hub.open() as f64);
    let counts = state.outbox.counts();
    gauge!(telemetry::OUTBOX_DEPTH).set(counts.pending as f64);
    match state.outbox.oldest_pending().await {
        Ok(oldest) => {
            let age = oldest.map_or(0.0, |at| {
                (chrono::Utc::now() - at).as_seconds_f64().max(0.0)
            });
            gauge!(telemetry::OUTBOX_OLDEST_AGE).set(age);
        }
        Err(e) => tracing::warn!(error = %Chain(&e), "reading the outbox's oldest entry failed"),
    }
    gauge!(telemetry::STORE_UP).set(if state.store_health.is_up() { 1.0 } else { 0.0 });
    for database in Database::ALL {
        database
            .series()
            .set_corrupted(state.integrity.is_corrupted(database));
    }
    // Dead letters still on their way from the outbox count too. An unanswered store keeps the
    // last figure rather than holding up the scrape.
    if let Ok(Ok(stored)) =
        tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.count_dead_letters()).await
    {
        gauge!(telemetry::DEAD_LETTER_BACKLOG).set((stored + counts.dead_lettered) as f64);
    }
    // Replays are added up in the store, whoever made them (the CLI, any instance).
    if let Ok(Ok(totals)) =
        tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.replay_totals()).await
    {
        for (result, total) in totals {
            telemetry::DlqReplayResult::show_total(&result, total);
        }
    }
    let text = state.metrics.render();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}
