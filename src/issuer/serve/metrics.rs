//! The service's Prometheus metrics: one registry per process, filled where things happen
//! (the sign flow, the HSM keys, the audit writer, the connection caps) and encoded by
//! `GET /metrics` in the OpenMetrics text format. Counts and latencies only: no subject, pass
//! id, address or token is ever a label.

use std::sync::atomic::AtomicI64;
use std::sync::OnceLock;
use std::time::Instant;

use p256::ecdsa::{Signature, VerifyingKey};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::signer::{SignError, Signer};
use crate::issuer::keys::{IssuerKey, KeyError, KeyFacts};

/// Label sets: one `(name, value)` pair, values from a fixed small set.
type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the service keeps.
#[derive(Debug)]
pub(super) struct Metrics {
    registry: Registry,
    /// `hwpass_passes_issued_total{kind}`: passes handed out (their audit record durable).
    pub(super) issued: Family<Labels, Counter>,
    /// `hwpass_passes_refused_total{reason}`: sign requests that produced no pass, by the
    /// problem type the client saw (`policy`, `request-refused`, `hsm`, `audit`, …).
    pub(super) refused: Family<Labels, Counter>,
    /// `hwpass_hsm_sign_seconds`: one signature by the HSM (passes, deny lists).
    pub(super) hsm_sign: Histogram,
    /// `hwpass_audit_commit_seconds`: one group commit of the audit log (append, fsync,
    /// checkpoint signature).
    pub(super) audit_commit: Histogram,
    /// `hwpass_open_connections`: connections open now.
    pub(super) open_connections: Gauge<i64, AtomicI64>,
    /// `hwpass_denylist_sequence`: the revocation register's sequence number (read at scrape).
    pub(super) denylist_sequence: Gauge<i64, AtomicI64>,
    /// `hwpass_config_reloads_total{result}`: SIGHUP reloads, `applied` or `refused`.
    pub(super) reloads: Family<Labels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("hwpass");
        let issued = Family::<Labels, Counter>::default();
        let refused = Family::<Labels, Counter>::default();
        // 0.5 ms … 8 s: SoftHSM signs in well under a millisecond, a network HSM in tens.
        let hsm_sign = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        // 1 ms … 16 s: an fsync on a busy disk can take a while.
        let audit_commit = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let open_connections = Gauge::<i64, AtomicI64>::default();
        let denylist_sequence = Gauge::<i64, AtomicI64>::default();
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "passes_issued",
            "Passes issued (audit record durable), by binding kind",
            issued.clone(),
        );
        registry.register(
            "passes_refused",
            "Sign requests that produced no pass, by reason (the problem type)",
            refused.clone(),
        );
        registry.register(
            "hsm_sign_seconds",
            "Time for one signature by the HSM",
            hsm_sign.clone(),
        );
        registry.register(
            "audit_commit_seconds",
            "Time for one audit log group commit (append, fsync, signed checkpoint)",
            audit_commit.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "denylist_sequence",
            "Sequence number of the revocation register (the deny list desktops get)",
            denylist_sequence.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads on SIGHUP, by result (applied or refused)",
            reloads.clone(),
        );
        Self {
            registry,
            issued,
            refused,
            hsm_sign,
            audit_commit,
            open_connections,
            denylist_sequence,
            reloads,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub(super) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts a sign attempt of the page or the API: issued, by binding kind, or refused, by the
/// problem type the client was shown.
pub(super) fn count_issue(result: Result<&'static str, &'static str>) {
    let m = get();
    match result {
        Ok(kind) => m.issued.get_or_create(&vec![("kind", kind)]).inc(),
        Err(reason) => m.refused.get_or_create(&vec![("reason", reason)]).inc(),
    };
}

/// Seconds since `start`, for a histogram.
pub(super) fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// An issuer key whose signatures are timed into `hwpass_hsm_sign_seconds`.
#[derive(Debug)]
pub(super) struct Timed(pub(super) Box<dyn IssuerKey>);

impl Signer for Timed {
    fn verifying_key(&self) -> &VerifyingKey {
        self.0.verifying_key()
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        let start = Instant::now();
        let signed = self.0.try_sign(msg);
        get().hsm_sign.observe(since(start));
        signed
    }
}

impl IssuerKey for Timed {
    fn describe(&self) -> Result<KeyFacts, KeyError> {
        self.0.describe()
    }

    fn ping(&self) -> Result<(), KeyError> {
        self.0.ping()
    }
}
