//! The prober's HTTP face: `/metrics` (Prometheus text format) and `/healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ProberError;
use crate::metrics::Metrics;

/// Binds `addr` and serves until `cancel`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, ProberError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ProberError::io("bind HTTP", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ProberError::io("HTTP address", e))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tasks.spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}
