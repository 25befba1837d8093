//! REST for command-session records: who commanded, who took part and when, how it ended.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::orders::subtree_of;
use super::{Caller, Params};
use crate::hub::Hub;
use crate::orders::service::ServiceError;
use crate::org::NodeIdx;
use crate::scope;
use crate::sessions::records;

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::from(ServiceError::from(e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Sessions opened by a center in this node's subtree (default: the caller's own).
    node: Option<String>,
    /// Paging: sessions with ids below this.
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/sessions`: sessions opened in a subtree, and those the caller was in; newest
/// first.
pub async fn list(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Params(q): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let node = subtree_of(&hub, &c, q.node.as_deref())?;
    let limit = super::bounded("limit", q.limit, 100, 1, 500)?;
    let range = hub.org.subtree(node);
    let me = c.endpoint;
    hub.services()?.sessions.settled().await;
    let sessions = hub
        .services()?
        .store
        .read(move |conn| records::list(conn, range, Some(me), q.after, limit))
        .await
        .map_err(store_error)?;
    let next = (sessions.len() == limit)
        .then(|| sessions.last().map(|r| r.id))
        .flatten();
    Ok(Json(serde_json::json!({ "sessions": sessions, "next": next })).into_response())
}

/// `GET /api/v1/sessions/{id}`: one session and every time a member was in it.
pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    hub.services()?.sessions.settled().await;
    let found = hub
        .services()?
        .store
        .read(move |conn| records::get(conn, id))
        .await
        .map_err(store_error)?;
    let hidden = || ApiError::not_found(format!("no session {id}"));
    let (rec, center, spans) = found.ok_or_else(hidden)?;
    let recordings = hub
        .services()?
        .store
        .read(move |conn| records::recordings(conn, id))
        .await
        .map_err(store_error)?;
    let sees = |n: u32| {
        let n = NodeIdx(n);
        n.get() < hub.org.len() && scope::can_watch_subtree(&hub.org, &c, n)
    };
    // Its center's subtree sees it, and so does each member (not disclosed to anyone else).
    let member = spans.iter().any(|(_, n)| NodeIdx(*n) == c.endpoint);
    if !sees(center) && !member {
        return Err(hidden());
    }
    let spans: Vec<records::Span> = spans.into_iter().map(|(s, _)| s).collect();
    Ok(
        Json(serde_json::json!({ "session": rec, "spans": spans, "recordings": recordings }))
            .into_response(),
    )
}

/// `GET /api/v1/recordings/{id}`: a recorded track's file, for whoever may see its session.
pub async fn recording(
    State(hub): State<Arc<Hub>>,
    Caller(c): Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    hub.services()?.sessions.settled().await;
    let store = Arc::clone(&hub.services()?.store);
    let hidden = || ApiError::not_found(format!("no recording {id}"));
    let (session, kind, path) = store
        .read(move |conn| records::recording(conn, id))
        .await
        .map_err(store_error)?
        .ok_or_else(hidden)?;
    let (_, center, spans) = store
        .read(move |conn| records::get(conn, session))
        .await
        .map_err(store_error)?
        .ok_or_else(hidden)?;
    let center = NodeIdx(center);
    let sees = center.get() < hub.org.len() && scope::can_watch_subtree(&hub.org, &c, center);
    if !sees && !spans.iter().any(|(_, n)| NodeIdx(*n) == c.endpoint) {
        return Err(hidden());
    }
    let file = hub.config.server.data_dir.join(&path);
    let gone = |e: std::io::Error| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("recording {id}: its file is gone ({e})"),
        )
    };
    let file = tokio::fs::File::open(&file).await.map_err(gone)?;
    let len = file.metadata().await.map_err(gone)?.len();
    // Sent as it is read, 64 KiB at a time: an hour of video is some 225 MB, and several
    // downloads at once must not each hold a whole file in memory.
    let chunks = futures_util::stream::unfold(Some(file), |f| async move {
        use tokio::io::AsyncReadExt;
        let mut f = f?;
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        match f.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(buf.freeze()), Some(f))),
            // The response ends with the error; nothing is read after it.
            Err(e) => Some((Err(e), None)),
        }
    });
    let ctype = if kind == "audio" {
        "audio/ogg"
    } else {
        "video/x-ivf"
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, ctype.to_owned()),
            (
                axum::http::header::CACHE_CONTROL,
                "private, max-age=86400".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}
