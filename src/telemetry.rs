//! Logs and traces. Logs go to stderr (JSON when `PIPES_LOG_FORMAT=json`, filtered by
//! `PIPES_LOG`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, the
//! spans also go to that OTLP collector over HTTP (protobuf), filtered by `PIPES_TRACE`
//! (default: Pipes' own debug spans, one per request and per I/O call, with their ids).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// What the trace export keeps unless `PIPES_TRACE` says otherwise.
const DEFAULT_TRACE_FILTER: &str = "info,pipes=debug";

/// The process's telemetry; [`Telemetry::shutdown`] sends the spans not exported yet.
#[must_use = "shut it down before exiting, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (waits for its last request).
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = done {
                eprintln!("pipes: exporting the last traces failed: {err}");
            }
        }
    }
}

/// Installs the process-wide subscriber. A second call (tests, `pipes dev`) keeps the
/// first subscriber and exports nothing more.
pub fn init(format: LogFormat) -> Telemetry {
    let log_filter = EnvFilter::try_from_env("PIPES_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,amq_protocol=warn"));
    let logs = match format {
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let traces = otlp_provider();
    let export = traces.as_ref().map(|provider| {
        let filter = EnvFilter::try_from_env("PIPES_TRACE").unwrap_or_else(|_| EnvFilter::new(DEFAULT_TRACE_FILTER));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("pipes")).with_filter(filter)
    });
    let installed = tracing_subscriber::registry().with(logs.with_filter(log_filter)).with(export).try_init();
    Telemetry { traces: traces.filter(|_| installed.is_ok()) }
}

/// The OTLP exporter when an endpoint is configured (the standard `OTEL_*` variables).
fn otlp_provider() -> Option<SdkTracerProvider> {
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    // The blocking HTTP client must be made outside the async runtime; the exporter then
    // runs on the batch processor's own thread.
    let built = std::thread::spawn(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
    })
    .join();
    let exporter = match built {
        Ok(Ok(exporter)) => exporter,
        Ok(Err(err)) => {
            eprintln!("pipes: OTLP trace export is off: {err}");
            return None;
        }
        Err(_) => return None,
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("pipes").build();
    Some(SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build())
}
