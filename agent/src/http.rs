//! The local API for the media server, on loopback: routes (read at once, or waiting for the
//! next table: `?after=EPOCH.VERSION&wait_s=N`), drain state, readiness, and the media
//! server's load reports (`PUT /v1/status`), which the agent forwards to the controller.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, RawQuery};
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

/// The longest a route read may wait for a new table, s.
pub const MAX_WAIT_S: u64 = 300;

/// A route read's query: `after=EPOCH.VERSION` (the table the media server holds) and
/// `wait_s=N` (how long to wait, at most [`MAX_WAIT_S`], for a table other than that one).
/// Either may be left out: without `wait_s` the read answers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteQuery {
    /// The table the reader holds.
    pub after: Option<(u64, u64)>,
    /// How long it will wait for another.
    pub wait: std::time::Duration,
}

impl RouteQuery {
    /// Parses the raw query string; the error says what is expected.
    pub fn parse(q: Option<&str>) -> Result<Self, String> {
        let mut out = RouteQuery::default();
        for kv in q.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "after" => {
                    let parsed = v
                        .split_once('.')
                        .and_then(|(e, ver)| Some((e.parse().ok()?, ver.parse().ok()?)));
                    out.after = Some(parsed.ok_or_else(|| {
                        format!("after `{v}`: expected EPOCH.VERSION, as in a reply's epoch and version")
                    })?);
                }
                "wait_s" => {
                    let s: u64 =
                        v.parse().ok().filter(|s| *s <= MAX_WAIT_S).ok_or_else(|| {
                            format!("wait_s `{v}`: expected whole seconds, 0 to {MAX_WAIT_S}")
                        })?;
                    out.wait = std::time::Duration::from_secs(s);
                }
                _ => {
                    return Err(format!(
                        "unknown parameter `{k}`: expected after=EPOCH.VERSION and wait_s=SECONDS"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// The table a route read answers with, and whether it differs from the one the reader
/// holds: at once when it does (or when the reader names none), else after waiting up to
/// `wait_s` for the next install (or for the agent to stop). `None`: no table, even after the
/// wait. A media server that long-polls learns of a new table as soon as it is applied, with
/// one request open, instead of polling.
async fn routes_after(
    s: &State,
    query: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Option<(Arc<Table>, bool)>, Response> {
    let q =
        RouteQuery::parse(query).map_err(|detail| refuse(s, StatusCode::BAD_REQUEST, "bad_query", detail))?;
    let other = |t: &Arc<Table>| q.after != Some(t.version());
    let answer = |t: Option<Arc<Table>>| {
        t.map(|t| {
            let changed = other(&t);
            (t, changed)
        })
    };
    // Subscribed before the table is read: an install in between wakes the wait below.
    let mut installed = s.installed.subscribe();
    let held = s.table();
    if q.wait.is_zero() || held.as_ref().is_some_and(other) {
        return Ok(answer(held));
    }
    let max_waiters = s.max_waiters.load(std::sync::atomic::Ordering::Relaxed);
    if s.metrics.route_waiters.get() >= i64::from(max_waiters) {
        return Err(refuse(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_waiters",
            format!(
                "{max_waiters} route reads are waiting already (max_route_waiters); retry, or read without wait_s"
            ),
        ));
    }
    let _waiting = Waiting::new(&s.metrics.route_waiters);
    let deadline = tokio::time::Instant::now() + q.wait;
    loop {
        tokio::select! {
            r = installed.changed() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            () = cancel.cancelled() => break,
        }
        if s.table().as_ref().is_some_and(other) {
            break;
        }
    }
    Ok(answer(s.table()))
}

/// Counts a waiting read for as long as it waits.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Waiting(g)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn refuse(s: &State, code: StatusCode, reason: &'static str, detail: String) -> Response {
    s.metrics.api_rejected.with_label_values(&[reason]).inc();
    (code, axum::Json(json!({ "error": detail }))).into_response()
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
    let (c1, c2) = (cancel.clone(), cancel.clone());
    let app = Router::new()
        .route(
            "/v1/routes",
            get(move |RawQuery(q): RawQuery| {
                let (s, cancel) = (s1.clone(), c1.clone());
                async move {
                    let (t, changed) = match routes_after(&s, q.as_deref(), &cancel).await {
                        Ok(Some(held)) => held,
                        Ok(None) => return no_table(),
                        Err(refused) => return refused,
                    };
                    let mut v = meta(&s, &t);
                    v["changed"] = changed.into();
                    v["rows"] = t.update.rows.iter().map(row_json).collect();
                    axum::Json(v).into_response()
                }
            }),
        )
        .route(
            "/v1/routes/{dst}",
            get(move |Path(dst): Path<String>, RawQuery(q): RawQuery| {
                let (s, cancel) = (s2.clone(), c2.clone());
                async move {
                    let (t, changed) = match routes_after(&s, q.as_deref(), &cancel).await {
                        Ok(Some(held)) => held,
                        Ok(None) => return no_table(),
                        Err(refused) => return refused,
                    };
                    let Some(r) = t.row(&dst) else {
                        let e = json!({ "error": format!("no route from {} to {dst}", s.site) });
                        return (StatusCode::NOT_FOUND, axum::Json(e)).into_response();
                    };
                    let mut v = meta(&s, &t);
                    v["changed"] = changed.into();
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
                                   "at_unix_ms": d.at_unix_ms, "origin": d.origin, "forced": d.forced,
                                   "until_unix_ms": (d.until_unix_ms > 0).then_some(d.until_unix_ms)})
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_route_query_names_the_table_held_and_the_wait() {
        assert_eq!(RouteQuery::parse(None), Ok(RouteQuery::default()));
        assert_eq!(
            RouteQuery::parse(Some("after=3.41&wait_s=30")),
            Ok(RouteQuery {
                after: Some((3, 41)),
                wait: Duration::from_secs(30),
            })
        );
        assert_eq!(
            RouteQuery::parse(Some("wait_s=0&")).map(|q| q.wait),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn a_bad_route_query_says_what_is_expected() {
        for (q, says) in [
            ("after=41", "EPOCH.VERSION"),
            ("after=a.b", "EPOCH.VERSION"),
            ("after", "EPOCH.VERSION"),
            ("wait_s=301", "0 to 300"),
            ("wait_s=-1", "0 to 300"),
            ("wait_s=1.5", "0 to 300"),
            ("version=3", "unknown parameter `version`"),
        ] {
            let e = RouteQuery::parse(Some(q)).unwrap_err();
            assert!(e.contains(says), "{q}: {e}");
        }
    }
}
