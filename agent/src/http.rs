//! The local API for the media server, on loopback: routes, drain state, readiness.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::v1 as pb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::daemon::{State, now_ms};
use crate::table::Table;

fn path_json(p: &pb::RoutePath) -> Value {
    json!({ "sites": p.sites, "cost_ms": p.cost_ms, "mos": p.mos, "r_factor": p.r_factor })
}

fn row_json(r: &pb::RouteRow) -> Value {
    json!({
        "dst": r.dst,
        "primary": r.primary.as_ref().map(path_json),
        "backup": r.backup.as_ref().map(path_json),
        "backup_disjoint": r.backup_disjoint,
        "reason": r.reason,
    })
}

fn meta(state: &State, t: &Table) -> Value {
    let (epoch, version) = t.version();
    json!({
        "site": state.site,
        "epoch": epoch,
        "version": version,
        "computed_unix_ms": t.update.computed_unix_ms,
        "age_seconds": now_ms().saturating_sub(t.update.computed_unix_ms) as f64 / 1e3,
        "source": if state.from_controller.load(Ordering::Relaxed) { "controller" } else { "last-known-good" },
        "controller_connected": state.connected.load(Ordering::Relaxed),
    })
}

fn no_table() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": "no route table yet" })),
    )
        .into_response()
}

/// Serves until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, cancel: CancellationToken) {
    let (s1, s2, s3, s4, s5) = (
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
    );
    let app = Router::new()
        .route(
            "/v1/routes",
            get(move || {
                let s = s1.clone();
                async move {
                    let Some(t) = s.table() else { return no_table() };
                    let mut v = meta(&s, &t);
                    v["rows"] = t.update.rows.iter().map(row_json).collect();
                    axum::Json(v).into_response()
                }
            }),
        )
        .route(
            "/v1/routes/{dst}",
            get(move |Path(dst): Path<String>| {
                let s = s2.clone();
                async move {
                    let Some(t) = s.table() else { return no_table() };
                    let Some(r) = t.row(&dst) else {
                        let e = json!({ "error": format!("no route from {} to {dst}", s.site) });
                        return (StatusCode::NOT_FOUND, axum::Json(e)).into_response();
                    };
                    let mut v = meta(&s, &t);
                    v["route"] = row_json(r);
                    axum::Json(v).into_response()
                }
            }),
        )
        .route(
            "/v1/drain",
            get(move || {
                let s = s3.clone();
                async move {
                    let Some(t) = s.table() else { return no_table() };
                    let drains: Vec<Value> = t
                        .update
                        .drains
                        .iter()
                        .map(|d| {
                            json!({"kind": d.kind, "name": d.name, "reason": d.reason, "author": d.author,
                                   "at_unix_ms": d.at_unix_ms, "origin": d.origin, "forced": d.forced})
                        })
                        .collect();
                    axum::Json(json!({
                        "site": s.site,
                        "site_drained": t.site_drained(),
                        "node_drained": t.site_drained(),
                        "drained_sites": t.update.drained_sites,
                        "drains": drains,
                    }))
                    .into_response()
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let s = s4.clone();
                async move {
                    match s.table() {
                        None => (StatusCode::SERVICE_UNAVAILABLE, "no route table yet\n"),
                        Some(t) if t.site_drained() => (StatusCode::SERVICE_UNAVAILABLE, "site drained\n"),
                        Some(_) => (StatusCode::OK, "ready\n"),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let s = s5.clone();
                async move {
                    if let Some(t) = s.table() {
                        s.metrics
                            .table_age
                            .set((now_ms().saturating_sub(t.update.computed_unix_ms) / 1_000) as i64);
                    }
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        s.metrics.render(),
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}
