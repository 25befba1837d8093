//! api — the REST surface (axum): health, metrics, the org tree, presence snapshots, the OpenAPI
//! document, and the `/ws` upgrade. `router(hub)` builds it all, so tests drive it with `oneshot`.

pub mod analysis;
pub mod attachments;
pub mod calls;
pub mod error;
pub mod orders;
pub mod sessions;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize, Serializer};

use self::error::{ApiError, REQUEST_ID, next_request_id};
use crate::auth::Credential;
use crate::hub::Hub;
use crate::org::{GeoPoint, NodeIdx, Org, Tier};
use crate::presence::Watch;
use crate::scope;
use crate::transport::server::{credential_token, ws_handler};

/// Every route, as documented in `openapi.json` (a test keeps the two in step); the web pages
/// (`crate::web`) are not part of the API.
pub const ROUTES: [&str; 38] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/ws",
    "/api/v1/openapi.json",
    "/api/v1/tickets",
    "/api/v1/org",
    "/api/v1/org/nodes/{id}",
    "/api/v1/org/nodes/{id}/subtree",
    "/api/v1/presence",
    "/api/v1/orders",
    "/api/v1/orders/stats",
    "/api/v1/orders/{id}",
    "/api/v1/orders/{id}/history",
    "/api/v1/orders/{id}/attachments",
    "/api/v1/orders/{id}/{action}",
    "/api/v1/attachments/{id}",
    "/api/v1/public/orders/{id}",
    "/api/v1/categories",
    "/api/v1/notices",
    "/api/v1/notices/{id}",
    "/api/v1/notices/{id}/read",
    "/api/v1/campaigns",
    "/api/v1/campaigns/{id}",
    "/api/v1/campaigns/{id}/{action}",
    "/api/v1/calls",
    "/api/v1/calls/stats",
    "/api/v1/calls/{id}",
    "/api/v1/sessions",
    "/api/v1/sessions/{id}",
    "/api/v1/recordings/{id}",
    "/api/v1/analysis/hotspots",
    "/api/v1/analysis/causes",
    "/api/v1/analysis/sites",
    "/api/v1/analysis/sites/{id}/similar",
    "/api/v1/analysis/interventions",
    "/api/v1/analysis/interventions/{id}/effect",
    "/api/v1/analysis/performance",
];

pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .merge(crate::web::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/ws",
            get(ws_handler).with_state(Arc::clone(&hub.transport)),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/tickets", post(ticket))
        .route("/api/v1/org", get(org_summary))
        .route("/api/v1/org/nodes/{id}", get(org_node))
        .route("/api/v1/org/nodes/{id}/subtree", get(org_subtree))
        .route("/api/v1/presence", get(presence))
        .route("/api/v1/orders", get(orders::list).post(orders::create))
        .route("/api/v1/orders/stats", get(orders::stats))
        .route("/api/v1/orders/{id}", get(orders::get))
        .route("/api/v1/orders/{id}/history", get(orders::history))
        .route(
            "/api/v1/orders/{id}/attachments",
            // The upload reads its body itself, within its own limit.
            get(attachments::list).post(attachments::upload),
        )
        .route("/api/v1/attachments/{id}", get(attachments::download))
        .route("/api/v1/orders/{id}/{action}", post(orders::act))
        .route("/api/v1/public/orders/{id}", get(orders::public))
        .route("/api/v1/categories", get(categories))
        .route("/api/v1/notices", post(orders::notice_send))
        .route("/api/v1/notices/{id}", get(orders::notice_get))
        .route("/api/v1/notices/{id}/read", post(orders::notice_read))
        .route("/api/v1/campaigns", post(orders::campaign_start))
        .route("/api/v1/campaigns/{id}", get(orders::campaign_get))
        .route(
            "/api/v1/campaigns/{id}/{action}",
            post(orders::campaign_act_or_records),
        )
        .route("/api/v1/calls", get(calls::list))
        .route("/api/v1/calls/stats", get(calls::stats))
        .route("/api/v1/calls/{id}", get(calls::get))
        .route("/api/v1/sessions", get(sessions::list))
        .route("/api/v1/sessions/{id}", get(sessions::get))
        .route("/api/v1/recordings/{id}", get(sessions::recording))
        .route("/api/v1/analysis/hotspots", get(analysis::hotspots))
        .route("/api/v1/analysis/causes", get(analysis::causes))
        .route(
            "/api/v1/analysis/sites",
            get(analysis::sites).post(analysis::add_sites),
        )
        .route(
            "/api/v1/analysis/sites/{id}/similar",
            get(analysis::similar),
        )
        .route(
            "/api/v1/analysis/interventions",
            get(analysis::interventions).post(analysis::add_intervention),
        )
        .route(
            "/api/v1/analysis/interventions/{id}/effect",
            get(analysis::effect),
        )
        .route("/api/v1/analysis/performance", get(analysis::performance))
        .layer(axum::extract::DefaultBodyLimit::max(orders::MAX_BODY))
        .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&hub),
            refuse_large_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&hub),
            request_id,
        ))
        .with_state(hub)
}

/// Echoes a sane `X-Request-Id` or assigns one, for the handler (errors carry it) and the reply.
async fn request_id(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(next_request_id);
    if req.uri().path() != "/ws" {
        hub.metrics.http_requests.fetch_add(1, Relaxed);
    }
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Every failure answers JSON. Extractors that refuse a request (a path id that is not a number,
/// a body that is not JSON) answer plain text from axum; here that becomes the hub's error body,
/// with the code its status means.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "message_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "invalid_data",
        _ => "internal",
    };
    let message = String::from_utf8_lossy(&text);
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("refused").into()
    } else {
        message
    };
    ApiError::new(status, code, message).into_response()
}

/// Bodies read and dropped before a 413, at most: a client still sending a body the hub will not
/// take gets the answer instead of a reset (closing with unread bytes resets the connection).
const DRAIN_MAX: usize = 16 * 1024 * 1024;

/// A body announced larger than its route takes is refused before a handler sees it: a photo
/// up to `orders.max_attachment_bytes`, anything else up to `orders::MAX_BODY`.
async fn refuse_large_bodies(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let photo = attachments::is_upload(req.method(), req.uri().path());
    let max = if photo {
        hub.config.orders.max_attachment_bytes
    } else {
        orders::MAX_BODY
    };
    let Some(len) = declared.filter(|&n| n > max as u64) else {
        return next.run(req).await;
    };
    if len <= DRAIN_MAX as u64 {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_large",
        if photo {
            format!(
                "the photo is {len} bytes; at most {max} are accepted (orders.max_attachment_bytes)"
            )
        } else {
            format!("the request body is {len} bytes; at most {max} are accepted")
        },
    )
    .into_response()
}

/// A paging or depth parameter within its documented bounds (the default when absent).
pub fn bounded(
    name: &str,
    v: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_query(format!(
            "`{name}` is {n}; it must be {min} to {max}"
        ))),
    }
}

/// The authenticated caller of an `/api/v1` route.
pub struct Caller(pub Credential);

impl FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Caller, ApiError> {
        let token = credential_token(&parts.headers, parts.uri.query())?;
        Ok(Caller(hub.authority.verify(
            &hub.org,
            token,
            hub.clock.now_ms() / 1000,
        )?))
    }
}

/// Query parameters; a query that does not parse is refused with the typed `invalid_query`
/// error naming what was wrong. `token` (the credential, for clients that cannot set a header)
/// is the `Caller` extractor's and is left out, so query types list only their own fields.
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params<T>, ApiError> {
        let own: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("token"))
            .collect();
        serde_urlencoded::from_str(&own.join("&"))
            .map(Params)
            .map_err(|e| ApiError::bad_query(format!("Failed to deserialize query string: {e}")))
    }
}

/// `POST /api/v1/tickets`: a connection ticket for the caller, so a browser opens its WebSocket
/// with `/ws?ticket=…` and never puts its credential in a URL. One use, short-lived.
async fn ticket(State(hub): State<Arc<Hub>>, Caller(who): Caller) -> Result<Response, ApiError> {
    let now = hub.clock.now_ms() / 1000;
    let ttl = hub.config.transport.ticket_ttl_secs;
    let (ticket, expires_at) = hub
        .authority
        .mint_ticket(&hub.org, &who, ttl, now)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("no ticket: {e}"),
            )
        })?;
    let body = serde_json::json!({
        "ticket": ticket,
        "expires_at": expires_at,
        "url": format!("/ws?ticket={ticket}"),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The order taxonomy and deadlines, for consoles building their forms.
async fn categories(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    let o = &hub.config.orders;
    Json(serde_json::json!({ "categories": o.categories, "priorities": o.priorities }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let t = &hub.transport;
    if t.accepting.load(Relaxed) {
        let link = hub.backplane.status();
        let store = hub.services.as_ref().map(|s| &s.store);
        let store_up = store.is_none_or(|s| s.up());
        let mut body = serde_json::json!({
            // Degraded still serves this node's terminals: a balancer keeps sending them here.
            "status": if link.up && store_up { "ready" } else { "degraded" },
            "link": link,
            "connections": t.registry.len(),
            "max_connections": t.caps.terminals,
            "backplane": hub.backplane.name(),
            "hub": hub.backplane.hub().0,
            "services": hub.services.is_some(),
        });
        if let Some(s) = store {
            body["store"] = serde_json::json!({ "engine": s.target().engine(), "up": store_up });
        }
        Json(body).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the hub is shutting down",
        )
        .into_response()
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A node as REST shows it.
struct NodeView<'a>(&'a Org, NodeIdx);

impl Serialize for NodeView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct V<'a> {
            id: &'a str,
            name: &'a str,
            name_en: &'a str,
            tier: Tier,
            #[serde(skip_serializing_if = "Option::is_none")]
            parent: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            location: Option<GeoPoint>,
            children: usize,
            descendants: usize,
        }
        let (org, i) = (self.0, self.1);
        let n = org.node(i);
        V {
            id: n.id.as_str(),
            name: &n.name,
            name_en: &n.name_en,
            tier: n.tier,
            parent: n.parent.map(|p| org.id(p).as_str()),
            location: n.location,
            children: org.children(i).len(),
            descendants: org.descendants(i),
        }
        .serialize(s)
    }
}

/// A node with its children nested down to a depth.
struct TreeView<'a>(&'a Org, NodeIdx, u8);

impl Serialize for TreeView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (org, i, depth) = (self.0, self.1, self.2);
        let n = org.node(i);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &n.id)?;
        m.serialize_entry("name", &n.name)?;
        m.serialize_entry("name_en", &n.name_en)?;
        m.serialize_entry("tier", &n.tier)?;
        if let Some(l) = &n.location {
            m.serialize_entry("location", l)?;
        }
        if depth > 0 {
            let kids: Vec<TreeView<'_>> = org
                .children(i)
                .iter()
                .map(|&c| TreeView(org, c, depth - 1))
                .collect();
            m.serialize_entry("children", &kids)?;
        } else {
            m.serialize_entry("children_count", &org.children(i).len())?;
        }
        m.end()
    }
}

fn lookup(org: &Org, id: &str) -> Result<NodeIdx, ApiError> {
    org.lookup(id)
        .ok_or_else(|| ApiError::not_found(format!("no node {id} in the org tree")))
}

fn require_subtree(hub: &Hub, who: &Credential, node: NodeIdx) -> Result<(), ApiError> {
    if scope::can_watch_subtree(&hub.org, who, node) {
        Ok(())
    } else {
        let me = hub.org.node(who.endpoint);
        Err(ApiError::out_of_scope(format!(
            "the subtree of {} is outside your scope (you are {} {}, role {})",
            hub.org.id(node),
            me.id,
            me.name,
            who.role.as_str()
        )))
    }
}

async fn org_summary(State(hub): State<Arc<Hub>>, Caller(who): Caller) -> Json<serde_json::Value> {
    let org = &hub.org;
    let t = org.tier_counts();
    Json(serde_json::json!({
        "root": NodeView(org, org.root()),
        "you": NodeView(org, who.endpoint),
        "tiers": {
            "city": t[0], "county": t[1], "township": t[2], "village": t[3], "worker": t[4],
        },
        "nodes": org.len(),
        "dispatchable": org.dispatchable(),
    }))
}

async fn org_node(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let org = &hub.org;
    let n = lookup(org, &id)?;
    if !scope::can_see(org, &who, n) {
        return Err(ApiError::out_of_scope(format!(
            "node {id} is outside your scope"
        )));
    }
    let children: Option<Vec<NodeView<'_>>> = scope::can_watch_subtree(org, &who, n)
        .then(|| org.children(n).iter().map(|&c| NodeView(org, c)).collect());
    let chain: Vec<&str> = org.ancestors(n).map(|a| org.id(a).as_str()).collect();
    Ok(Json(serde_json::json!({
        "node": NodeView(org, n),
        "ancestors": chain,
        "children": children,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubtreeQuery {
    depth: Option<usize>,
}

async fn org_subtree(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Params(q): Params<SubtreeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let org = &hub.org;
    let n = lookup(org, &id)?;
    require_subtree(&hub, &who, n)?;
    let depth = bounded("depth", q.depth, 4, 0, 4)? as u8;
    Ok(Json(serde_json::json!({ "tree": TreeView(org, n, depth) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    node: Option<String>,
    endpoints: Option<bool>,
}

async fn presence(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Params(q): Params<PresenceQuery>,
) -> Result<Response, ApiError> {
    let id = q
        .node
        .ok_or_else(|| ApiError::bad_query("missing query parameter `node`"))?;
    let n = lookup(&hub.org, &id)?;
    require_subtree(&hub, &who, n)?;
    let body = hub
        .presence
        .snapshot(Watch::Subtree(n), q.endpoints.unwrap_or(true))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "presence is shutting down",
            )
        })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
