//! The outbox in SQL: messages written with the change that caused them, read back on resume,
//! acknowledgements, pruning, and where every terminal's sequence stands at start-up.

use crate::store::db::{Connection, params};

use crate::org::{NodeIdx, Org};

/// One durable message as written.
pub struct Row<'a> {
    pub endpoint: &'a str,
    pub seq: u64,
    pub at: u64,
    pub kind: &'static str,
    pub reference: Option<u64>,
    pub payload: &'a str,
}

pub fn write(c: &Connection, m: &Row<'_>) -> crate::store::db::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO outbox (endpoint, seq, at, kind, ref, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.write(params![
        m.endpoint,
        m.seq as i64,
        m.at as i64,
        m.kind,
        m.reference.map(|r| r as i64),
        m.payload
    ])?;
    Ok(())
}

/// Rows deleted per pruning job, so one job never holds the writer long.
pub const PRUNE_CHUNK: usize = 5_000;

/// Deletes up to `PRUNE_CHUNK` outbox messages that were acknowledged and are older than
/// `before` (Unix ms); returns how many. Unacknowledged messages are never pruned.
pub fn prune(c: &Connection, before: u64) -> crate::store::db::Result<usize> {
    c.prepare_cached(
        "DELETE FROM outbox WHERE id IN (
           SELECT o.id FROM acks a JOIN outbox o ON o.endpoint = a.endpoint AND o.seq <= a.seq
           WHERE o.at < ?1 LIMIT ?2)",
    )?
    .execute(params![before as i64, PRUNE_CHUNK as i64])
}

pub fn write_acks(c: &Connection, acks: &[(String, u64)], at: u64) -> crate::store::db::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO acks (endpoint, seq, at) VALUES (?1, ?2, ?3)
         ON CONFLICT(endpoint) DO UPDATE SET at = excluded.at,
           seq = CASE WHEN excluded.seq > acks.seq THEN excluded.seq ELSE acks.seq END",
    )?;
    for (e, s) in acks {
        st.write(params![e, *s as i64, at as i64])?;
    }
    Ok(())
}

/// Outbox messages of one terminal after `after`, in order, at most `limit`.
pub fn after(
    c: &Connection,
    endpoint: &str,
    after: u64,
    limit: usize,
) -> crate::store::db::Result<Vec<(u64, String)>> {
    let mut st = c.prepare_cached(
        "SELECT seq, payload FROM outbox WHERE endpoint = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = st.query_map(params![endpoint, after as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })?;
    rows.collect()
}

/// Per terminal with any: the last sequence written and the last acknowledged.
pub struct Loaded {
    pub last: Vec<(NodeIdx, u64)>,
    pub acked: Vec<(NodeIdx, u64)>,
}

pub fn load(c: &Connection, org: &Org) -> crate::store::db::Result<Loaded> {
    let per_endpoint = |sql: &str| -> crate::store::db::Result<Vec<(NodeIdx, u64)>> {
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
        // Pruning removes only acknowledged messages, so a terminal's last sequence is the larger
        // of its newest kept message and its acknowledgement: numbers never repeat.
        last: per_endpoint(
            "SELECT endpoint, MAX(seq) FROM (
               SELECT endpoint, MAX(seq) AS seq FROM outbox GROUP BY endpoint
               UNION ALL SELECT endpoint, seq FROM acks) AS t
             GROUP BY endpoint",
        )?,
        acked: per_endpoint("SELECT endpoint, seq FROM acks")?,
    })
}
