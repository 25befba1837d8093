//! The SQL behind orders: what one transition writes, and what start-up reads back.

use rusqlite::{Connection, OptionalExtension, params};

use super::model::{Event, Order, OrderId};
use super::wire::OrderDoc;
use crate::org::{NodeIdx, Org};

/// Everything one transition writes, prepared outside the writer thread.
pub struct TransitionRows {
    pub order: OrderRow,
    pub event: EventRow,
    pub outbox: Vec<OutboxRow>,
}

pub struct OrderRow {
    pub id: u64,
    pub state: &'static str,
    pub category: String,
    pub priority: &'static str,
    pub source: &'static str,
    pub node: String,
    pub node_pre: u32,
    pub holder: String,
    pub intake: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub due_at: u64,
    pub closed_at: Option<u64>,
    pub supervision: u8,
    pub score: Option<u8>,
    pub satisfied: Option<bool>,
    pub idem: Option<(String, String)>,
    pub doc: String,
}

pub struct EventRow {
    pub order_id: u64,
    pub seq: u32,
    pub at: u64,
    pub actor: String,
    pub kind: &'static str,
    pub data: String,
}

pub struct OutboxRow {
    pub endpoint: String,
    pub seq: u64,
    pub at: u64,
    pub kind: &'static str,
    pub reference: Option<u64>,
    pub payload: String,
}

impl OrderRow {
    pub fn of(org: &Org, o: &Order, doc: String, idem: Option<(String, u64)>) -> OrderRow {
        OrderRow {
            id: o.id.0,
            state: o.state.as_str(),
            category: o.category.to_string(),
            priority: o.priority.as_str(),
            source: o.source.as_str(),
            node: org.id(o.place.node).to_string(),
            node_pre: o.place.node.0,
            holder: org.id(o.holder).to_string(),
            intake: org.id(o.intake()).to_string(),
            created_at: o.created_at,
            updated_at: o.updated_at,
            due_at: o.due_at,
            closed_at: o.closed_at,
            supervision: o.supervision,
            score: o.rating.as_ref().map(|r| r.score),
            satisfied: o.rating.as_ref().map(|r| r.satisfied),
            idem: idem.map(|(k, h)| (k, format!("{h:016x}"))),
            doc,
        }
    }
}

impl EventRow {
    pub fn of(org: &Org, e: &Event) -> EventRow {
        EventRow {
            order_id: e.order.0,
            seq: e.seq,
            at: e.at,
            actor: e
                .actor
                .map_or_else(|| "hub".to_owned(), |a| org.id(a).to_string()),
            kind: e.action.as_str(),
            // A plain struct of strings, numbers and enums always serializes.
            data: serde_json::to_string(&e.detail).expect("event detail serializes"),
        }
    }
}

pub fn write_transition(c: &Connection, t: &TransitionRows) -> rusqlite::Result<()> {
    write_order(c, &t.order)?;
    write_event(c, &t.event)?;
    for m in &t.outbox {
        write_outbox(c, m)?;
    }
    Ok(())
}

pub fn write_order(c: &Connection, o: &OrderRow) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO orders (id, state, category, priority, source, node, node_pre, holder, intake,
                             created_at, updated_at, due_at, closed_at, supervision, score, satisfied,
                             idem_key, idem_hash, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         ON CONFLICT(id) DO UPDATE SET
           state = excluded.state, holder = excluded.holder, intake = excluded.intake,
           updated_at = excluded.updated_at, due_at = excluded.due_at, closed_at = excluded.closed_at,
           supervision = excluded.supervision, score = excluded.score,
           satisfied = excluded.satisfied, doc = excluded.doc",
    )?;
    st.execute(params![
        o.id as i64,
        o.state,
        o.category,
        o.priority,
        o.source,
        o.node,
        o.node_pre,
        o.holder,
        o.intake,
        o.created_at as i64,
        o.updated_at as i64,
        o.due_at as i64,
        o.closed_at.map(|v| v as i64),
        o.supervision,
        o.score,
        o.satisfied,
        o.idem.as_ref().map(|(k, _)| k.as_str()),
        o.idem.as_ref().map(|(_, h)| h.as_str()),
        o.doc,
    ])?;
    Ok(())
}

pub fn write_event(c: &Connection, e: &EventRow) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO order_events (order_id, seq, at, actor, kind, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.execute(params![
        e.order_id as i64,
        e.seq,
        e.at as i64,
        e.actor,
        e.kind,
        e.data
    ])?;
    Ok(())
}

pub fn write_outbox(c: &Connection, m: &OutboxRow) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO outbox (endpoint, seq, at, kind, ref, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.execute(params![
        m.endpoint,
        m.seq as i64,
        m.at as i64,
        m.kind,
        m.reference.map(|r| r as i64),
        m.payload
    ])?;
    Ok(())
}

pub fn write_acks(c: &Connection, acks: &[(String, u64)], at: u64) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO acks (endpoint, seq, at) VALUES (?1, ?2, ?3)
         ON CONFLICT(endpoint) DO UPDATE SET seq = max(seq, excluded.seq), at = excluded.at",
    )?;
    for (e, s) in acks {
        st.execute(params![e, *s as i64, at as i64])?;
    }
    Ok(())
}

pub fn write_read(
    c: &Connection,
    kind: &str,
    reference: u64,
    endpoint: &str,
    at: u64,
    doc: Option<(u64, &str)>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO reads (kind, ref, endpoint, at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![kind, reference as i64, endpoint, at as i64])?;
    if let Some((id, doc)) = doc {
        c.prepare_cached("UPDATE orders SET doc = ?2 WHERE id = ?1")?
            .execute(params![id as i64, doc])?;
    }
    Ok(())
}

/// Outbox messages of one terminal after `after`, in order, at most `limit`.
pub fn outbox_after(
    c: &Connection,
    endpoint: &str,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut st = c.prepare_cached(
        "SELECT seq, payload FROM outbox WHERE endpoint = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = st.query_map(params![endpoint, after as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })?;
    rows.collect()
}

pub fn order_doc(c: &Connection, id: OrderId) -> rusqlite::Result<Option<OrderDoc>> {
    let doc: Option<String> = c
        .query_row("SELECT doc FROM orders WHERE id = ?1", [id.0 as i64], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(doc.and_then(|d| serde_json::from_str(&d).ok()))
}

/// What start-up needs: open orders, the next id, recent idempotency keys, outbox positions.
pub struct Loaded {
    pub open: Vec<Order>,
    pub skipped: Vec<String>,
    pub next_id: u64,
    pub keys: Vec<(Box<str>, OrderId, u64, u64)>,
    pub last_seq: Vec<(NodeIdx, u64)>,
    pub acked: Vec<(NodeIdx, u64)>,
}

pub fn load(c: &Connection, org: &Org, keys_since: u64) -> rusqlite::Result<Loaded> {
    let mut open = Vec::new();
    let mut skipped = Vec::new();
    let mut st = c.prepare("SELECT doc FROM orders WHERE state != 'archived'")?;
    for doc in st.query_map([], |r| r.get::<_, String>(0))? {
        let doc = doc?;
        match serde_json::from_str::<OrderDoc>(&doc)
            .map_err(|e| e.to_string())
            .and_then(|d| d.to_order(org))
        {
            Ok(o) => open.push(o),
            Err(e) => skipped.push(e),
        }
    }
    let next_id: i64 = c.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM orders", [], |r| {
        r.get(0)
    })?;
    let mut keys = Vec::new();
    let mut st = c.prepare(
        "SELECT idem_key, id, idem_hash, created_at FROM orders WHERE idem_key IS NOT NULL AND created_at >= ?1",
    )?;
    for row in st.query_map([keys_since as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })? {
        let (k, id, h, at) = row?;
        let hash = u64::from_str_radix(&h, 16).unwrap_or(0);
        keys.push((k.into_boxed_str(), OrderId(id as u64), hash, at as u64));
    }
    let per_endpoint = |sql: &str| -> rusqlite::Result<Vec<(NodeIdx, u64)>> {
        let mut st = c.prepare(sql)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (e, s) = row?;
            if let Some(n) = org.lookup(&e) {
                out.push((n, s as u64));
            }
        }
        Ok(out)
    };
    Ok(Loaded {
        open,
        skipped,
        next_id: next_id as u64,
        keys,
        last_seq: per_endpoint("SELECT endpoint, MAX(seq) FROM outbox GROUP BY endpoint")?,
        acked: per_endpoint("SELECT endpoint, seq FROM acks")?,
    })
}

/// If the org file changed since the orders were written, recompute the subtree index column.
pub fn reindex_nodes(c: &Connection, org: &Org, fingerprint: &str) -> rusqlite::Result<usize> {
    let stored: Option<String> = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'org_fingerprint'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if stored.as_deref() == Some(fingerprint) {
        return Ok(0);
    }
    let nodes: Vec<String> = {
        let mut st = c.prepare("SELECT DISTINCT node FROM orders")?;
        st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    let mut n = 0;
    c.execute_batch("BEGIN")?;
    for node in &nodes {
        // Orders at nodes that no longer exist keep their old index and are reported by `load`.
        if let Some(i) = org.lookup(node) {
            n += c.execute(
                "UPDATE orders SET node_pre = ?1 WHERE node = ?2",
                params![i.0, node],
            )?;
        }
    }
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('org_fingerprint', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [fingerprint],
    )?;
    c.execute_batch("COMMIT")?;
    Ok(n)
}
