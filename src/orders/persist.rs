//! The SQL behind orders: what one transition writes, and what start-up reads back.

use std::collections::HashMap;

use crate::store::db::{Connection, OptionalExtension, params, params_from_iter};

use super::core::evolve;
use super::model::{Action, Event, Order, OrderId};
use super::wire::OrderDoc;
use crate::org::Org;

/// Everything one transition writes, prepared outside the writer thread.
pub struct TransitionRows {
    /// A new order (insert) rather than a change (update).
    pub created: bool,
    pub order: OrderRow,
    pub event: EventRow,
}

pub struct OrderRow {
    pub id: u64,
    pub state: &'static str,
    pub category: String,
    pub cause: Option<String>,
    pub point: Option<(f64, f64)>,
    pub reopened: u16,
    pub late: bool,
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
    pub version: u32,
    pub idem: Option<(String, String)>,
    /// The whole order as JSON, only when published or archived.
    pub doc: Option<String>,
}

pub struct EventRow {
    pub order_id: u64,
    pub seq: u32,
    pub at: u64,
    pub actor: String,
    pub kind: &'static str,
    pub data: String,
}

impl OrderRow {
    pub fn of(org: &Org, o: &Order, doc: Option<String>, idem: Option<(String, u64)>) -> OrderRow {
        OrderRow {
            id: o.id.0,
            state: o.state.as_str(),
            category: o.category.to_string(),
            cause: o.cause.as_deref().map(str::to_string),
            point: o.place.point.map(|p| (p.lat, p.lon)),
            reopened: o.reopened,
            late: o.late,
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
            version: o.version,
            idem: idem.map(|(k, h)| (k, format!("{h:016x}"))),
            doc,
        }
    }
}

/// Who did it, as stored: a node id, or `hub` for the scheduler.
const HUB_ACTOR: &str = "hub";

impl EventRow {
    /// `created`: the whole new order, which a create event carries instead of a detail.
    pub fn of(org: &Org, e: &Event, created: Option<&OrderDoc>) -> EventRow {
        // Plain structs of strings, numbers and enums always serialize.
        let data = match created {
            Some(doc) => serde_json::to_string(doc).expect("order documents serialize"),
            None => serde_json::to_string(&e.detail).expect("event detail serializes"),
        };
        EventRow {
            order_id: e.order.0,
            seq: e.seq,
            at: e.at,
            actor: e
                .actor
                .map_or_else(|| HUB_ACTOR.to_owned(), |a| org.id(a).to_string()),
            kind: e.action.as_str(),
            data,
        }
    }
}

pub fn write_transition(c: &Connection, t: &TransitionRows) -> crate::store::db::Result<()> {
    if t.created {
        insert_order(c, &t.order)?;
    } else {
        update_order(c, &t.order)?;
    }
    write_event(c, &t.event)?;
    Ok(())
}

pub fn insert_order(c: &Connection, o: &OrderRow) -> crate::store::db::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO orders (id, state, category, priority, source, node, node_pre, holder, intake,
                             created_at, updated_at, due_at, closed_at, supervision, score, satisfied,
                             version, idem_key, idem_hash, doc, cause, lat, lon, reopened, late)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                 ?21, ?22, ?23, ?24, ?25)",
    )?;
    st.write(params![
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
        o.version,
        o.idem.as_ref().map(|(k, _)| k.as_str()),
        o.idem.as_ref().map(|(_, h)| h.as_str()),
        o.doc,
        o.cause,
        o.point.map(|p| p.0),
        o.point.map(|p| p.1),
        o.reopened,
        o.late,
    ])?;
    Ok(())
}

/// Only what a transition can change; the document only when there is one.
fn update_order(c: &Connection, o: &OrderRow) -> crate::store::db::Result<()> {
    let mut st = c.prepare_cached(
        "UPDATE orders SET state = ?2, holder = ?3, intake = ?4, updated_at = ?5, due_at = ?6,
                closed_at = ?7, supervision = ?8, score = ?9, satisfied = ?10, version = ?11,
                doc = COALESCE(?12, doc), cause = ?13, reopened = ?14, late = ?15
         WHERE id = ?1",
    )?;
    st.write(params![
        o.id as i64,
        o.state,
        o.holder,
        o.intake,
        o.updated_at as i64,
        o.due_at as i64,
        o.closed_at.map(|v| v as i64),
        o.supervision,
        o.score,
        o.satisfied,
        o.version,
        o.doc,
        o.cause,
        o.reopened,
        o.late,
    ])?;
    Ok(())
}

pub fn write_event(c: &Connection, e: &EventRow) -> crate::store::db::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO order_events (order_id, seq, at, actor, kind, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.write(params![
        e.order_id as i64,
        e.seq,
        e.at as i64,
        e.actor,
        e.kind,
        e.data
    ])?;
    Ok(())
}

pub fn write_read(
    c: &Connection,
    kind: &str,
    reference: u64,
    endpoint: &str,
    at: u64,
) -> crate::store::db::Result<()> {
    c.prepare_cached(
        "INSERT INTO reads (kind, ref, endpoint, at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(kind, ref, endpoint) DO UPDATE SET at = excluded.at",
    )?
    .write(params![kind, reference as i64, endpoint, at as i64])?;
    Ok(())
}

/// A closed (published or archived) order's document; open orders live in the service.
pub fn order_doc(c: &Connection, id: OrderId) -> crate::store::db::Result<Option<OrderDoc>> {
    let doc: Option<Option<String>> = c
        .query_row("SELECT doc FROM orders WHERE id = ?1", [id.0 as i64], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(doc.flatten().and_then(|d| serde_json::from_str(&d).ok()))
}

/// What start-up needs: open orders, the next id, recent idempotency keys.
pub struct Loaded {
    pub open: Vec<Order>,
    pub skipped: Vec<String>,
    pub next_id: u64,
    pub keys: Vec<(Box<str>, OrderId, u64, u64)>,
}

/// One order as stored, rebuilt from its history (after a write of it failed, the service takes
/// it back as it stands); `None` if it was never stored.
pub fn reload(c: &Connection, org: &Org, id: OrderId) -> crate::store::db::Result<Option<Order>> {
    Ok(replay(c, org, Some(id))?.0.pop())
}

/// Rebuilds every open order (or only `only`) by folding its history through `evolve`, and puts
/// back the read receipts its holder gave after receiving it.
fn replay(
    c: &Connection,
    org: &Org,
    only: Option<OrderId>,
) -> crate::store::db::Result<(Vec<Order>, Vec<String>)> {
    let which = only.map(|i| i.0 as i64);
    let mut st = c.prepare(if only.is_some() {
        "SELECT order_id, seq, at, actor, kind, data FROM order_events
         WHERE order_id = ?1 ORDER BY seq"
    } else {
        "SELECT order_id, seq, at, actor, kind, data FROM order_events
         WHERE order_id IN (SELECT id FROM orders WHERE state != 'archived')
         ORDER BY order_id, seq"
    })?;
    let mut rows = st.query(params_from_iter(which))?;
    let mut open: Vec<Order> = Vec::new();
    let mut skipped = Vec::new();
    // When each rebuilt order's holder last changed (a read before that is for an older holder).
    let mut holder_since: Vec<u64> = Vec::new();
    let mut current: Option<u64> = None;
    let mut broken = false;
    while let Some(r) = rows.next()? {
        let id = r.get::<_, i64>(0)? as u64;
        let seq = r.get::<_, i64>(1)? as u32;
        let at = r.get::<_, i64>(2)? as u64;
        let actor: String = r.get(3)?;
        let kind: String = r.get(4)?;
        let data: String = r.get(5)?;
        if current != Some(id) {
            current = Some(id);
            broken = false;
            let first = (kind == "create")
                .then_some(())
                .ok_or_else(|| "history does not start with create".to_string())
                .and_then(|_| serde_json::from_str::<OrderDoc>(&data).map_err(|e| e.to_string()))
                .and_then(|d| d.to_order(org));
            match first {
                Ok(o) => {
                    open.push(o);
                    holder_since.push(at);
                }
                Err(e) => {
                    skipped.push(format!("order {id}: {e}"));
                    broken = true;
                }
            }
            continue;
        }
        if broken {
            continue;
        }
        let parsed = serde_json::from_str(&data)
            .map_err(|e| e.to_string())
            .and_then(|detail| {
                Action::from_kind(&kind)
                    .map(|action| (action, detail))
                    .ok_or_else(|| format!("unknown action {kind}"))
            });
        let (action, detail) = match parsed {
            Ok(x) => x,
            Err(e) => {
                skipped.push(format!("order {id} event {seq}: {e}"));
                open.pop();
                holder_since.pop();
                broken = true;
                continue;
            }
        };
        // `open` ends with the order being rebuilt.
        let o = open.last_mut().expect("an order is being rebuilt");
        let event = Event {
            order: o.id,
            seq,
            at,
            actor: if actor == HUB_ACTOR {
                None
            } else {
                org.lookup(&actor)
            },
            action,
            detail,
        };
        let before = o.holder;
        evolve(org, o, &event);
        if o.holder != before {
            *holder_since.last_mut().expect("kept in step with open") = at;
        }
    }
    let mut st = c.prepare(if only.is_some() {
        "SELECT ref, endpoint, at FROM reads WHERE kind = 'order' AND ref = ?1"
    } else {
        "SELECT ref, endpoint, at FROM reads WHERE kind = 'order'
         AND ref IN (SELECT id FROM orders WHERE state != 'archived')"
    })?;
    let mut reads: HashMap<(u64, String), u64> = HashMap::new();
    for row in st.query_map(params_from_iter(which), |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })? {
        let (id, endpoint, at) = row?;
        reads.insert((id, endpoint), at);
    }
    for (o, since) in open.iter_mut().zip(holder_since) {
        if let Some(&at) = reads.get(&(o.id.0, org.id(o.holder).to_string()))
            && at >= since
        {
            o.read_at = Some(at);
        }
    }
    Ok((open, skipped))
}

pub fn load(c: &Connection, org: &Org, keys_since: u64) -> crate::store::db::Result<Loaded> {
    let (open, skipped) = replay(c, org, None)?;
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
    Ok(Loaded {
        open,
        skipped,
        next_id: next_id as u64,
        keys,
    })
}

/// After the org tree changed: moves every stored row that names a node (orders, call records,
/// sessions and their members, sites, interventions) to its node's new preorder index, in one
/// pass per table through a mapping of every node; a node gone from the tree falls out of every
/// range (-1). Returns how many orders moved.
pub fn reindex_nodes(
    c: &Connection,
    org: &Org,
    fingerprint: &str,
) -> crate::store::db::Result<usize> {
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
    // Rolled back whole on any failure, so the connection goes back to its pool clean.
    c.transaction(|c| {
        // One statement for both engines: BIGINT is SQLite's INTEGER affinity.
        c.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS org_index (node TEXT PRIMARY KEY, pre BIGINT NOT NULL);
             DELETE FROM org_index;",
        )?;
        {
            let mut st = c.prepare("INSERT INTO org_index (node, pre) VALUES (?1, ?2)")?;
            for (i, n) in org.nodes() {
                st.write(params![n.id.as_str(), i.0])?;
            }
        }
        let n = c.execute(
            "UPDATE orders SET node_pre = m.pre FROM org_index m
              WHERE m.node = orders.node AND orders.node_pre != m.pre",
            [],
        )?;
        // Orders at nodes that no longer exist fall out of every range (their old index would name
        // another node now); `load` reports them.
        c.execute(
            "UPDATE orders SET node_pre = -1
              WHERE node_pre != -1 AND NOT EXISTS (SELECT 1 FROM org_index m WHERE m.node = orders.node)",
            [],
        )?;
        for (table, node, pre) in [
            ("calls", "caller", "caller_pre"),
            ("calls", "callee", "callee_pre"),
            ("sessions", "center", "center_pre"),
            ("session_spans", "node", "node_pre"),
            ("sites", "node", "node_pre"),
            ("interventions", "node", "node_pre"),
        ] {
            c.execute(
                &format!(
                    "UPDATE {table} SET {pre} = COALESCE((SELECT m.pre FROM org_index m WHERE m.node = {table}.{node}), -1)"
                ),
                [],
            )?;
        }
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('org_fingerprint', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [fingerprint],
        )?;
        c.execute_batch("DELETE FROM org_index")?;
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_org_tree_moves_every_row_that_names_a_node_in_one_pass() {
        let dir = std::env::temp_dir().join(format!("gridhub-reindex-{}", std::process::id()));
        let path = dir.join("t.db");
        let _ = std::fs::remove_dir_all(&dir);
        crate::store::Store::open(&path, Default::default())
            .unwrap()
            .close();
        let c = Connection::open(&path).unwrap();
        let org = crate::org::fixture();
        let w1 = org.lookup("w1").unwrap();
        // Rows written under an older tree: stale indexes, and a node since removed.
        c.execute_batch(
            "INSERT INTO meta VALUES ('org_fingerprint', 'old');
             INSERT INTO orders (id, state, category, priority, source, node, node_pre, holder, intake,
                                 created_at, updated_at, due_at, supervision, version)
               VALUES (1, 'archived', 'noise', 'routine', 'app', 'w1', 999, 'c', 'c', 1, 1, 1, 0, 1);
             INSERT INTO sites (kind, name, node, node_pre, lat, lon, radius_m, created_at)
               VALUES ('square', 'a', 'w1', 999, 46.8, 130.3, 150, 1),
                      ('square', 'b', 'gone', 5, 46.8, 130.3, 150, 1);",
        )
        .unwrap();
        assert_eq!(reindex_nodes(&c, &org, "new").unwrap(), 1);
        let pre = |sql: &str| -> Vec<i64> {
            let mut st = c.prepare(sql).unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(|x| x.unwrap())
                .collect()
        };
        assert_eq!(pre("SELECT node_pre FROM orders"), [i64::from(w1.0)]);
        assert_eq!(
            pre("SELECT node_pre FROM sites ORDER BY id"),
            [i64::from(w1.0), -1]
        );
        // The same tree again changes nothing.
        assert_eq!(reindex_nodes(&c, &org, "new").unwrap(), 0);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
