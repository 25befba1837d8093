//! Moving a hub's data from its SQLite file to PostgreSQL (`gridhub store copy`), for a hub that
//! grows from one node to several: every table, row for row, in one PostgreSQL transaction, and
//! the identity counters set past the copied ids. The hub must be stopped while it runs (the
//! copy reads a still file and takes the PostgreSQL writer's lock, so a node serving on it
//! meanwhile is refused).

use std::path::Path;
use std::sync::Arc;

use super::db::{Connection, Value, params_from_iter};
use super::{Store, StoreError, Target};

/// Every table of the schema, parents before children, and whether its `id` (or `rowid`) is an
/// identity that new rows draw from.
const TABLES: &[(&str, Option<&str>)] = &[
    ("meta", None),
    ("orders", None),
    ("order_events", Some("id")),
    ("outbox", Some("id")),
    ("acks", None),
    ("reads", None),
    ("notices", None),
    ("notice_recipients", None),
    ("campaigns", None),
    ("campaign_records", None),
    ("campaign_done", None),
    ("calls", None),
    ("attachments", Some("id")),
    ("sessions", None),
    ("session_spans", Some("rowid")),
    ("session_recordings", Some("id")),
    ("sites", Some("id")),
    ("interventions", Some("id")),
];

/// Rows per round of reading and writing.
const CHUNK: i64 = 5_000;

/// How many rows went into each table.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies the SQLite database at `from` into the empty PostgreSQL database at `to`. Blocks: for
/// the command line, not for an async task.
pub fn sqlite_to_postgres(from: &Path, to: &str) -> Result<Copied, StoreError> {
    if !from.exists() {
        return Err(StoreError::Db(format!("{}: no such file", from.display())));
    }
    // Opening migrates both to this build's schema, so the columns agree; the target's writer
    // holds its lock while the copy writes on a connection of its own.
    Store::open(from, Arc::default())?.close();
    let target = Store::open_target(Target::Postgres(to.into()), Arc::default())?;
    let src = Connection::open(from)?;
    let dst = super::postgres::connect(to)?;
    let copied = copy_all(&src, &dst).map_err(|e| super::postgres::classify(&dst, e));
    target.close();
    copied
}

fn copy_all(src: &Connection, dst: &Connection) -> super::db::Result<Copied> {
    // A table the schema gained but this list lacks would be left behind without a word.
    let tables: Vec<String> = src
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<super::db::Result<_>>()?;
    if let Some(t) = tables.iter().find(|t| !TABLES.iter().any(|(n, _)| n == t)) {
        return Err(super::db::Error::Other(format!(
            "table {t} is not among those `store copy` knows: this build cannot copy it"
        )));
    }
    dst.transaction(|dst| {
        let mut out = Vec::new();
        for &(table, _) in TABLES {
            let there: i64 = dst.query_row(
                &format!("SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT 1) t"),
                [],
                |r| r.get(0),
            )?;
            if there > 0 {
                return Err(super::db::Error::Other(format!(
                    "the target's {table} already holds rows: copy into a new, empty database"
                )));
            }
        }
        for &(table, identity) in TABLES {
            out.push((table, copy_table(src, dst, table, identity)?));
            if let Some(col) = identity {
                // Rows copied with their ids: new rows must draw ids past them.
                dst.query_row(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{col}'),
                                       COALESCE((SELECT MAX({col}) FROM {table}), 0) + 1, false)"
                    ),
                    [],
                    |_| Ok(()),
                )?;
            }
        }
        Ok(out)
    })
}

/// The table's rows in order of SQLite's rowid, a chunk at a time (all at once for a table
/// without one: those are keyed and small next to the outbox and the events).
fn copy_table(
    src: &Connection,
    dst: &Connection,
    table: &str,
    identity: Option<&str>,
) -> super::db::Result<u64> {
    let mut names: Vec<String> = src
        .prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<super::db::Result<_>>()?;
    // SQLite's implicit rowid is a real column on PostgreSQL.
    if identity == Some("rowid") {
        names.insert(0, "rowid".into());
    }
    let list = names.join(", ");
    let paged: bool = src.query_row(
        "SELECT sql NOT LIKE '%WITHOUT ROWID%' FROM sqlite_master WHERE name = ?1",
        [table],
        |r| r.get(0),
    )?;
    let select = if paged {
        format!("SELECT {list}, rowid FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT {CHUNK}")
    } else {
        format!("SELECT {list} FROM {table}")
    };
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let insert = format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", "));
    let mut after = i64::MIN;
    let mut total = 0u64;
    loop {
        let mut st = src.prepare(&select)?;
        let read = |r: &super::db::Row<'_>| {
            (0..names.len() + usize::from(paged))
                .map(|i| r.get::<_, Value>(i))
                .collect::<super::db::Result<Vec<Value>>>()
        };
        let rows: Vec<Vec<Value>> = if paged {
            st.query_map([after], read)?
                .collect::<super::db::Result<_>>()?
        } else {
            st.query_map([], read)?.collect::<super::db::Result<_>>()?
        };
        let n = rows.len();
        let next = match rows.last().and_then(|r| r.get(names.len())) {
            Some(Value::Int(i)) if paged && n as i64 == CHUNK => Some(*i),
            _ => None,
        };
        // Pipelined: a chunk goes out as one stream, not a round trip per row.
        let mut ins = dst.prepare_cached(&insert)?;
        for mut row in rows {
            row.truncate(names.len());
            ins.write(params_from_iter(row))?;
        }
        total += n as u64;
        match next {
            Some(i) => after = i,
            None => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::PgServer;

    #[test]
    fn a_sqlite_hub_moves_to_postgres_whole_and_keeps_drawing_new_ids() {
        let dir = std::env::temp_dir().join(format!("gridhub-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("hub.db");
        Store::open(&file, Arc::default()).unwrap().close();
        let c = Connection::open(&file).unwrap();
        c.execute_batch("BEGIN").unwrap();
        // More outbox rows than a chunk, so the copy pages; a table without rowid; an implicit
        // rowid that becomes a column; text, integers, NULLs, reals and bytes.
        for i in 0..(CHUNK + 7) {
            c.execute(
                "INSERT INTO outbox (endpoint, seq, at, kind, ref, payload) VALUES (?1, ?2, 1, 'notice', NULL, '{\"t\":\"通知\"}')",
                crate::store::db::params![format!("w{}", i % 100), i],
            )
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO acks VALUES ('w1', 3, 9);
             INSERT INTO session_spans VALUES (1, '230805', 12, 'member', 'main', 5, NULL);
             INSERT INTO sites (kind, name, node, node_pre, lat, lon, radius_m, ref, created_at)
               VALUES ('square', '中心广场', '230805', 12, 46.8, 130.3, 80.5, 'r1', 7);
             INSERT INTO attachments (order_id, by, content_type, bytes, sha256, at, data)
               VALUES (1, 'x', 'image/jpeg', 3, 'abc', 1, x'FFD8FF');
             COMMIT;",
        )
        .unwrap();
        drop(c);

        let pg = PgServer::start("copy");
        let url = pg.create_database("moved");
        let copied = sqlite_to_postgres(&file, &url).unwrap();
        let n = |t: &str| copied.iter().find(|(x, _)| *x == t).unwrap().1;
        assert_eq!(
            (
                n("outbox"),
                n("acks"),
                n("session_spans"),
                n("sites"),
                n("orders")
            ),
            ((CHUNK + 7) as u64, 1, 1, 1, 0)
        );

        let store = Store::open_target(Target::Postgres(url.clone()), Arc::default()).unwrap();
        let (site, photo, next_outbox, seq_sum): (String, Vec<u8>, i64, i64) = store
            .read_sync(|c| {
                Ok((
                    c.query_row("SELECT name FROM sites WHERE ref = 'r1'", [], |r| r.get(0))?,
                    c.query_row("SELECT data FROM attachments", [], |r| r.get(0))?,
                    c.query_row(
                        "INSERT INTO outbox (endpoint, seq, at, kind, payload) VALUES ('w1', 999999, 1, 'k', '{}') RETURNING id",
                        [],
                        |r| r.get(0),
                    )?,
                    c.query_row("SELECT SUM(seq) FROM outbox WHERE seq < 999999", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!(site, "中心广场");
        assert_eq!(photo, [0xFF, 0xD8, 0xFF]);
        assert_eq!(next_outbox, CHUNK + 8, "new ids follow the copied ones");
        assert_eq!(seq_sum, (0..CHUNK + 7).sum::<i64>());
        store.close();

        let again = sqlite_to_postgres(&file, &url).unwrap_err();
        assert!(again.to_string().contains("already holds rows"), "{again}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
