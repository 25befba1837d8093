//! REST for photos attached to orders: a field worker attaches one with a result; whoever may
//! see the order may list and download them.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Caller;
use super::error::ApiError;
use super::orders::{ask, who};
use crate::auth::{Credential, Role};
use crate::hub::Hub;
use crate::orders::attachments::{self, AttachError, Meta};
use crate::orders::model::OrderId;
use crate::orders::service::{Cmd, RestBody, ServiceError};
use crate::store::{Job, inbox};

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> ApiError {
        let status = match e {
            AttachError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AttachError::Type(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AttachError::Full { .. } => StatusCode::CONFLICT,
            AttachError::Empty | AttachError::Mismatch(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::from(ServiceError::from(e))
}

/// The order as the caller sees it, if it may (the same answer as `GET /orders/{id}`
/// otherwise: not found, or out of scope): its holder and its state.
async fn viewable(hub: &Hub, c: &Credential, id: OrderId) -> Result<(String, String), ApiError> {
    let (_, body) = ask(hub, |reply| Cmd::Get {
        who: who(c),
        id,
        reply,
    })
    .await?;
    Ok(match body {
        RestBody::Order(doc) => (doc.holder.clone(), doc.state.as_str().to_owned()),
        // An order no longer held in memory comes as its document, already encoded.
        RestBody::Value(v) => {
            let field = |k: &str| v["order"][k].as_str().unwrap_or_default().to_owned();
            (field("holder"), field("state"))
        }
    })
}

#[derive(Serialize)]
struct One {
    attachment: Meta,
    url: String,
}

fn url(m: &Meta) -> String {
    format!("/api/v1/attachments/{}", m.id)
}

/// Uploads read at once: each holds its photo in memory until it is written, so a burst of
/// uploads waits here rather than filling memory (4 × 4 MiB by default).
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Whether a request is a photo upload (it takes a larger body than the other routes).
pub fn is_upload(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && path
            .strip_prefix("/api/v1/orders/")
            .and_then(|p| p.strip_suffix("/attachments"))
            .is_some_and(|id| !id.contains('/'))
}

/// `POST /api/v1/orders/{id}/attachments` — the body is the photo, its type in `Content-Type`.
/// Only the order's holder attaches, until its result is rated. 201 with the stored photo; 200
/// with the one stored before when these bytes were sent already.
pub async fn upload(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = OrderId(id);
    let max = hub.config.orders.max_attachment_bytes;
    if c.role == Role::Observer {
        return Err(ApiError::out_of_scope(
            "an observer seat (a video wall) watches orders; it does not attach photos",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    attachments::kind(&content_type)?;
    let (holder, state) = viewable(&hub, &c, id).await?;
    let me = hub.org.id(c.endpoint).to_string();
    if holder != me {
        return Err(ApiError::out_of_scope(format!(
            "order {id} is held by {holder}: its holder attaches the photos of its work"
        )));
    }
    if matches!(state.as_str(), "rated" | "published" | "archived") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "illegal_transition",
            format!("order {id} is {state}: its result is settled and takes no more photos"),
        ));
    }
    let _turn = UPLOADS
        .acquire()
        .await
        .map_err(|_| ApiError::from(ServiceError::Unavailable))?;
    let data = axum::body::to_bytes(body, max + 1)
        .await
        .map_err(|_| ApiError::from(AttachError::TooLarge { size: max + 1, max }))?;
    let kind = attachments::check(&content_type, &data, max)?;
    let (data, sha) = tokio::task::spawn_blocking(move || {
        let sha = attachments::sha256(&data);
        (data, sha)
    })
    .await
    .map_err(|_| ApiError::from(ServiceError::Unavailable))?;
    let store = Arc::clone(&hub.services()?.store);
    let at = hub.clock.now_ms();
    let most = hub.config.orders.max_attachments;
    let (tx, mut rx) = inbox();
    store
        .submit_async(Job::query(
            move |conn| {
                let photo = attachments::Photo {
                    order: id,
                    by: &me,
                    content_type: kind,
                    data: &data,
                    sha256: &sha,
                    at,
                };
                attachments::insert(conn, &photo, most)
            },
            &tx,
            |r| r,
        ))
        .await;
    let stored = rx
        .recv()
        .await
        .unwrap_or(Err(crate::store::StoreError::Closed))
        .map_err(store_error)?;
    let (m, new) = stored?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let url = url(&m);
    Ok((status, Json(One { attachment: m, url })).into_response())
}

/// `GET /api/v1/orders/{id}/attachments` — the order's photos, without their bytes.
pub async fn list(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let id = OrderId(id);
    viewable(&hub, &c, id).await?;
    let store = &hub.services()?.store;
    let rows = store
        .read(move |conn| attachments::list(conn, id))
        .await
        .map_err(store_error)?;
    #[derive(Serialize)]
    struct Item {
        #[serde(flatten)]
        meta: Meta,
        url: String,
    }
    #[derive(Serialize)]
    struct Body {
        attachments: Vec<Item>,
    }
    let attachments = rows
        .into_iter()
        .map(|meta| Item {
            url: url(&meta),
            meta,
        })
        .collect();
    Ok(Json(Body { attachments }).into_response())
}

/// `GET /api/v1/attachments/{id}` — the photo's bytes, for whoever may see its order.
pub async fn download(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let store = &hub.services()?.store;
    let (m, data) = store
        .read(move |conn| attachments::get(conn, id))
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no attachment {id}")))?;
    // Out of scope reads as not found: a photo says nothing of an order one may not see.
    viewable(&hub, &c, m.order).await.map_err(|e| {
        if e.code == "out_of_scope" {
            ApiError::not_found(format!("no attachment {id}"))
        } else {
            e
        }
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, m.content_type.clone()),
            // Photos never change: the browser may keep them, for this user only.
            (header::CACHE_CONTROL, "private, max-age=86400".into()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (header::ETAG, format!("\"{}\"", m.sha256)),
        ],
        data,
    )
        .into_response())
}
