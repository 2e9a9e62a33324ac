//! Prometheus metrics of `idgate serve`, rendered at `GET /metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Provider name.
    pub provider: String,
    /// `ok`, `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `too_large`, `unavailable`, `error`.
    pub outcome: String,
}

/// Labels naming a provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: String,
}

/// Labels of plugin faults.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// Provider name.
    pub provider: String,
    /// `trap`, `deadline` or `memory`.
    pub kind: String,
}

/// Labels of the loaded-plugin info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Provider name the plugin serves.
    pub provider: String,
    /// Contract version it speaks.
    pub contract: String,
    /// SHA-256 of its `.wasm`.
    pub sha256: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    verify_seconds: Family<ProviderLabels, Histogram>,
    resolve_seconds: Histogram,
    pool_wait_seconds: Histogram,
    plugin_faults: Family<FaultLabels, Counter>,
    trust_seconds_left: Family<ProviderLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    reload_failing: Gauge,
    plugins: Family<PluginLabels, Gauge>,
    draining: Gauge,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let verify_seconds =
            Family::<ProviderLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let resolve_seconds = latency_histogram();
        let pool_wait_seconds = latency_histogram();
        let plugin_faults = Family::<FaultLabels, Counter>::default();
        let trust_seconds_left = Family::<ProviderLabels, Gauge>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let reload_failing = Gauge::default();
        let plugins = Family::<PluginLabels, Gauge>::default();
        let draining = Gauge::default();
        let mut registry = Registry::with_prefix("idgate");
        registry.register(
            "requests",
            "Authentication requests by provider and outcome",
            requests.clone(),
        );
        registry.register(
            "verify_seconds",
            "Time spent in the provider plugin",
            verify_seconds.clone(),
        );
        registry.register(
            "resolve_seconds",
            "Time spent resolving the agent in PostgreSQL",
            resolve_seconds.clone(),
        );
        registry.register(
            "pool_wait_seconds",
            "Time spent waiting for a database connection",
            pool_wait_seconds.clone(),
        );
        registry.register(
            "plugin_faults",
            "Plugin traps, deadlines and memory failures",
            plugin_faults.clone(),
        );
        registry.register(
            "trust_seconds_left",
            "Seconds until the first certificate a provider's current chains need expires (negative: expired)",
            trust_seconds_left.clone(),
        );
        registry.register("reloads", "Reloads (SIGHUP) by result", reloads.clone());
        registry.register(
            "reload_failing",
            "1 while the last reload failed and the previous provider set is still served",
            reload_failing.clone(),
        );
        registry.register(
            "plugin",
            "The plugins being served (1 per plugin; a reload changes the set)",
            plugins.clone(),
        );
        registry.register(
            "draining",
            "1 from SIGTERM/SIGINT until exit: /readyz answers 503 while serving goes on",
            draining.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            verify_seconds,
            resolve_seconds,
            pool_wait_seconds,
            plugin_faults,
            trust_seconds_left,
            reloads,
            reload_failing,
            plugins,
            draining,
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, provider: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Records a plugin call's duration.
    pub fn verify_time(&self, provider: &str, d: Duration) {
        self.verify_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(d.as_secs_f64());
    }

    /// Records a resolution's duration (including the pool wait).
    pub fn resolve_time(&self, d: Duration) {
        self.resolve_seconds.observe(d.as_secs_f64());
    }

    /// Records how long a request waited for a pooled connection.
    pub fn pool_wait(&self, d: Duration) {
        self.pool_wait_seconds.observe(d.as_secs_f64());
    }

    /// Counts a plugin fault.
    pub fn plugin_fault(&self, provider: &str, kind: &str) {
        self.plugin_faults
            .get_or_create(&FaultLabels {
                provider: provider.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Sets the time left on `provider`'s current trust material.
    pub fn trust_time_left(&self, provider: &str, seconds: i64) {
        self.trust_seconds_left
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(seconds);
    }

    /// Counts one reload, `ok` or not.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ReloadLabels { result: result.into() })
            .inc();
        self.reload_failing.set(i64::from(!ok));
    }

    /// Sets the served plugins, `(provider, contract, sha256)` each, replacing
    /// the previous list.
    pub fn plugins<'a>(&self, served: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        self.plugins.clear();
        for (provider, contract, sha256) in served {
            self.plugins
                .get_or_create(&PluginLabels {
                    provider: provider.into(),
                    contract: contract.into(),
                    sha256: sha256.into(),
                })
                .set(1);
        }
    }

    /// Marks the server as shutting down. `/readyz` reads this gauge, so the
    /// metric and the answer cannot disagree; it never goes back to 0.
    pub fn start_draining(&self) {
        self.draining.set(1);
    }

    /// Whether shutdown has begun ([`Metrics::start_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining.get() != 0
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
