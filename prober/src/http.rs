//! The prober's HTTP face: `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! `/readyz` answers 200 once the prober has started, and says in its body how many peers
//! answer and whether the report stream is open. It does not turn unready when peers are
//! down or the controller is away: where a load balancer takes unready probers out of
//! rotation (Kubernetes), peers that could not reach an unready prober would keep it unready,
//! and a site whose prober alone lost its controller would look cut off from the mesh.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ProberError;
use crate::metrics::Metrics;

/// Binds `addr` and serves until `cancel`; returns the bound address. `reports`: whether a
/// report stream is configured.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    reports: bool,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, ProberError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ProberError::io("bind HTTP", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ProberError::io("HTTP address", e))?;
    let ready = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = ready.clone();
                async move { m.readiness(reports) }
            }),
        );
    tasks.spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}
