//! The local API for the media server, on loopback: routes, drain state, readiness, and the
//! media server's load reports (`PUT /v1/status`), which the agent forwards to the controller.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::daemon::{NodeLoad, State, now_ms};
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

/// A load report as the media server sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    sessions: u32,
    load: f64,
}

fn bad_status(state: &State, reason: &str, detail: String) -> Response {
    state.metrics.status_rejected.with_label_values(&[reason]).inc();
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": detail }))).into_response()
}

/// `PUT /v1/status`: checks a load report and hands it to the watch session.
fn put_status(state: &State, body: &[u8]) -> Response {
    let parsed: StatusBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return bad_status(
                state,
                "malformed",
                format!("expected {{\"sessions\": <count>, \"load\": <0..1>}}: {e}"),
            );
        }
    };
    match NodeLoad::new(parsed.sessions, parsed.load, now_ms()) {
        Ok(report) => {
            state.status.send_replace(Some(report));
            (StatusCode::OK, axum::Json(status_json(Some(report)))).into_response()
        }
        Err((reason, detail)) => bad_status(state, reason, detail),
    }
}

fn status_json(r: Option<NodeLoad>) -> Value {
    match r {
        Some(r) => json!({
            "sessions": r.sessions,
            "load": r.load,
            "reported_unix_ms": r.at_ms,
            "age_seconds": now_ms().saturating_sub(r.at_ms) as f64 / 1e3,
        }),
        None => json!({ "sessions": null, "load": null }),
    }
}

/// Serves until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, cancel: CancellationToken) {
    let (s6, s7) = (state.clone(), state.clone());
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
                async move { readyz(&s) }
            }),
        )
        .route(
            "/v1/status",
            get(move || {
                let s = s6.clone();
                async move { axum::Json(status_json(*s.status.borrow())) }
            })
            .put(move |body: axum::body::Bytes| {
                let s = s7.clone();
                async move { put_status(&s, &body) }
            }),
        )
        .merge(operations(s5));
    run(listener, app, cancel).await;
}

/// The metrics-only listener (`metrics_listen`): `/metrics`, `/healthz`, `/readyz`, and none
/// of the media server's API.
pub async fn serve_metrics(listener: tokio::net::TcpListener, state: Arc<State>, cancel: CancellationToken) {
    let s = state.clone();
    let app = operations(state).route(
        "/readyz",
        get(move || {
            let s = s.clone();
            async move { readyz(&s) }
        }),
    );
    run(listener, app, cancel).await;
}

async fn run(listener: tokio::net::TcpListener, app: Router, cancel: CancellationToken) {
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}

/// Ready: a table is held and the site is not drained (a load balancer then sends no new
/// sessions here).
fn readyz(s: &State) -> (StatusCode, &'static str) {
    match s.table() {
        None => (StatusCode::SERVICE_UNAVAILABLE, "no route table yet\n"),
        Some(t) if t.site_drained() => (StatusCode::SERVICE_UNAVAILABLE, "site drained\n"),
        Some(_) => (StatusCode::OK, "ready\n"),
    }
}

/// `/healthz` and `/metrics`, on either listener.
fn operations(s: Arc<State>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let s = s.clone();
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
    )
}
