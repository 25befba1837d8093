//! REST for call records: the log of every call attempt, and per-node figures for the console.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::orders::subtree_of;
use super::{Caller, Params};
use crate::calls::core::{Media, Outcome};
use crate::calls::records::{self, Filter};
use crate::hub::Hub;
use crate::orders::service::ServiceError;
use crate::scope;

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::from(ServiceError::from(e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Calls with a party in this node's subtree (default: the caller's own).
    node: Option<String>,
    /// Calls with this terminal as a party.
    party: Option<String>,
    /// An outcome, or `live` for calls still going on.
    outcome: Option<String>,
    media: Option<Media>,
    /// Placed at or after (Unix ms).
    from: Option<u64>,
    /// Placed before (Unix ms).
    to: Option<u64>,
    /// Paging: calls with ids below this (the previous page's `next`).
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/calls`: newest first.
pub async fn list(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(q): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let node = subtree_of(&hub, &c, q.node.as_deref())?;
    let party = match &q.party {
        None => None,
        Some(id) => Some(
            hub.org
                .lookup(id)
                .ok_or_else(|| ApiError::bad_query(format!("party: no node {id}")))?,
        ),
    };
    let (outcome, live) = match q.outcome.as_deref() {
        None => (None, false),
        Some("live") => (None, true),
        Some(o) => (
            Some(
                Outcome::ALL
                    .into_iter()
                    .find(|x| x.as_str() == o)
                    .ok_or_else(|| {
                        ApiError::bad_query(format!(
                            "unknown outcome {o:?}; outcomes: live, {}",
                            Outcome::ALL.map(Outcome::as_str).join(", ")
                        ))
                    })?,
            ),
            false,
        ),
    };
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err(ApiError::bad_query(format!(
            "from ({f}) must be before to ({t})"
        )));
    }
    let limit = super::bounded("limit", q.limit, 100, 1, 500)?;
    let filter = Filter {
        range: hub.org.subtree(node),
        party,
        outcome,
        live,
        media: q.media,
        from: q.from,
        to: q.to,
        before: q.after,
        limit,
    };
    hub.services()?.calls.settled().await;
    let calls = hub
        .services()?
        .store
        .read(move |conn| records::list(conn, &filter))
        .await
        .map_err(store_error)?;
    let next = (calls.len() == limit)
        .then(|| calls.last().map(|r| r.id))
        .flatten();
    Ok(Json(serde_json::json!({ "calls": calls, "next": next })).into_response())
}

/// `GET /api/v1/calls/{id}`: visible to those who may watch either party.
pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    hub.services()?.calls.settled().await;
    let found = hub
        .services()?
        .store
        .read(move |conn| records::get(conn, id))
        .await
        .map_err(store_error)?;
    let hidden = || ApiError::not_found(format!("no call {id}"));
    let (rec, caller, callee) = found.ok_or_else(hidden)?;
    let visible = [caller, callee]
        .iter()
        .any(|&n| n.get() < hub.org.len() && scope::can_watch_subtree(&hub.org, &c, n));
    if !visible {
        // Not "forbidden": whether a call exists outside one's scope is not disclosed.
        return Err(hidden());
    }
    Ok(Json(serde_json::json!({ "call": rec })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    node: Option<String>,
    /// Calls placed at or after (Unix ms); default: the last 24 hours.
    from: Option<u64>,
    /// Calls placed before (Unix ms); default: now.
    to: Option<u64>,
}

/// `GET /api/v1/calls/stats`: answered rate and time to answer for a node's subtree and for
/// each child's.
pub async fn stats(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(q): Params<StatsQuery>,
) -> Result<Response, ApiError> {
    let node = subtree_of(&hub, &c, q.node.as_deref())?;
    let now = hub.clock.now_ms();
    let to = q.to.unwrap_or(now + 1);
    let from = q.from.unwrap_or(to.saturating_sub(24 * 3600 * 1000));
    if from >= to {
        return Err(ApiError::bad_query(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let org = Arc::clone(&hub.org);
    hub.services()?.calls.settled().await;
    let s = hub
        .services()?
        .store
        .read(move |conn| records::stats(conn, &org, node, from, to))
        .await
        .map_err(store_error)?;
    // Figures flattened beside their node, as the order statistics do.
    let with = |f: &records::Figures, extra: serde_json::Value| {
        let mut v = serde_json::to_value(f).expect("figures serialize");
        if let (Some(m), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
            m.extend(x);
        }
        v
    };
    let by_node: Vec<serde_json::Value> = s
        .children
        .iter()
        .map(|(id, f)| {
            let name = hub.org.lookup(id).map(|n| &*hub.org.node(n).name);
            with(f, serde_json::json!({ "node": id, "name": name }))
        })
        .collect();
    let body = with(
        &s.total,
        serde_json::json!({ "node": s.node, "from": from, "to": to, "by_node": by_node }),
    );
    Ok(Json(body).into_response())
}
