//! REST for work orders: the same actions as the WebSocket protocol, for integrators
//! (12345 hotline, 110/120, emergency command) and consoles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::store::db::params_from_iter;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{Caller, Params};
use crate::auth::{Credential, Role};
use crate::hub::Hub;
use crate::orders::Who;
use crate::orders::model::{Action, OrderId, Priority, State as OrderState};
use crate::orders::persist;
use crate::orders::service::{
    CampaignIn, Cmd, NoticeIn, ReadKind, RecordIn, Reply, RestBody, ServiceError,
};
use crate::orders::wire::{ActIn, CreateIn, check_key};
use crate::org::{NodeIdx, Tier};
use crate::scope;

/// Largest request body accepted by the order routes.
pub const MAX_BODY: usize = 64 * 1024;

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let status = match e.code() {
            "not_found" => StatusCode::NOT_FOUND,
            "illegal_transition" | "idempotency_conflict" | "version_conflict" => {
                StatusCode::CONFLICT
            }
            "out_of_scope" => StatusCode::FORBIDDEN,
            "unknown_category" | "unknown_cause" | "invalid_target" => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            "invalid_data" => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

pub(super) fn who(c: &Credential) -> Who {
    Who {
        node: c.endpoint,
        role: c.role,
    }
}

fn body_error(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("the request body exceeds {MAX_BODY} bytes"),
        );
    }
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", e.body_text())
}

pub(super) async fn ask(
    hub: &Hub,
    make: impl FnOnce(Reply) -> Cmd,
) -> Result<(bool, RestBody), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    hub.services()?
        .orders
        .send(make(Reply::Rest(tx)), hub.backplane.as_ref())
        .await;
    Ok(rx.await.unwrap_or(Err(ServiceError::Unavailable))?)
}

fn order_response(r: Result<(bool, RestBody), ApiError>) -> Result<Response, ApiError> {
    let (created, body) = r?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(match body {
        RestBody::Order(doc) => {
            #[derive(Serialize)]
            struct Body {
                order: Box<crate::orders::wire::OrderDoc>,
            }
            (status, Json(Body { order: doc })).into_response()
        }
        RestBody::Value(v) => (status, Json(v)).into_response(),
    })
}

/// `POST /api/v1/orders` — `Idempotency-Key` makes a retried create return the same order.
pub async fn create(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    headers: HeaderMap,
    body: Result<Json<CreateIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut body) = body.map_err(body_error)?;
    if let Some(k) = headers.get("idempotency-key") {
        let k = k.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_data",
                "Idempotency-Key must be ASCII",
            )
        })?;
        check_key(k).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", m))?;
        body.idempotency_key = Some(k.to_owned());
    }
    let (new, key) = body
        .into_new(&hub.org)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", m))?;
    let at = Instant::now();
    order_response(
        ask(&hub, |reply| Cmd::Create {
            who: who(&c),
            new,
            key,
            reply,
            at,
        })
        .await,
    )
}

pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    order_response(
        ask(&hub, |reply| Cmd::Get {
            who: who(&c),
            id: OrderId(id),
            reply,
        })
        .await,
    )
}

/// `POST /api/v1/orders/{id}/{action}`.
pub async fn act(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path((id, action)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let action = Action::parse(&action).filter(|a| *a != Action::Create).ok_or_else(|| {
        ApiError::not_found(format!(
            "no order action {action:?}; actions: dispatch, acknowledge, return, reassign, escalate, report, review, rate, publish, archive"
        ))
    })?;
    // An empty body is fine for actions without fields (acknowledge, archive); any other body
    // is read as JSON whatever its content type says, so its fields (`version`) are never lost.
    let a: ActIn = if body.iter().all(u8::is_ascii_whitespace) {
        ActIn::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_data",
                format!("the request body is not a valid action: {e}"),
            )
        })?
    };
    if a.order.is_some_and(|o| o.0 != id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_data",
            "`order` in the body differs from the path",
        ));
    }
    let expect = a.version;
    let act = a
        .into_act(action, &hub.org)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", m))?;
    let at = Instant::now();
    order_response(
        ask(&hub, |reply| Cmd::Act {
            who: who(&c),
            id: OrderId(id),
            expect,
            act,
            reply,
            at,
        })
        .await,
    )
}

#[derive(Serialize)]
struct EventOut {
    seq: u32,
    at: u64,
    actor: String,
    action: String,
    #[serde(flatten)]
    detail: serde_json::Value,
}

pub async fn history(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let id = OrderId(id);
    // The service knows open orders and checks scope; it reads closed ones from the store. Its
    // answer shows the reporter as this caller may see it (masked unless it handles the order
    // or is a center above its intake), and so does the history below.
    let (_, seen) = ask(&hub, |reply| Cmd::Get {
        who: who(&c),
        id,
        reply,
    })
    .await?;
    let reporter = match &seen {
        RestBody::Order(doc) => serde_json::to_value(&doc.reporter).ok(),
        RestBody::Value(_) => None,
    };
    let events = hub
        .services()?
        .store
        .read(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT seq, at, actor, kind, data FROM order_events WHERE order_id = ?1 ORDER BY seq",
            )?;
            let rows = st.query_map([id.0 as i64], |r| {
                Ok(EventOut {
                    seq: r.get(0)?,
                    at: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    detail: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;
    let events: Vec<EventOut> = events
        .into_iter()
        .map(|mut e| {
            // The creation event carries the whole order as it was taken in.
            if let (Some(r), Some(slot)) = (&reporter, e.detail.get_mut("reporter")) {
                *slot = r.clone();
            }
            e
        })
        .collect();
    Ok(Json(serde_json::json!({ "order": id, "events": events })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    node: Option<String>,
    state: Option<String>,
    category: Option<String>,
    priority: Option<Priority>,
    holder: Option<String>,
    late: Option<bool>,
    /// Created at or after (Unix ms).
    from: Option<u64>,
    /// Created before (Unix ms).
    to: Option<u64>,
    /// Paging: orders with ids below this (the previous page's `next`).
    after: Option<u64>,
    limit: Option<usize>,
}

/// The subtree a query is about: the given node (checked against scope) or the caller's own.
pub(super) fn subtree_of(
    hub: &Hub,
    c: &Credential,
    node: Option<&str>,
) -> Result<NodeIdx, ApiError> {
    let n = match node {
        None => c.endpoint,
        Some(id) => hub
            .org
            .lookup(id)
            .ok_or_else(|| ApiError::not_found(format!("no node {id} in the org tree")))?,
    };
    if !scope::can_watch_subtree(&hub.org, c, n) {
        return Err(ApiError::out_of_scope(format!(
            "the subtree of {} is outside your scope",
            hub.org.id(n)
        )));
    }
    Ok(n)
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(q): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let node = subtree_of(&hub, &c, q.node.as_deref())?;
    let range = hub.org.subtree(node);
    let mut sql = String::from(
        "SELECT id, state, category, priority, source, node, holder, intake, created_at, updated_at,
                due_at, closed_at, supervision, score, satisfied, version
         FROM orders WHERE node_pre >= ? AND node_pre < ?",
    );
    let mut args: Vec<crate::store::db::Value> =
        vec![(range.start as i64).into(), (range.end as i64).into()];
    if let Some(s) = &q.state {
        let s = OrderState::parse(s)
            .ok_or_else(|| ApiError::bad_query(format!("unknown state {s:?}")))?;
        sql.push_str(" AND state = ?");
        args.push(s.as_str().to_owned().into());
    }
    if let Some(cat) = &q.category {
        if !hub.config.orders.categories.iter().any(|x| &x.id == cat) {
            return Err(ApiError::bad_query(format!("unknown category {cat:?}")));
        }
        sql.push_str(" AND category = ?");
        args.push(cat.clone().into());
    }
    if let Some(p) = q.priority {
        sql.push_str(" AND priority = ?");
        args.push(p.as_str().to_owned().into());
    }
    if let Some(h) = &q.holder {
        hub.org
            .lookup(h)
            .ok_or_else(|| ApiError::bad_query(format!("no node {h}")))?;
        sql.push_str(" AND holder = ?");
        args.push(h.clone().into());
    }
    if let Some(late) = q.late {
        // Late: still being worked on, and supervised already or past its deadline.
        let is_late = "(state NOT IN ('result_reported','rated','published','archived') \
                       AND (supervision > 0 OR due_at < ?))";
        sql.push_str(if late { " AND " } else { " AND NOT " });
        sql.push_str(is_late);
        args.push((hub.clock.now_ms() as i64).into());
    }
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err(ApiError::bad_query(format!(
            "from ({f}) must be before to ({t})"
        )));
    }
    if let Some(f) = q.from {
        sql.push_str(" AND created_at >= ?");
        args.push((f as i64).into());
    }
    if let Some(t) = q.to {
        sql.push_str(" AND created_at < ?");
        args.push((t as i64).into());
    }
    if let Some(a) = q.after {
        sql.push_str(" AND id < ?");
        args.push((a as i64).into());
    }
    let limit = super::bounded("limit", q.limit, 100, 1, 500)?;
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push((limit as i64).into());
    let out: Vec<ListItem> = hub
        .services()?
        .store
        .read(move |conn| {
            let mut st = conn.prepare(&sql)?;
            let rows = st.query_map(params_from_iter(args), |r| {
                Ok(ListItem {
                    id: r.get::<_, i64>(0)? as u64,
                    state: r.get(1)?,
                    category: r.get(2)?,
                    priority: r.get(3)?,
                    source: r.get(4)?,
                    node: r.get(5)?,
                    holder: r.get(6)?,
                    intake: r.get(7)?,
                    created_at: r.get::<_, i64>(8)? as u64,
                    updated_at: r.get::<_, i64>(9)? as u64,
                    due_at: r.get::<_, i64>(10)? as u64,
                    closed_at: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
                    supervision: r.get(12)?,
                    score: r.get(13)?,
                    satisfied: r.get(14)?,
                    version: r.get(15)?,
                })
            })?;
            rows.collect()
        })
        .await
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;
    let next = (out.len() == limit)
        .then(|| out.last().map(|d| d.id))
        .flatten();
    Ok(Json(serde_json::json!({ "orders": out, "next": next })).into_response())
}

/// One order in a list: its state and where it is (the whole order: `GET /orders/{id}`).
#[derive(Serialize)]
struct ListItem {
    id: u64,
    state: String,
    category: String,
    priority: String,
    source: String,
    node: String,
    holder: String,
    intake: String,
    created_at: u64,
    updated_at: u64,
    due_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at: Option<u64>,
    supervision: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    satisfied: Option<bool>,
    version: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    node: Option<String>,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Counts {
    received: u64,
    closed: u64,
    in_progress: u64,
}

pub async fn stats(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(q): Params<StatsQuery>,
) -> Result<Response, ApiError> {
    if c.role == Role::Worker {
        return Err(ApiError::out_of_scope(
            "order statistics are for centers and stations",
        ));
    }
    let node = subtree_of(&hub, &c, q.node.as_deref())?;
    let org = Arc::clone(&hub.org);
    let range = org.subtree(node);
    let children: Vec<(NodeIdx, std::ops::Range<usize>)> = org
        .children(node)
        .iter()
        .map(|&ch| (ch, org.subtree(ch)))
        .collect();
    let now = hub.clock.now_ms() as i64;
    let out = hub
        .services()?
        .store
        .read(move |conn| {
            let (lo, hi) = (range.start as i64, range.end as i64);
            let mut by_state = BTreeMap::new();
            {
                let mut st = conn.prepare_cached(
                    "SELECT state, COUNT(*) FROM orders WHERE node_pre >= ?1 AND node_pre < ?2 GROUP BY state",
                )?;
                for row in st.query_map([lo, hi], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    let (s, n) = row?;
                    by_state.insert(s, n as u64);
                }
            }
            let group = |col: &str| -> crate::store::db::Result<BTreeMap<String, Counts>> {
                let mut st = conn.prepare(&format!(
                    "SELECT {col}, COUNT(*), SUM(CASE WHEN state = 'archived' THEN 1 ELSE 0 END) FROM orders
                     WHERE node_pre >= ?1 AND node_pre < ?2 GROUP BY {col}"
                ))?;
                let mut m = BTreeMap::new();
                for row in st.query_map([lo, hi], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })? {
                    let (k, n, closed) = row?;
                    m.insert(k, Counts { received: n as u64, closed: closed as u64, in_progress: (n - closed) as u64 });
                }
                Ok(m)
            };
            let by_category = group("category")?;
            let by_priority = group("priority")?;
            let by_source = group("source")?;
            let (rated, satisfied, mean): (i64, i64, Option<f64>) = conn.query_row(
                "SELECT COUNT(score), COALESCE(SUM(satisfied), 0), AVG(score) FROM orders
                 WHERE node_pre >= ?1 AND node_pre < ?2 AND score IS NOT NULL",
                [lo, hi],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let late: i64 = conn.query_row(
                "SELECT COUNT(*) FROM orders WHERE node_pre >= ?1 AND node_pre < ?2
                 AND state NOT IN ('result_reported','rated','published','archived')
                 AND (supervision > 0 OR due_at < ?3)",
                [lo, hi, now],
                |r| r.get(0),
            )?;
            let mut per_child = Vec::with_capacity(children.len());
            {
                let mut st = conn.prepare_cached(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN state = 'archived' THEN 1 ELSE 0 END), 0) FROM orders WHERE node_pre >= ?1 AND node_pre < ?2",
                )?;
                for (ch, r) in &children {
                    let (n, closed): (i64, i64) =
                        st.query_row([r.start as i64, r.end as i64], |x| Ok((x.get(0)?, x.get(1)?)))?;
                    per_child.push((*ch, Counts { received: n as u64, closed: closed as u64, in_progress: (n - closed) as u64 }));
                }
            }
            // Taken in per hour over the last 24 hours, oldest first, empty hours included.
            let first_hour = (now / HOUR_MS - 23) * HOUR_MS;
            let mut by_hour: Vec<(i64, u64)> = (0..24).map(|h| (first_hour + h * HOUR_MS, 0)).collect();
            {
                let mut st = conn.prepare_cached(
                    "SELECT created_at / 3600000, COUNT(*) FROM orders
                     WHERE node_pre >= ?1 AND node_pre < ?2 AND created_at >= ?3 GROUP BY 1",
                )?;
                for row in st.query_map([lo, hi, first_hour], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
                    let (h, n) = row?;
                    if let Some(slot) = by_hour.get_mut((h * HOUR_MS - first_hour).div_euclid(HOUR_MS) as usize) {
                        slot.1 = n as u64;
                    }
                }
            }
            let mut holders = Vec::new();
            {
                let mut st = conn.prepare_cached(
                    "SELECT holder, COUNT(*) FROM orders WHERE node_pre >= ?1 AND node_pre < ?2
                     AND state != 'archived' GROUP BY holder",
                )?;
                for row in st.query_map([lo, hi], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    holders.push(row?);
                }
            }
            Ok((by_state, by_category, by_priority, by_source, rated, satisfied, mean, late, per_child, holders, by_hour))
        })
        .await
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;
    let (
        by_state,
        by_category,
        by_priority,
        by_source,
        rated,
        satisfied,
        mean,
        late,
        per_child,
        holders,
        by_hour,
    ) = out;
    let received: u64 = by_state.values().sum();
    let closed = by_state.get("archived").copied().unwrap_or(0);
    let mut by_tier: BTreeMap<&'static str, u64> =
        Tier::ALL.iter().map(|t| (t.as_str(), 0)).collect();
    for (h, n) in holders {
        if let Some(i) = org.lookup(&h) {
            *by_tier.entry(org.tier(i).as_str()).or_default() += n as u64;
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let by_node: Vec<serde_json::Value> = per_child
        .iter()
        .map(|(ch, k)| {
            let n = org.node(*ch);
            serde_json::json!({
                "node": n.id, "name": n.name, "tier": n.tier,
                "received": k.received, "closed": k.closed, "in_progress": k.in_progress,
                "completion_rate": ratio(k.closed, k.received),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "node": org.id(node),
        "received": received,
        "closed": closed,
        "in_progress": received - closed,
        "completion_rate": ratio(closed, received),
        "late": late,
        "rated": rated,
        "satisfied": satisfied,
        "satisfaction_rate": ratio(satisfied as u64, rated as u64),
        "mean_score": mean,
        "by_state": by_state,
        "by_category": by_category,
        "by_priority": by_priority,
        "by_source": by_source,
        "open_by_holder_tier": by_tier,
        "by_node": by_node,
        "by_hour": by_hour.iter().map(|(at, n)| serde_json::json!({"at": at, "received": n})).collect::<Vec<_>>(),
    }))
    .into_response())
}

const HOUR_MS: i64 = 3_600_000;

/// `GET /api/v1/public/orders/{id}` — 信息公示: what a published order says to the public.
pub async fn public(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let id = OrderId(id);
    let doc = hub
        .services()?
        .store
        .read(move |conn| persist::order_doc(conn, id))
        .await
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;
    let not_public = || ApiError::not_found(format!("order {id} is not published"));
    let doc = doc.ok_or_else(not_public)?;
    if !matches!(doc.state, OrderState::Published | OrderState::Archived) {
        return Err(not_public());
    }
    let summary = doc.summary.clone().ok_or_else(not_public)?;
    let node = hub.org.lookup(&doc.location.node).map(|n| hub.org.node(n));
    let category = hub
        .config
        .orders
        .categories
        .iter()
        .find(|c| c.id == doc.category);
    Ok(Json(serde_json::json!({
        "id": doc.id,
        "category": doc.category,
        "category_name": category.map(|c| c.name.as_str()),
        "node": doc.location.node,
        "node_name": node.map(|n| n.name.as_ref()),
        "created_at": doc.created_at,
        "closed_at": doc.closed_at,
        "state": doc.state,
        "summary": summary,
        "reporter": doc.masked().reporter,
    }))
    .into_response())
}

/// `POST /api/v1/notices`.
pub async fn notice_send(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    body: Result<Json<NoticeIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(notice) = body.map_err(body_error)?;
    order_response(
        ask(&hub, |reply| Cmd::NoticeSend {
            who: who(&c),
            notice,
            reply,
        })
        .await,
    )
}

pub async fn notice_get(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    order_response(
        ask(&hub, |reply| Cmd::NoticeGet {
            who: who(&c),
            id,
            reply,
        })
        .await,
    )
}

/// `POST /api/v1/notices/{id}/read` and `/api/v1/campaigns/{id}/read`: read receipts.
pub async fn notice_read(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    order_response(
        ask(&hub, |reply| Cmd::MarkRead {
            who: who(&c),
            kind: ReadKind::Notice,
            id,
            reply,
        })
        .await,
    )
}

/// `POST /api/v1/campaigns`.
pub async fn campaign_start(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    body: Result<Json<CampaignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(campaign) = body.map_err(body_error)?;
    order_response(
        ask(&hub, |reply| Cmd::CampaignStart {
            who: who(&c),
            campaign,
            reply,
        })
        .await,
    )
}

pub async fn campaign_get(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    order_response(
        ask(&hub, |reply| Cmd::CampaignGet {
            who: who(&c),
            id,
            reply,
        })
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsBody {
    records: Vec<RecordIn>,
}

/// `POST /api/v1/campaigns/{id}/{action}`: `records` (a worker's records, at most 100 per
/// request), `done` (a worker finished), `close` (the sender), `read` (a read receipt).
pub async fn campaign_act_or_records(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path((id, action)): Path<(u64, String)>,
    body: Result<Json<RecordsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let w = who(&c);
    let r = match action.as_str() {
        "records" => {
            let Json(b) = body.map_err(body_error)?;
            ask(&hub, |reply| Cmd::CampaignRecord {
                who: w,
                id,
                records: b.records,
                reply,
            })
            .await
        }
        "done" => ask(&hub, |reply| Cmd::CampaignDone { who: w, id, reply }).await,
        "close" => ask(&hub, |reply| Cmd::CampaignClose { who: w, id, reply }).await,
        "read" => {
            ask(&hub, |reply| Cmd::MarkRead {
                who: w,
                kind: ReadKind::Campaign,
                id,
                reply,
            })
            .await
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no campaign action {other:?}; actions: records, done, close, read"
            )));
        }
    };
    order_response(r)
}
