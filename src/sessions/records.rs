//! Session records in the store: a row per session (its commander, when it opened and ended,
//! why) and a row per time a member was in it; queried by the REST API.

use std::ops::Range;

use crate::store::db::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::core::{Part, Session};
use crate::org::{NodeIdx, Org};

pub fn write(c: &Connection, org: &Org, s: &Session) -> crate::store::db::Result<()> {
    c.prepare_cached(
        "INSERT INTO sessions (id, title, center, center_pre, commander, created_at, ended_at,
                               end_reason, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET commander = excluded.commander,
             ended_at = excluded.ended_at, end_reason = excluded.end_reason,
             duration_ms = excluded.duration_ms",
    )?
    .execute(params![
        s.id.0 as i64,
        s.title,
        org.id(s.center).as_str(),
        s.center.0,
        org.id(s.commander).as_str(),
        s.created_at as i64,
        s.ended_at.map(|t| t as i64),
        s.end_reason.as_deref(),
        s.ended_at.map(|e| e.saturating_sub(s.created_at) as i64),
    ])?;
    Ok(())
}

pub fn part_str(p: Part) -> &'static str {
    match p {
        Part::Commander => "commander",
        Part::Participant => "participant",
        Part::Observer => "observer",
    }
}

/// A member came in.
pub fn joined(
    c: &Connection,
    session: u64,
    node: (&str, NodeIdx),
    part: Part,
    seat: &str,
    at: u64,
) -> crate::store::db::Result<()> {
    c.prepare_cached(
        "INSERT INTO session_spans (session, node, node_pre, part, seat, joined_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        session as i64,
        node.0,
        node.1.0,
        part_str(part),
        seat,
        at as i64
    ])?;
    Ok(())
}

/// A member present left: its open span ends.
pub fn left(
    c: &Connection,
    session: u64,
    node: &str,
    seat: &str,
    at: u64,
) -> crate::store::db::Result<()> {
    c.prepare_cached(
        "UPDATE session_spans SET left_at = ?4
         WHERE session = ?1 AND node = ?2 AND seat = ?3 AND left_at IS NULL",
    )?
    .execute(params![session as i64, node, seat, at as i64])?;
    Ok(())
}

/// A recording begins; returns its id.
pub fn recording_started(
    c: &Connection,
    session: u64,
    node: &str,
    kind: &str,
    path: &str,
    at: u64,
) -> crate::store::db::Result<u64> {
    c.prepare_cached(
        "INSERT INTO session_recordings (session, node, kind, path, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
    )?
    .query_row(params![session as i64, node, kind, path, at as i64], |r| {
        r.get::<_, i64>(0)
    })
    .map(|id| id as u64)
}

pub fn recording_ended(
    c: &Connection,
    id: u64,
    at: u64,
    packets: u64,
    bytes: u64,
) -> crate::store::db::Result<()> {
    c.prepare_cached(
        "UPDATE session_recordings SET ended_at = ?2, packets = ?3, bytes = ?4 WHERE id = ?1",
    )?
    .execute(params![id as i64, at as i64, packets as i64, bytes as i64])?;
    Ok(())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Recording {
    pub id: u64,
    pub node: String,
    pub kind: String,
    pub started_at: u64,
    /// `null` while still recording.
    pub ended_at: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    pub url: String,
}

/// A session's recordings.
pub fn recordings(c: &Connection, session: u64) -> crate::store::db::Result<Vec<Recording>> {
    let mut st = c.prepare_cached(
        "SELECT id, node, kind, started_at, ended_at, packets, bytes FROM session_recordings
         WHERE session = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([session as i64], |r| {
        let id = r.get::<_, i64>(0)? as u64;
        Ok(Recording {
            id,
            node: r.get(1)?,
            kind: r.get(2)?,
            started_at: r.get::<_, i64>(3)? as u64,
            ended_at: r.get::<_, Option<i64>>(4)?.map(|x| x as u64),
            packets: r.get::<_, i64>(5)? as u64,
            bytes: r.get::<_, i64>(6)? as u64,
            url: format!("/api/v1/recordings/{id}"),
        })
    })?;
    rows.collect()
}

/// A recording's session, kind and file (relative to the data folder).
pub fn recording(
    c: &Connection,
    id: u64,
) -> crate::store::db::Result<Option<(u64, String, String)>> {
    c.prepare_cached("SELECT session, kind, path FROM session_recordings WHERE id = ?1")?
        .query_row([id as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })
        .optional()
}

/// At start-up: sessions the last run left live were ended by the restart. Returns the next
/// session id and how many were ended.
pub fn recover(c: &Connection, now: u64) -> crate::store::db::Result<(u64, usize)> {
    let cut = c.execute(
        "UPDATE sessions SET ended_at = ?1, end_reason = 'the hub restarted',
             duration_ms = CASE WHEN ?1 > created_at THEN ?1 - created_at ELSE 0 END
         WHERE ended_at IS NULL",
        [now as i64],
    )?;
    c.execute(
        "UPDATE session_spans SET left_at = ?1 WHERE left_at IS NULL",
        [now as i64],
    )?;
    // A recording cut by the restart: its file may lack its trailer, its row says when it ended.
    c.execute(
        "UPDATE session_recordings SET ended_at = ?1 WHERE ended_at IS NULL",
        [now as i64],
    )?;
    let max: Option<i64> = c.query_row("SELECT MAX(id) FROM sessions", [], |r| r.get(0))?;
    Ok((max.unwrap_or(0) as u64 + 1, cut))
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    pub id: u64,
    pub title: String,
    pub center: String,
    pub commander: String,
    pub created_at: u64,
    /// `null` while the session is live.
    pub ended_at: Option<u64>,
    pub end_reason: Option<String>,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Span {
    pub node: String,
    pub part: String,
    pub seat: String,
    pub joined_at: u64,
    /// `null` while the member is in.
    pub left_at: Option<u64>,
}

const COLUMNS: &str =
    "id, title, center, commander, created_at, ended_at, end_reason, duration_ms, center_pre";

fn row(r: &crate::store::db::Row<'_>) -> crate::store::db::Result<(Record, u32)> {
    let opt = |i| r.get::<_, Option<i64>>(i).map(|v| v.map(|x| x as u64));
    Ok((
        Record {
            id: r.get::<_, i64>(0)? as u64,
            title: r.get(1)?,
            center: r.get(2)?,
            commander: r.get(3)?,
            created_at: r.get::<_, i64>(4)? as u64,
            ended_at: opt(5)?,
            end_reason: r.get(6)?,
            duration_ms: opt(7)?,
        },
        r.get(8)?,
    ))
}

/// Sessions opened by a center in `range` (a subtree's preorder indexes), or that the terminal
/// `member` was in; newest first, ids below `before`, at most `limit`.
pub fn list(
    c: &Connection,
    range: Range<usize>,
    member: Option<NodeIdx>,
    before: Option<u64>,
    limit: usize,
) -> crate::store::db::Result<Vec<Record>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions
         WHERE id < ?4 AND ((center_pre >= ?1 AND center_pre < ?2)
            OR id IN (SELECT session FROM session_spans WHERE node_pre = ?3))
         ORDER BY id DESC LIMIT ?5"
    ))?;
    let rows = st.query_map(
        params![
            range.start as i64,
            range.end as i64,
            member.map_or(-1, |m| m.0 as i64),
            before.map_or(i64::MAX, |b| b as i64),
            limit as i64
        ],
        row,
    )?;
    rows.map(|r| r.map(|(rec, _)| rec)).collect()
}

/// A session's record, its center's preorder index, and its spans with each member's (for the
/// caller's scope).
pub type Found = (Record, u32, Vec<(Span, u32)>);

/// One session with its spans.
pub fn get(c: &Connection, id: u64) -> crate::store::db::Result<Option<Found>> {
    let Some((rec, pre)) = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"))?
        .query_row([id as i64], row)
        .optional()?
    else {
        return Ok(None);
    };
    let mut st = c.prepare_cached(
        "SELECT node, part, seat, joined_at, left_at, node_pre FROM session_spans
         WHERE session = ?1 ORDER BY joined_at, rowid",
    )?;
    let spans = st
        .query_map([id as i64], |r| {
            Ok((
                Span {
                    node: r.get(0)?,
                    part: r.get(1)?,
                    seat: r.get(2)?,
                    joined_at: r.get::<_, i64>(3)? as u64,
                    left_at: r.get::<_, Option<i64>>(4)?.map(|x| x as u64),
                },
                r.get(5)?,
            ))
        })?
        .collect::<crate::store::db::Result<Vec<_>>>()?;
    Ok(Some((rec, pre, spans)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::core::{Rules, Sessions, Who};

    #[test]
    fn a_session_is_recorded_with_its_spans_and_a_restart_ends_it() {
        let org = std::sync::Arc::new(crate::org::fixture());
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../store/schema_v4.sql"))
            .unwrap();
        let rules = Rules {
            max_sessions: 2,
            max_members: 5,
            grace_ms: 1_000,
            max_title_chars: 40,
        };
        let mut core = Sessions::new(std::sync::Arc::clone(&org), rules, 1);
        let (a, w1) = (org.lookup("a").unwrap(), org.lookup("w1").unwrap());
        let who = |node, conn| Who {
            node,
            seat: crate::auth::Seat::MAIN,
            conn,
            role: crate::auth::Role::default_for(org.tier(node)),
        };
        let (id, mut fx) = core.create(who(a, 1), "会商", &[w1], 10).unwrap();
        fx.extend(core.join(who(w1, 2), id, 20).unwrap());
        fx.extend(core.leave(who(w1, 2), id, 30).unwrap());
        fx.extend(core.join(who(w1, 2), id, 40).unwrap());
        // Carried out as the shell does.
        for e in fx {
            match e {
                crate::sessions::core::Effect::Record(s) => {
                    write(&c, &org, core.get(s).unwrap()).unwrap()
                }
                crate::sessions::core::Effect::Joined {
                    session,
                    node,
                    seat,
                    part,
                    at,
                } => joined(
                    &c,
                    session.0,
                    (org.id(node).as_str(), node),
                    part,
                    seat.as_str(),
                    at,
                )
                .unwrap(),
                crate::sessions::core::Effect::Left {
                    session,
                    node,
                    seat,
                    at,
                } => left(&c, session.0, org.id(node).as_str(), seat.as_str(), at).unwrap(),
                _ => {}
            }
        }
        let (rec, _, spans) = get(&c, id.0).unwrap().unwrap();
        assert_eq!((rec.title.as_str(), rec.ended_at), ("会商", None));
        let times: Vec<(String, u64, Option<u64>)> = spans
            .into_iter()
            .map(|(s, _)| (s.part, s.joined_at, s.left_at))
            .collect();
        assert_eq!(
            times,
            [
                ("commander".into(), 10, None),
                ("participant".into(), 20, Some(30)),
                ("participant".into(), 40, None)
            ]
        );
        // The hub stops without ending it: the next start-up does, and numbers go on.
        assert_eq!(recover(&c, 100).unwrap(), (id.0 + 1, 1));
        let (rec, _, spans) = get(&c, id.0).unwrap().unwrap();
        assert_eq!(
            (rec.ended_at, rec.end_reason.as_deref(), rec.duration_ms),
            (Some(100), Some("the hub restarted"), Some(90))
        );
        assert!(spans.iter().all(|(s, _)| s.left_at.is_some()));
        let range = org.subtree(a);
        assert_eq!(list(&c, range, None, None, 10).unwrap().len(), 1);
        let b = org.lookup("b").unwrap();
        assert!(list(&c, org.subtree(b), None, None, 10).unwrap().is_empty());
        assert_eq!(
            list(&c, org.subtree(w1), Some(w1), None, 10).unwrap().len(),
            1,
            "a member"
        );
    }
}
