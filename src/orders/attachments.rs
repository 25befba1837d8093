//! Photos attached to orders: what a field worker shows with a result (the cleared drain, the
//! repaired lamp). What is accepted, checked from the bytes themselves, and the SQL.
//!
//! A photo belongs to an order, is stored with the orders in the same database (written by the
//! store's one writer, so it is durable when acknowledged) and is read by whoever may see the
//! order. The same bytes attached twice to one order are one photo: a retried upload returns
//! the first.

use crate::store::db::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::OrderId;

/// The image kinds accepted, by their first bytes.
const KINDS: [(&str, &[u8]); 3] = [
    ("image/jpeg", &[0xFF, 0xD8, 0xFF]),
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/webp", b"RIFF"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the body is empty: send the photo's bytes")]
    Empty,
    #[error("the photo is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error(
        "Content-Type {0:?} is not accepted: send the photo as image/jpeg, image/png or image/webp"
    )]
    Type(String),
    #[error("the bytes are not a {0} image: the Content-Type and the content disagree")]
    Mismatch(&'static str),
    #[error("order {order} already has {max} photos, the most allowed")]
    Full { order: OrderId, max: usize },
}

impl AttachError {
    pub fn code(&self) -> &'static str {
        match self {
            AttachError::Empty | AttachError::Mismatch(_) => "invalid_data",
            AttachError::TooLarge { .. } => "message_too_large",
            AttachError::Type(_) => "unsupported_media_type",
            AttachError::Full { .. } => "too_many_attachments",
        }
    }
}

/// The accepted type a `Content-Type` names, normalized, and the bytes its content starts with.
fn kind_of(content_type: &str) -> Result<(&'static str, &'static [u8]), AttachError> {
    let declared = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    KINDS
        .iter()
        .find(|(k, _)| *k == declared)
        .copied()
        .ok_or_else(|| AttachError::Type(content_type.to_owned()))
}

/// Whether a `Content-Type` is one accepted (checked before the body is read).
pub fn kind(content_type: &str) -> Result<&'static str, AttachError> {
    kind_of(content_type).map(|(k, _)| k)
}

/// Checks a photo: its declared type is one accepted, its bytes are of that type, its size is
/// within `max`. Returns the type, normalized.
pub fn check(content_type: &str, data: &[u8], max: usize) -> Result<&'static str, AttachError> {
    let (kind, magic) = kind_of(content_type)?;
    if data.is_empty() {
        return Err(AttachError::Empty);
    }
    if data.len() > max {
        return Err(AttachError::TooLarge {
            size: data.len(),
            max,
        });
    }
    let webp_ok = kind != "image/webp" || data.get(8..12) == Some(b"WEBP");
    if !data.starts_with(magic) || !webp_ok {
        return Err(AttachError::Mismatch(kind));
    }
    Ok(kind)
}

/// A stored photo, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    pub id: u64,
    pub order: OrderId,
    /// The terminal that attached it.
    pub by: String,
    pub content_type: String,
    pub bytes: u64,
    pub sha256: String,
    /// Unix ms.
    pub at: u64,
}

/// The hex SHA-256 of a photo's bytes: its identity within an order.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A checked photo about to be stored (its hash made off the store's writer).
pub struct Photo<'a> {
    pub order: OrderId,
    pub by: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub sha256: &'a str,
    pub at: u64,
}

const COLUMNS: &str = "id, order_id, by, content_type, bytes, sha256, at";

fn meta(r: &crate::store::db::Row<'_>) -> crate::store::db::Result<Meta> {
    Ok(Meta {
        id: r.get::<_, i64>(0)? as u64,
        order: OrderId(r.get::<_, i64>(1)? as u64),
        by: r.get(2)?,
        content_type: r.get(3)?,
        bytes: r.get::<_, i64>(4)? as u64,
        sha256: r.get(5)?,
        at: r.get::<_, i64>(6)? as u64,
    })
}

/// Stores a checked photo. `Ok(Ok((meta, true)))` when new; `(meta, false)` when the order
/// already had these bytes.
pub fn insert(
    c: &Connection,
    p: &Photo<'_>,
    max_count: usize,
) -> crate::store::db::Result<Result<(Meta, bool), AttachError>> {
    let Photo {
        order,
        by,
        content_type,
        data,
        sha256: sha,
        at,
    } = *p;
    let existing = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM attachments WHERE order_id = ?1 AND sha256 = ?2"
        ))?
        .query_row(params![order.0 as i64, sha], meta)
        .optional()?;
    if let Some(m) = existing {
        return Ok(Ok((m, false)));
    }
    let count: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM attachments WHERE order_id = ?1")?
        .query_row(params![order.0 as i64], |r| r.get(0))?;
    if count as usize >= max_count {
        return Ok(Err(AttachError::Full {
            order,
            max: max_count,
        }));
    }
    let id = c
        .prepare_cached(
            "INSERT INTO attachments (order_id, by, content_type, bytes, sha256, at, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )?
        .query_row(
            params![
                order.0 as i64,
                by,
                content_type,
                data.len() as i64,
                sha,
                at as i64,
                data
            ],
            |r| r.get::<_, i64>(0),
        )?;
    Ok(Ok((
        Meta {
            id: id as u64,
            order,
            by: by.to_owned(),
            content_type: content_type.to_owned(),
            bytes: data.len() as u64,
            sha256: sha.to_owned(),
            at,
        },
        true,
    )))
}

/// The photos of an order, oldest first.
pub fn list(c: &Connection, order: OrderId) -> crate::store::db::Result<Vec<Meta>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM attachments WHERE order_id = ?1 ORDER BY id"
    ))?;
    let rows = st.query_map(params![order.0 as i64], meta)?;
    rows.collect()
}

/// A photo and its bytes.
pub fn get(c: &Connection, id: u64) -> crate::store::db::Result<Option<(Meta, Vec<u8>)>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS}, data FROM attachments WHERE id = ?1"
    ))?
    .query_row(params![id as i64], |r| {
        Ok((meta(r)?, r.get::<_, Vec<u8>>(7)?))
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn photos_are_checked_by_their_bytes() {
        assert_eq!(check("image/png", PNG, 100), Ok("image/png"));
        assert_eq!(check("IMAGE/PNG; q=1", PNG, 100), Ok("image/png"));
        assert_eq!(
            check("image/jpeg", PNG, 100),
            Err(AttachError::Mismatch("image/jpeg"))
        );
        assert_eq!(check("image/png", b"", 100), Err(AttachError::Empty));
        assert_eq!(
            check("image/png", PNG, 8),
            Err(AttachError::TooLarge { size: 16, max: 8 })
        );
        assert_eq!(
            check("text/html", PNG, 100).unwrap_err().code(),
            "unsupported_media_type"
        );
        assert_eq!(
            check("image/webp", b"RIFF\0\0\0\0WAVE", 100),
            Err(AttachError::Mismatch("image/webp"))
        );
        assert_eq!(
            check("image/webp", b"RIFF\0\0\0\0WEBPVP8 ", 100),
            Ok("image/webp")
        );
        assert_eq!(
            check("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0], 100),
            Ok("image/jpeg")
        );
    }

    #[test]
    fn the_same_bytes_are_one_photo_and_an_order_holds_a_bounded_number() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../store/schema_v3.sql"))
            .unwrap();
        let o = OrderId(7);
        let put = |data: &[u8], at| {
            let sha = sha256(data);
            let p = Photo {
                order: o,
                by: "w1",
                content_type: "image/png",
                data,
                sha256: &sha,
                at,
            };
            insert(&c, &p, 2).unwrap()
        };
        let (a, new) = put(PNG, 1).unwrap();
        assert!(new);
        let (again, new) = put(PNG, 2).unwrap();
        assert_eq!((again.id, new), (a.id, false), "a retried upload");
        let other = [PNG, b"x"].concat();
        put(&other, 3).unwrap();
        let third = [PNG, b"y"].concat();
        assert_eq!(put(&third, 4), Err(AttachError::Full { order: o, max: 2 }));
        assert_eq!(list(&c, o).unwrap().len(), 2);
        let (m, bytes) = get(&c, a.id).unwrap().unwrap();
        assert_eq!((m, bytes.as_slice()), (a, PNG));
        assert!(get(&c, 99).unwrap().is_none());
        assert!(list(&c, OrderId(8)).unwrap().is_empty());
    }
}
