//! What `strata serve` shows the outside: Prometheus metrics on `/metrics`, liveness on
//! `/healthz` and readiness on `/readyz` (Kubernetes probe conventions), on `--listen`.
//!
//! Metrics live in the `prometheus` crate's default registry, so the stages' own metrics
//! (the inference stage's batch sizes and times, in `operators`) are exported beside the
//! runtime's. Names follow Prometheus' conventions: `strata_` prefix, base units (seconds),
//! `_total` on counters.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
};

use anyhow::Context as _;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge_vec, Encoder as _, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, TextEncoder,
};

/// The runtime's metrics.
pub struct Metrics {
    /// `strata_messages_read_total{role}`: messages read from the role's input topic.
    pub read: IntCounterVec,
    /// `strata_messages_done_total{role, outcome}`: messages whose outputs became durable
    /// (`delivered`), were dead-lettered (`rejected`), or could not be made durable and stay
    /// for replay (`errored`).
    pub done: IntCounterVec,
    /// `strata_message_seconds{role}`: from reading a message to its outputs being durable.
    pub latency: HistogramVec,
    /// `strata_in_flight_messages{role}`: read and not yet durable.
    pub in_flight: IntGaugeVec,
    /// `strata_consumer_lag_messages{role, topic, partition}`: the group's lag, from
    /// librdkafka's statistics.
    pub lag: IntGaugeVec,
    /// `strata_dead_letters_total{stage}`: failure records written (a record redelivered
    /// after a rebalance counts again; the table and `dead-letters list` hold it once).
    pub dead_letters: IntCounterVec,
    /// `strata_rows_total{table}`: rows committed to the result tables.
    pub rows: IntCounterVec,
    /// `strata_model_info{version}`: 1 for the model version serving.
    pub model: IntGaugeVec,
    /// `strata_model_refused_total`: new serving versions refused (corrupt, replaced, not
    /// loadable) while the old one kept serving.
    pub model_refused: IntCounter,
}

/// The metrics, registered on first use.
///
/// # Panics
/// Never in practice: registration fails only for a name registered twice, and this is the
/// only place these names are registered.
#[allow(clippy::expect_used)]
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let seconds = prometheus::exponential_buckets(0.01, 2.0, 16).expect("valid buckets");
        Metrics {
            read: register_int_counter_vec!("strata_messages_read_total", "Messages read from the role's input topic.", &["role"])
                .expect("register"),
            done: register_int_counter_vec!(
                "strata_messages_done_total",
                "Messages finished: outputs durable (delivered), dead-lettered (rejected), or left for replay (errored).",
                &["role", "outcome"]
            )
            .expect("register"),
            latency: register_histogram_vec!(
                "strata_message_seconds",
                "Seconds from reading a message to its outputs being durable.",
                &["role"],
                seconds
            )
            .expect("register"),
            in_flight: register_int_gauge_vec!("strata_in_flight_messages", "Messages read and not yet durable.", &["role"])
                .expect("register"),
            lag: register_int_gauge_vec!(
                "strata_consumer_lag_messages",
                "Messages in the partition after the group's position (librdkafka statistics).",
                &["role", "topic", "partition"]
            )
            .expect("register"),
            dead_letters: register_int_counter_vec!("strata_dead_letters_total", "Failure records written, by stage.", &["stage"])
                .expect("register"),
            rows: register_int_counter_vec!("strata_rows_total", "Rows committed to the result tables.", &["table"]).expect("register"),
            model: register_int_gauge_vec!("strata_model_info", "The model version serving (value 1).", &["version"]).expect("register"),
            model_refused: register_int_counter!(
                "strata_model_refused_total",
                "New serving versions refused (corrupt, replaced or not loadable); the old one kept serving."
            )
            .expect("register"),
        }
    })
}

/// Liveness and readiness, shared with the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// Every role has started (model loaded, consumer subscribed).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// A shutdown began: not ready any more, still alive while draining.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }
}

/// Binds `listen` (`off`: nothing) and serves the endpoints until the process ends.
/// Returns the bound address (the real port when `listen` asked for port 0).
///
/// # Errors
/// When `listen` is not an address or cannot be bound (in use, not permitted).
pub async fn serve_http(listen: &str, health: Arc<Health>) -> anyhow::Result<Option<SocketAddr>> {
    if listen == "off" {
        return Ok(None);
    }
    let addr: SocketAddr =
        listen.parse().with_context(|| format!("--listen / STRATA_LISTEN `{listen}` is not host:port (or `off` for no endpoints)"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for /metrics, /healthz and /readyz (--listen / STRATA_LISTEN; another process on this port?)")
    })?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(health);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "The metrics and health endpoints stopped.");
        }
    });
    Ok(Some(bound))
}

async fn ready(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or draining\n")
    }
}

async fn render_metrics() -> (StatusCode, [(axum::http::header::HeaderName, String); 1], Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    let content_type = [(axum::http::header::CONTENT_TYPE, encoder.format_type().to_owned())];
    match encoder.encode(&prometheus::gather(), &mut body) {
        Ok(()) => (StatusCode::OK, content_type, body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, content_type, error.to_string().into_bytes()),
    }
}
