//! REST for the analysis: hotspots, causes and similar sites, interventions before and after,
//! performance, and the site registry. Centers and stations read within their subtree; reads run
//! on the store's reader pool and the statistics on the same blocking thread, never on the
//! runtime that serves terminals.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::orders::{ask, subtree_of, who};
use super::{Caller, Params};
use crate::analysis::core::{
    self as an, Baseline, EffectQuery, Fact, Group, GroupKey, HotspotQuery, Names, Period, Place,
    Rates, Unit, Window,
};
use crate::analysis::store::{self as st, FactQuery, NewIntervention, NewSite, SiteRow};
use crate::auth::{Credential, Role};
use crate::hub::Hub;
use crate::orders::core::{Act, NewOrder};
use crate::orders::model::{OrderId, Priority, Source};
use crate::orders::service::{Cmd, RestBody};
use crate::org::{GeoPoint, NodeIdx, Org, Tier};
use crate::store::StoreError;

const DAY_MS: u64 = 86_400_000;
/// The longest window any analysis reads: a year and a bit, so a year against the one before
/// stays within two.
pub const MAX_WINDOW_DAYS: u64 = 400;
/// Sites added in one request (about 60 KB of JSON: within the REST body limit).
pub const MAX_SITES: usize = 400;

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the analysis could not read the store: {e}"),
    )
}

/// Analysis is for centers and stations (observers, the walls, read it too).
fn reader(c: &Credential) -> Result<(), ApiError> {
    if c.role == Role::Worker {
        return Err(ApiError::out_of_scope(
            "the analysis is for centers and stations",
        ));
    }
    Ok(())
}

/// Those who act on it: operators and stations, not the walls.
fn actor(c: &Credential) -> Result<(), ApiError> {
    reader(c)?;
    if c.role == Role::Observer {
        return Err(ApiError::out_of_scope(
            "an observer seat (a video wall) reads the analysis; it does not change it",
        ));
    }
    Ok(())
}

/// The window asked for: `from`/`to` (Unix ms), by default the 30 days up to now.
fn window(hub: &Hub, from: Option<u64>, to: Option<u64>) -> Result<Window, ApiError> {
    let now = hub.clock.now_ms();
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to.saturating_sub(30 * DAY_MS));
    let w = Window { from, to };
    // Nothing is stored in the future: a bound that also keeps every sum of times far from
    // overflowing.
    if to > now + MAX_WINDOW_DAYS * DAY_MS {
        return Err(ApiError::bad_query(format!(
            "to ({to}) is more than {MAX_WINDOW_DAYS} days after now ({now})"
        )));
    }
    if w.is_empty() {
        return Err(ApiError::bad_query(format!(
            "the window is empty: from ({from}) must be before to ({to})"
        )));
    }
    if w.len() > MAX_WINDOW_DAYS * DAY_MS {
        return Err(ApiError::bad_query(format!(
            "the window is {:.1} days; at most {MAX_WINDOW_DAYS} are read at once",
            w.len() as f64 / DAY_MS as f64
        )));
    }
    Ok(w)
}

fn category(hub: &Hub, c: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(c) = c else { return Ok(None) };
    let cats = &hub.config.orders.categories;
    if cats.iter().any(|x| x.id == c) {
        return Ok(Some(c.to_string()));
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_category",
        format!(
            "unknown category {c:?}; known: {}",
            cats.iter()
                .map(|x| x.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn node_json(org: &Org, n: NodeIdx) -> Value {
    let node = org.node(n);
    json!({
        "id": node.id.as_str(),
        "name": &*node.name,
        "name_en": &*node.name_en,
        "tier": node.tier,
        "lat": node.location.map(|l| l.lat),
        "lon": node.location.map(|l| l.lon),
    })
}

fn window_json(w: Window) -> Value {
    json!({ "from": w.from, "to": w.to })
}

/// Runs `f` on a reader connection and a blocking thread.
/// Every analysis and listing goes through here: its time is `gridhub_analysis_seconds`.
async fn read<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&crate::store::Connection) -> crate::store::db::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let out = hub.services()?.store.read(f).await.map_err(store_error);
    hub.metrics.analysis_latency.observe(started.elapsed());
    out
}

/// Runs `f` as one job on the store's writer and waits until it is committed.
async fn write<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&crate::store::Connection) -> crate::store::db::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&hub.services()?.store);
    let (tx, mut rx) = crate::store::inbox();
    store
        .submit_async(crate::store::Job::query(f, &tx, |r| r))
        .await;
    rx.recv()
        .await
        .unwrap_or(Err(StoreError::Closed))
        .map_err(store_error)
}

/// 201 when something was made, 200 when all of it was there already.
fn made(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotspotParams {
    node: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    category: Option<String>,
    /// `sites` (the registry, by distance) or `nodes` (org nodes of a tier).
    unit: Option<String>,
    kind: Option<String>,
    tier: Option<Tier>,
    /// `peers` or `history`.
    baseline: Option<String>,
    windows: Option<u32>,
    fdr: Option<f64>,
    min_count: Option<u64>,
    evidence: Option<usize>,
}

/// `GET /api/v1/analysis/hotspots`.
pub async fn hotspots(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(p): Params<HotspotParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = subtree_of(&hub, &c, p.node.as_deref())?;
    let w = window(&hub, p.from, p.to)?;
    let cat = category(&hub, p.category.as_deref())?;
    let unit = match (p.unit.as_deref(), p.tier) {
        (None | Some("sites"), None) => Unit::Sites,
        (None | Some("nodes"), Some(t)) => Unit::Nodes(t),
        (Some("nodes"), None) => Unit::Nodes(Tier::Village),
        (Some("sites"), Some(_)) => {
            return Err(ApiError::bad_query(
                "tier is for unit=nodes; sites are chosen by kind",
            ));
        }
        (Some(u), _) => {
            return Err(ApiError::bad_query(format!("unit {u:?}: sites or nodes")));
        }
    };
    if let Unit::Nodes(t) = unit {
        if t < hub.org.tier(root) {
            return Err(ApiError::bad_query(format!(
                "tier {t} is above {} ({}): nothing of it lies in the subtree",
                hub.org.id(root),
                hub.org.tier(root)
            )));
        }
        if p.kind.is_some() {
            return Err(ApiError::bad_query("kind is for unit=sites"));
        }
    }
    let windows = p.windows.unwrap_or(6);
    let baseline = match (p.baseline.as_deref(), &unit) {
        (Some("peers"), _) | (None, Unit::Sites) => Baseline::Peers,
        (Some("history"), _) | (None, Unit::Nodes(_)) => {
            if !(1..=52).contains(&windows) {
                return Err(ApiError::bad_query(format!("windows {windows}: 1 to 52")));
            }
            // The window and its history read at most three years: a long window gets fewer
            // windows of history (at least one), and the answer says how many it used.
            let fit = (3 * 366 * DAY_MS / w.len()).saturating_sub(1).max(1);
            Baseline::History(windows.min(u32::try_from(fit).unwrap_or(u32::MAX)))
        }
        (Some(b), _) => {
            return Err(ApiError::bad_query(format!(
                "baseline {b:?}: peers or history"
            )));
        }
    };
    let fdr = p.fdr.unwrap_or(0.05);
    if !(fdr > 0.0 && fdr <= 0.5) {
        return Err(ApiError::bad_query(format!(
            "fdr {fdr}: above 0, at most 0.5"
        )));
    }
    let evidence = p.evidence.unwrap_or(20).min(200);
    let min_count = p.min_count.unwrap_or(5).max(1);
    let org = Arc::clone(&hub.org);
    let kind = p.kind.clone();
    let out = read(&hub, move |conn| {
        let range = org.subtree(root);
        let history = match baseline {
            Baseline::History(k) => w.len() * u64::from(k),
            Baseline::Peers => 0,
        };
        let q = FactQuery {
            window: Window {
                from: w.from.saturating_sub(history),
                to: w.to,
            },
            range: range.clone(),
            category: cat.as_deref(),
        };
        let (mut cats, mut causes) = (Names::default(), Names::default());
        let facts = st::facts(conn, &q, &mut cats, &mut causes)?;
        let rows = match unit {
            Unit::Sites => st::sites(conn, range, kind.as_deref())?,
            Unit::Nodes(_) => Vec::new(),
        };
        let (rows, sites) = with_sites(&org, rows);
        let data_from = st::data_from(conn)?.unwrap_or(w.from);
        let h = an::hotspots(
            &org,
            root,
            &facts,
            &sites,
            &HotspotQuery {
                window: w,
                unit: unit.clone(),
                baseline,
                fdr,
                min_count,
                evidence,
                data_from,
            },
        );
        let list: Vec<Value> = h
            .hotspots
            .iter()
            .map(|x| {
                let mut v = json!({
                    "observed": x.observed,
                    "expected": x.expected,
                    "ratio": x.ratio,
                    "p_value": x.p_value,
                    "q_value": x.q_value,
                    "evidence": x.evidence,
                });
                match x.place {
                    Place::Site(i) => v["site"] = json!(rows[i as usize]),
                    Place::Node(n) => v["node"] = node_json(&org, n),
                }
                v
            })
            .collect();
        Ok(json!({
            "node": org.id(root).as_str(),
            "window": window_json(w),
            "category": cat,
            "unit": match unit { Unit::Sites => "sites", Unit::Nodes(_) => "nodes" },
            "kind": kind,
            "tier": match unit { Unit::Nodes(t) => Some(t), Unit::Sites => None },
            "baseline": match baseline {
                Baseline::Peers => json!({"kind": "peers", "median": h.peer_median}),
                Baseline::History(_) => json!({"kind": "history", "windows": h.history_windows, "asked": windows}),
            },
            "fdr": fdr,
            "min_count": min_count,
            "tested": h.tested,
            "requests": h.requests,
            "unplaced": h.unplaced,
            "hotspots": list,
            "empty": h.empty,
        }))
    })
    .await?;
    Ok(Json(out).into_response())
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CauseParams {
    node: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    category: Option<String>,
    /// `children`: counts per child of the node too.
    by: Option<String>,
}

fn cause_names(hub: &Hub, category: &str, cause: &str) -> (String, String) {
    hub.config
        .orders
        .categories
        .iter()
        .find(|c| c.id == category)
        .and_then(|c| c.causes.iter().find(|x| x.id == cause))
        .map(|x| (x.name.clone(), x.name_en.clone()))
        .unwrap_or_else(|| (cause.to_string(), cause.to_string()))
}

/// `GET /api/v1/analysis/causes`.
pub async fn causes(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(p): Params<CauseParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = subtree_of(&hub, &c, p.node.as_deref())?;
    let w = window(&hub, p.from, p.to)?;
    let Some(cat) = category(&hub, p.category.as_deref())? else {
        return Err(ApiError::bad_query(
            "category is required: causes are counted within one",
        ));
    };
    let by_children = match p.by.as_deref() {
        None => false,
        Some("children") => true,
        Some(b) => return Err(ApiError::bad_query(format!("by {b:?}: only children"))),
    };
    let org = Arc::clone(&hub.org);
    let hub2 = Arc::clone(&hub);
    let out = read(&hub, move |conn| {
        let (mut cats, mut causes) = (Names::default(), Names::default());
        let q = FactQuery {
            window: w,
            range: org.subtree(root),
            category: Some(&cat),
        };
        let facts = st::facts(conn, &q, &mut cats, &mut causes)?;
        let counts = an::causes(&facts, w);
        let list: Vec<Value> = counts
            .by_cause
            .iter()
            .map(|(k, n)| {
                let id = causes.name(*k);
                let (name, name_en) = cause_names(&hub2, &cat, id);
                json!({"cause": id, "name": name, "name_en": name_en, "count": n,
                       "share": *n as f64 / counts.total.max(1) as f64})
            })
            .collect();
        let children: Option<Vec<Value>> = by_children.then(|| {
            // Each fact to its child in one pass.
            let mut by_child: std::collections::HashMap<NodeIdx, Vec<&Fact>> = Default::default();
            for f in &facts {
                if let Some(ch) = org.child_toward(root, f.node) {
                    by_child.entry(ch).or_default().push(f);
                }
            }
            org.children(root)
                .iter()
                .map(|&ch| {
                    let cc = an::causes(by_child.remove(&ch).unwrap_or_default(), w);
                    let by: serde_json::Map<String, Value> = cc
                        .by_cause
                        .iter()
                        .map(|(k, n)| (causes.name(*k).to_string(), json!(n)))
                        .collect();
                    json!({"node": node_json(&org, ch), "total": cc.total, "untagged": cc.untagged, "causes": by})
                })
                .collect()
        });
        Ok(json!({
            "node": org.id(root).as_str(),
            "window": window_json(w),
            "category": cat,
            "total": counts.total,
            "untagged": counts.untagged,
            "causes": list,
            "children": children,
        }))
    })
    .await?;
    Ok(Json(out).into_response())
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteListParams {
    node: Option<String>,
    kind: Option<String>,
}

/// `GET /api/v1/analysis/sites`.
pub async fn sites(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(p): Params<SiteListParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = subtree_of(&hub, &c, p.node.as_deref())?;
    let range = hub.org.subtree(root);
    let rows = read(&hub, move |conn| st::sites(conn, range, p.kind.as_deref())).await?;
    Ok(Json(json!({ "sites": rows })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteIn {
    kind: String,
    name: String,
    node: String,
    lat: f64,
    lon: f64,
    radius_m: Option<f64>,
    r#ref: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitesIn {
    sites: Vec<SiteIn>,
}

fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `POST /api/v1/analysis/sites` — adds sites to the registry, all or none; a site whose `ref`
/// is stored already is left as it is (so a registry file loads twice without change).
pub async fn add_sites(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    actor(&c)?;
    let body: SitesIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_data",
            format!("the request body is not a list of sites: {e}"),
        )
    })?;
    if body.sites.is_empty() || body.sites.len() > MAX_SITES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_data",
            format!(
                "sites: 1 to {MAX_SITES} per request, not {}",
                body.sites.len()
            ),
        ));
    }
    let mut checked = Vec::with_capacity(body.sites.len());
    for (i, s) in body.sites.into_iter().enumerate() {
        let bad = |m: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_data",
                format!("sites[{i}]: {m}"),
            )
        };
        let p = GeoPoint {
            lat: s.lat,
            lon: s.lon,
        };
        if !p.is_valid() {
            return Err(bad(format!(
                "({}, {}) is outside [-90, 90] × [-180, 180]",
                s.lat, s.lon
            )));
        }
        if !word(&s.kind) {
            return Err(bad(format!("kind {:?}: 1 to 32 of a-z 0-9 _ -", s.kind)));
        }
        let name = s.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(bad(
                "name: 1 to 100 characters, no control characters".into()
            ));
        }
        let radius = s.radius_m.unwrap_or(150.0);
        if !(10.0..=5_000.0).contains(&radius) {
            return Err(bad(format!("radius_m {radius}: 10 to 5,000")));
        }
        if let Some(r) = &s.r#ref
            && (r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad("ref: 1 to 64 visible ASCII characters".into()));
        }
        let node = hub
            .org
            .lookup(&s.node)
            .ok_or_else(|| bad(format!("node {} is not in the org tree", s.node)))?;
        if !crate::scope::can_watch_subtree(&hub.org, &c, node) {
            return Err(ApiError::out_of_scope(format!(
                "sites[{i}]: {} is outside your subtree",
                s.node
            )));
        }
        // A site's point should lie near its node; a registry with swapped coordinates would
        // match nothing, silently.
        if let Some(l) = hub.org.node(node).location
            && crate::analysis::geo::metres(l, p) > 200_000.0
        {
            return Err(bad(format!(
                "({}, {}) is {:.0} km from its node {} ({}, {}): swapped or wrong coordinates?",
                s.lat,
                s.lon,
                crate::analysis::geo::metres(l, p) / 1000.0,
                s.node,
                l.lat,
                l.lon
            )));
        }
        checked.push(NewSite {
            kind: s.kind,
            name: name.to_string(),
            node,
            point: p,
            radius_m: radius,
            r#ref: s.r#ref,
        });
    }
    // A ref already used by a site outside the caller's subtree is not the caller's to reuse
    // (nor to learn more of than that).
    let refs: Vec<(usize, String)> = checked
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.r#ref.clone().map(|r| (i, r)))
        .collect();
    let mine = hub.org.subtree(c.endpoint);
    let taken = read(&hub, move |conn| {
        let mut st = conn.prepare_cached("SELECT node_pre FROM sites WHERE ref = ?1")?;
        for (i, r) in &refs {
            let pre: Option<i64> =
                crate::store::db::OptionalExtension::optional(st.query_row([r], |x| x.get(0)))?;
            if pre.is_some_and(|p| !mine.contains(&(p as usize))) {
                return Ok(Some((*i, r.clone())));
            }
        }
        Ok(None)
    })
    .await?;
    if let Some((i, r)) = taken {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_data",
            format!("sites[{i}]: ref {r:?} names a site outside your subtree; choose another"),
        ));
    }
    let org = Arc::clone(&hub.org);
    let at = hub.clock.now_ms();
    let ids = write(&hub, move |conn| st::add_sites(conn, &org, &checked, at)).await?;
    let created = ids.iter().any(|x| x.1);
    let list: Vec<Value> = ids
        .iter()
        .map(|(id, new)| json!({"id": id, "created": new}))
        .collect();
    Ok((made(created), Json(json!({ "sites": list }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarParams {
    from: Option<u64>,
    to: Option<u64>,
    category: Option<String>,
    threshold: Option<f64>,
    min_requests: Option<u64>,
}

/// `GET /api/v1/analysis/sites/{id}/similar` — sites across the caller's subtree whose requests
/// have the same mix of causes.
pub async fn similar(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
    Params(p): Params<SimilarParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = c.endpoint;
    let w = window(&hub, p.from, p.to.or(Some(hub.clock.now_ms())))?;
    let w = if p.from.is_none() {
        Window {
            from: w.to.saturating_sub(365 * DAY_MS),
            to: w.to,
        }
    } else {
        w
    };
    let Some(cat) = category(&hub, p.category.as_deref())? else {
        return Err(ApiError::bad_query(
            "category is required: causes are compared within one",
        ));
    };
    let threshold = p.threshold.unwrap_or(0.9);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(ApiError::bad_query(format!(
            "threshold {threshold}: 0 to 1"
        )));
    }
    let min_requests = p.min_requests.unwrap_or(5);
    let org = Arc::clone(&hub.org);
    let out = read(&hub, move |conn| {
        let Some(me) = st::site(conn, id)? else {
            return Ok(None);
        };
        let Some(n) = org.lookup(&me.node) else {
            return Ok(None);
        };
        if !org.contains(root, n) {
            return Ok(None);
        }
        let (rows, sites) = with_sites(&org, st::sites(conn, org.subtree(root), None)?);
        let Some(reference) = rows.iter().position(|r| r.id == id) else {
            return Ok(None);
        };
        let reference = reference as u32;
        let (mut cats, mut causes) = (Names::default(), Names::default());
        let q = FactQuery {
            window: w,
            range: org.subtree(root),
            category: Some(&cat),
        };
        let facts = st::facts(conn, &q, &mut cats, &mut causes)?;
        let s = an::similar_sites(&facts, &sites, w, reference, min_requests, threshold);
        let names: Vec<&str> = s.causes.iter().map(|c| causes.name(*c)).collect();
        let list: Vec<Value> = s
            .similar
            .iter()
            .zip(&s.profiles)
            .map(|(x, prof)| json!({"site": rows[x.site as usize], "similarity": x.similarity, "requests": x.requests, "profile": prof}))
            .collect();
        Ok(Some(json!({
            "site": me,
            "window": window_json(w),
            "category": cat,
            "causes": names,
            "profile": s.profile,
            "threshold": threshold,
            "similar": list,
            "empty": s.empty,
        })))
    })
    .await?;
    // A site outside the caller's subtree is not found, as orders are.
    let out = out.ok_or_else(|| ApiError::not_found(format!("no site {id}")))?;
    Ok(Json(out).into_response())
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskIn {
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionIn {
    title: String,
    category: String,
    /// The node responsible; by default the first site's, else the caller's.
    node: Option<String>,
    #[serde(default)]
    sites: Vec<u64>,
    /// When it took effect (Unix ms); for a task, by default when its loop closes.
    at: Option<u64>,
    /// The requests that made the hotspot.
    #[serde(default)]
    evidence: Vec<u64>,
    /// Push a governance task (an order) to the responsible node.
    task: Option<TaskIn>,
}

/// `POST /api/v1/analysis/interventions` — records what the center did (what, where, when), and
/// with `task`, takes in a governance order at the caller with the evidence in its description
/// and dispatches it a tier toward the responsible node; its closing is tracked here.
pub async fn add_intervention(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    actor(&c)?;
    let i: InterventionIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_data",
            format!("the request body is not an intervention: {e}"),
        )
    })?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", m);
    let title = i.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(bad("title: 1 to 200 characters".into()));
    }
    let cat = category(&hub, Some(&i.category))?.expect("given");
    if i.sites.len() > 1_000 || i.evidence.len() > 1_000 {
        return Err(bad("sites and evidence: at most 1,000 each".into()));
    }
    if let Some(at) = i.at
        && at > hub.clock.now_ms() + MAX_WINDOW_DAYS * DAY_MS
    {
        return Err(bad(format!(
            "at ({at}) is more than {MAX_WINDOW_DAYS} days from now"
        )));
    }
    if i.task.is_some() && i.at.is_some() {
        return Err(bad(
            "a task takes effect when its loop closes: give `at` or `task`, not both".into(),
        ));
    }
    let org = Arc::clone(&hub.org);
    let ids = i.sites.clone();
    let evidence = i.evidence.clone();
    let scope_root = c.endpoint;
    // The sites (in scope), and the evidence (orders in scope) checked in one read.
    let (rows, missing) = read(&hub, move |conn| {
        let mut rows = Vec::new();
        for id in &ids {
            match st::site(conn, *id)? {
                Some(s)
                    if org
                        .lookup(&s.node)
                        .is_some_and(|n| org.contains(scope_root, n)) =>
                {
                    rows.push(s)
                }
                _ => return Ok((rows, Some(format!("no site {id}")))),
            }
        }
        let r = org.subtree(scope_root);
        let mut q = conn.prepare_cached("SELECT node_pre FROM orders WHERE id = ?1")?;
        for id in &evidence {
            let pre: Option<i64> = crate::store::db::OptionalExtension::optional(
                q.query_row([*id as i64], |x| x.get(0)),
            )?;
            if !pre.is_some_and(|p| r.contains(&(p as usize))) {
                return Ok((rows, Some(format!("evidence: no order {id}"))));
            }
        }
        Ok((rows, None))
    })
    .await?;
    if let Some(m) = missing {
        return Err(ApiError::not_found(m));
    }
    let site_nodes: Vec<NodeIdx> = rows
        .iter()
        .filter_map(|s| hub.org.lookup(&s.node))
        .collect();
    let node = match &i.node {
        Some(n) => {
            let node = subtree_of(&hub, &c, Some(n))?;
            if let Some(s) = rows
                .iter()
                .zip(&site_nodes)
                .find(|(_, sn)| !hub.org.contains(node, **sn))
            {
                return Err(bad(format!(
                    "site {} ({}) is outside node {n}: name a node above all the sites, or none",
                    s.0.id, s.0.name
                )));
            }
            node
        }
        // The lowest node above every site: responsible for all of them.
        None => common_ancestor(&hub.org, &site_nodes).unwrap_or(c.endpoint),
    };
    let mut order: Option<u64> = None;
    let mut doc: Option<Value> = None;
    let mut dispatch_error = None;
    if let Some(task) = &i.task {
        let key = task_key(&c, &title, &cat, node, &i.sites, &i.evidence);
        let (o, d, e) = push_task(
            &hub,
            &c,
            &title,
            &cat,
            node,
            rows.first(),
            &i.evidence,
            task,
            key,
        )
        .await?;
        order = Some(o);
        doc = Some(d);
        dispatch_error = e;
    }
    let org = Arc::clone(&hub.org);
    let at = hub.clock.now_ms();
    let by = hub.org.id(c.endpoint).to_string();
    let when = i.at;
    let sites = i.sites.clone();
    let evidence = i.evidence.clone();
    let (row, created) = write(&hub, move |conn| {
        // A retried push: its order has its intervention already.
        if let Some(o) = order
            && let Some(existing) = st::intervention_by_order(conn, o)?
        {
            return Ok((Some(existing), false));
        }
        let id = st::add_intervention(
            conn,
            &org,
            &NewIntervention {
                title: &title,
                category: &cat,
                node,
                sites: &sites,
                at: when,
                order,
                evidence: &evidence,
                created_by: &by,
                created_at: at,
            },
        )?;
        Ok((st::intervention(conn, id)?, true))
    })
    .await?;
    let mut body = json!({ "intervention": row, "order": doc });
    if let Some(e) = dispatch_error {
        body["dispatch_error"] = json!(e);
    }
    Ok((made(created), Json(body)).into_response())
}

/// Registry rows and their sites, side by side (a row whose node left the tree is dropped from
/// both, so an index into one names the same site in the other).
fn with_sites(org: &Org, rows: Vec<SiteRow>) -> (Vec<SiteRow>, Vec<an::Site>) {
    rows.into_iter()
        .filter_map(|r| r.site(org).map(|s| (r, s)))
        .unzip()
}

/// The lowest node whose subtree holds every one of `nodes`.
fn common_ancestor(org: &Org, nodes: &[NodeIdx]) -> Option<NodeIdx> {
    let first = *nodes.first()?;
    std::iter::once(first)
        .chain(org.ancestors(first))
        .find(|&a| nodes.iter().all(|&n| org.contains(a, n)))
}

/// Takes in the governance order and sends it a tier toward the responsible node.
#[allow(clippy::too_many_arguments)]
async fn push_task(
    hub: &Arc<Hub>,
    c: &Credential,
    title: &str,
    category: &str,
    node: NodeIdx,
    site: Option<&SiteRow>,
    evidence: &[u64],
    task: &TaskIn,
    key: String,
) -> Result<(u64, Value, Option<String>), ApiError> {
    let mut description = task
        .description
        .clone()
        .unwrap_or_else(|| title.to_string());
    if !evidence.is_empty() {
        let shown: Vec<String> = evidence.iter().take(20).map(|e| format!("#{e}")).collect();
        description.push_str(&format!(
            "\n依据 {} 件诉求：{}{}",
            evidence.len(),
            shown.join(" "),
            if evidence.len() > 20 { " …" } else { "" }
        ));
    }
    let new = NewOrder {
        source: Source::Analysis,
        category: category.to_string(),
        cause: None,
        description,
        node,
        point: site.map(|s| GeoPoint {
            lat: s.lat,
            lon: s.lon,
        }),
        address: site.map(|s| s.name.clone()).unwrap_or_default(),
        priority: task.priority.unwrap_or(Priority::Routine),
        reporter_name: String::new(),
        reporter_phone: String::new(),
    };
    let at = Instant::now();
    let (_, body) = ask(hub, |reply| Cmd::Create {
        who: who(c),
        new,
        key: Some(key),
        reply,
        at,
    })
    .await?;
    let RestBody::Order(doc) = body else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the orders service answered a create with no order",
        ));
    };
    let id = doc.id;
    let mut out = serde_json::to_value(&*doc).unwrap_or(Value::Null);
    // Sent on only from intake: a retried push finds its order already on its way. The order
    // stands whether or not this dispatch goes through; the answer says why it did not.
    let mut dispatch_error = None;
    if let Some(next) = hub.org.child_toward(c.endpoint, node)
        && doc.state == crate::orders::model::State::Intake
    {
        let at = Instant::now();
        let sent = ask(hub, |reply| Cmd::Act {
            who: who(c),
            id,
            expect: None,
            act: Act::Dispatch {
                to: next,
                note: Some("由分析热点生成的治理任务".into()),
            },
            reply,
            at,
        })
        .await;
        match sent {
            Ok((_, RestBody::Order(doc))) => {
                out = serde_json::to_value(&*doc).unwrap_or(Value::Null)
            }
            Ok(_) => {}
            Err(e) => dispatch_error = Some(format!("{}: {}", e.code, e.message)),
        }
    }
    let OrderId(id) = id;
    Ok((id, out, dispatch_error))
}

/// The idempotency key of a pushed task: the same push (caller, what, where, evidence) takes in
/// one order however often it is retried.
fn task_key(
    c: &Credential,
    title: &str,
    category: &str,
    node: NodeIdx,
    sites: &[u64],
    evidence: &[u64],
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!(
        "{}\u{1}{}\u{1}{title}\u{1}{category}\u{1}{}\u{1}{sites:?}\u{1}{evidence:?}",
        c.endpoint.0, c.seat, node.0
    );
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("analysis-task-{h:016x}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeParams {
    node: Option<String>,
}

/// `GET /api/v1/analysis/interventions`.
pub async fn interventions(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(p): Params<NodeParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = subtree_of(&hub, &c, p.node.as_deref())?;
    let range = hub.org.subtree(root);
    let rows = read(&hub, move |conn| st::interventions(conn, range)).await?;
    Ok(Json(json!({ "interventions": rows })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectParams {
    before_days: Option<u64>,
    after_days: Option<u64>,
    settle_days: Option<u64>,
    /// `day`, `week` or `month`: the series' buckets.
    bucket: Option<String>,
}

/// `GET /api/v1/analysis/interventions/{id}/effect` — the rate at its sites (or in its node's
/// subtree) before and after, with a 95 % interval for the change.
pub async fn effect(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
    Params(p): Params<EffectParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let before = p.before_days.unwrap_or(60);
    let after = p.after_days.unwrap_or(60);
    let settle = p.settle_days.unwrap_or(0);
    if before == 0 || after == 0 || before > 366 || after > 366 || settle > 90 {
        return Err(ApiError::bad_query(
            "before_days and after_days: 1 to 366; settle_days: at most 90",
        ));
    }
    let bucket = match p.bucket.as_deref() {
        None | Some("week") => 7 * DAY_MS,
        Some("day") => DAY_MS,
        Some("month") => 30 * DAY_MS,
        Some(b) => {
            return Err(ApiError::bad_query(format!(
                "bucket {b:?}: day, week or month"
            )));
        }
    };
    let org = Arc::clone(&hub.org);
    let root = c.endpoint;
    let now = hub.clock.now_ms();
    let out = read(&hub, move |conn| {
        let Some(i) = st::intervention(conn, id)? else {
            return Ok(None);
        };
        let Some(node) = org.lookup(&i.node).filter(|&n| org.contains(root, n)) else {
            return Ok(None);
        };
        let Some(at) = i.at else {
            return Ok(Some(json!({
                "intervention": i,
                "note": "not in effect yet: its task's loop has not closed",
            })));
        };
        let mut sites = Vec::new();
        for s in &i.sites {
            if let Some(r) = st::site(conn, *s)? {
                sites.push(r);
            }
        }
        let span = Window {
            from: at.saturating_sub(before * DAY_MS),
            to: at.saturating_add((settle + after) * DAY_MS),
        };
        // Requests near a site count wherever they were filed within the caller's view; without
        // sites, those in the intervention's node.
        let range = if sites.is_empty() {
            org.subtree(node)
        } else {
            org.subtree(root)
        };
        let times = st::times_at(conn, &org, &sites, range, &i.category, span)?;
        let data_from = st::data_from(conn)?.unwrap_or(at);
        let e = an::effect(
            &times,
            &EffectQuery {
                at,
                before_ms: before * DAY_MS,
                after_ms: after * DAY_MS,
                settle_ms: settle * DAY_MS,
                now,
                data_from,
                level: 0.95,
                bucket_ms: bucket,
            },
        );
        Ok(Some(json!({
            "intervention": i,
            "before": {"from": e.before.from, "to": e.before.to, "count": e.before_count, "per_day": e.before_rate},
            "after": {"from": e.after.from, "to": e.after.to, "count": e.after_count, "per_day": e.after_rate},
            "level": 0.95,
            "change": e.change.map(|c| c.0),
            "ci": e.change.map(|c| [c.1, c.2]),
            "series": e.series.iter().map(|(from, n)| json!({"from": from, "count": n})).collect::<Vec<_>>(),
            "note": e.note,
        })))
    })
    .await?;
    let out = out.ok_or_else(|| ApiError::not_found(format!("no intervention {id}")))?;
    Ok(Json(out).into_response())
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceParams {
    node: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    category: Option<String>,
    /// `children` (default), `tier` or `category`.
    group: Option<String>,
    tier: Option<Tier>,
    /// `month` (default), `week` or `day`.
    period: Option<String>,
}

fn rates_json(r: &Rates) -> Value {
    json!({
        "received": r.received,
        "closed": r.closed,
        "on_time": r.on_time,
        "rated": r.rated,
        "satisfied": r.satisfied,
        "reopened": r.reopened,
        "completion": r.completion(),
        "on_time_rate": r.on_time_rate(),
        "satisfaction": r.satisfaction(),
        "reopen_rate": r.reopen_rate(),
    })
}

/// `GET /api/v1/analysis/performance`.
pub async fn performance(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(p): Params<PerformanceParams>,
) -> Result<Response, ApiError> {
    reader(&c)?;
    let root = subtree_of(&hub, &c, p.node.as_deref())?;
    let w = window(&hub, p.from, p.to)?;
    let cat = category(&hub, p.category.as_deref())?;
    let group = match (p.group.as_deref(), p.tier) {
        (None | Some("children"), None) => Group::Children,
        (None | Some("tier"), Some(t)) => {
            if t < hub.org.tier(root) {
                return Err(ApiError::bad_query(format!("tier {t} is above the node")));
            }
            Group::Tier(t)
        }
        (Some("tier"), None) => return Err(ApiError::bad_query("group=tier needs tier")),
        (Some("category"), None) => Group::Category,
        (Some(g), _) => {
            return Err(ApiError::bad_query(format!(
                "group {g:?}: children, tier (with tier) or category"
            )));
        }
    };
    let period = match p.period.as_deref() {
        None | Some("month") => Period::Month,
        Some("week") => Period::Week,
        Some("day") => Period::Day,
        Some(x) => {
            return Err(ApiError::bad_query(format!(
                "period {x:?}: month, week or day"
            )));
        }
    };
    if period == Period::Day && w.len() > 92 * DAY_MS {
        return Err(ApiError::bad_query(
            "period=day: a window of at most 92 days",
        ));
    }
    let org = Arc::clone(&hub.org);
    let hub2 = Arc::clone(&hub);
    let out = read(&hub, move |conn| {
        let (mut cats, mut causes) = (Names::default(), Names::default());
        let q = FactQuery {
            window: Window {
                from: w.from.saturating_sub(w.len()),
                to: w.to,
            },
            range: org.subtree(root),
            category: cat.as_deref(),
        };
        let facts = st::facts(conn, &q, &mut cats, &mut causes)?;
        let perf = an::performance(&org, root, &facts, w, group, period);
        let cat_name = |k: u16| {
            let id = cats.name(k);
            let c = hub2.config.orders.categories.iter().find(|c| c.id == id);
            json!({"category": id, "name": c.map(|c| &c.name), "name_en": c.map(|c| &c.name_en)})
        };
        let rows: Vec<Value> = perf
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "rates": rates_json(&r.now),
                    "previous": rates_json(&r.previous),
                    "top": r.top.iter().map(|(k, n)| { let mut x = cat_name(*k); x["count"] = json!(n); x }).collect::<Vec<_>>(),
                });
                match r.key {
                    GroupKey::Node(n) => v["node"] = node_json(&org, n),
                    GroupKey::Category(k) => v["category"] = cat_name(k),
                }
                v
            })
            .collect();
        Ok(json!({
            "node": org.id(root).as_str(),
            "window": window_json(w),
            "previous_window": {"from": w.from.saturating_sub(w.len()), "to": w.from},
            "category": cat,
            "total": rates_json(&perf.total),
            "previous": rates_json(&perf.previous),
            "rows": rows,
            "trend": perf.trend.iter().map(|(from, r)| { let mut v = rates_json(r); v["from"] = json!(from); v }).collect::<Vec<_>>(),
            "unplaced": perf.unplaced,
        }))
    })
    .await?;
    Ok(Json(out).into_response())
}
