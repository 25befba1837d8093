//! web — the operators' console (`/`) and the field page (`/field`), embedded in the binary by
//! `build.rs` from `web/src` (our pages) and `web/vendor` (files derived from pinned npm
//! packages by `web/build.mjs`).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The pages load only what the hub serves: no inline script, no third-party origin. Media may
/// come from the page's own streams (`blob:`, `mediastream:`); `connect-src 'self'` covers the
/// WebSocket in current browsers, the explicit schemes older ones.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// An embedded file's bytes, by its path under `/assets/`.
pub fn embedded(path: &str) -> Option<&'static [u8]> {
    find(path).map(|a| a.3)
}

fn find(path: &str) -> Option<&'static (&'static str, &'static str, &'static str, &'static [u8])> {
    ASSETS.iter().find(|a| a.0 == path)
}

fn serve(path: &str, req: &HeaderMap, page: bool) -> Response {
    let Some(&(_, ctype, etag, bytes)) = find(path) else {
        return crate::http::ApiError::not_found(format!("no web asset {path}")).into_response();
    };
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::ETAG, HeaderValue::from_static(etag));
    // Revalidated on every load (a 304 costs a round trip, not the bytes): a hub upgrade is
    // seen at the next reload, never mixed with cached files of the last version.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if page {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (StatusCode::OK, h, bytes).into_response()
}

/// `/`, `/field` and `/assets/…`, for the API's router to merge.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    use axum::routing::get;
    Router::new()
        .route("/", get(console))
        .route("/field", get(field))
        .route("/assets/{*path}", get(asset))
}

async fn console(req: HeaderMap) -> Response {
    serve("console.html", &req, true)
}

async fn field(req: HeaderMap) -> Response {
    serve("field.html", &req, true)
}

async fn asset(Path(path): Path<String>, req: HeaderMap) -> Response {
    // Pages are served at their own routes, not as assets, so they always carry the CSP.
    if path.ends_with(".html") {
        return crate::http::ApiError::not_found(format!("no web asset {path}")).into_response();
    }
    serve(&path, &req, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_vendor_files_are_embedded() {
        for p in [
            "console.html",
            "field.html",
            "vendor/echarts.min.js",
            "vendor/jiamusi.geo.json",
        ] {
            assert!(find(p).is_some_and(|a| !a.3.is_empty()), "{p} missing");
        }
        for a in ASSETS {
            assert!(
                a.2.starts_with('"') && a.2.len() == 18,
                "{} etag {}",
                a.0,
                a.2
            );
        }
    }
}
