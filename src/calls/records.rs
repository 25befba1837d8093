//! Call records in the store: one row per call attempt, written when it is placed, answered and
//! ended; queried by the REST API, and summarized per node for the console.

use std::ops::Range;

use crate::store::db::{Connection, OptionalExtension, params, params_from_iter};
use serde::Serialize;

use super::core::{Call, Media, Outcome};
use crate::org::{NodeIdx, Org};

pub fn write(c: &Connection, org: &Org, call: &Call) -> crate::store::db::Result<()> {
    let media = match call.media {
        Media::Audio => "audio",
        Media::Video => "video",
    };
    c.prepare_cached(
        "INSERT INTO calls (id, caller, caller_pre, callee, callee_pre, media, created_at,
                            ringing_at, answered_at, ended_at, duration_ms, outcome, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT(id) DO UPDATE SET ringing_at = excluded.ringing_at,
             answered_at = excluded.answered_at, ended_at = excluded.ended_at,
             duration_ms = excluded.duration_ms, outcome = excluded.outcome,
             reason = excluded.reason",
    )?
    .execute(params![
        call.id.0 as i64,
        org.id(call.caller).as_str(),
        call.caller.0,
        org.id(call.callee).as_str(),
        call.callee.0,
        media,
        call.created_at as i64,
        call.ringing_at.map(|t| t as i64),
        call.answered_at.map(|t| t as i64),
        call.ended_at.map(|t| t as i64),
        call.duration_ms().map(|t| t as i64),
        call.outcome.map(Outcome::as_str),
        call.reason.as_deref(),
    ])?;
    Ok(())
}

/// At start-up: calls the last run left open were cut by the restart. Returns the next call id
/// and how many were cut.
pub fn recover(c: &Connection, now: u64) -> crate::store::db::Result<(u64, usize)> {
    let cut = c.execute(
        "UPDATE calls SET outcome = 'interrupted', ended_at = ?1,
             reason = 'the hub restarted during the call',
             duration_ms = CASE WHEN answered_at IS NULL THEN NULL WHEN ?1 > answered_at THEN ?1 - answered_at ELSE 0 END
         WHERE outcome IS NULL",
        [now as i64],
    )?;
    let max: Option<i64> = c.query_row("SELECT MAX(id) FROM calls", [], |r| r.get(0))?;
    Ok((max.unwrap_or(0) as u64 + 1, cut))
}

/// A call record as REST shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    pub id: u64,
    pub caller: String,
    pub callee: String,
    pub media: String,
    pub created_at: u64,
    pub ringing_at: Option<u64>,
    pub answered_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub duration_ms: Option<u64>,
    /// `null` while the call lasts.
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

const COLUMNS: &str = "id, caller, callee, media, created_at, ringing_at, answered_at, ended_at, \
                       duration_ms, outcome, reason, caller_pre, callee_pre";

fn row(r: &crate::store::db::Row<'_>) -> crate::store::db::Result<(Record, u32, u32)> {
    let opt = |i| r.get::<_, Option<i64>>(i).map(|v| v.map(|x| x as u64));
    Ok((
        Record {
            id: r.get::<_, i64>(0)? as u64,
            caller: r.get(1)?,
            callee: r.get(2)?,
            media: r.get(3)?,
            created_at: r.get::<_, i64>(4)? as u64,
            ringing_at: opt(5)?,
            answered_at: opt(6)?,
            ended_at: opt(7)?,
            duration_ms: opt(8)?,
            outcome: r.get(9)?,
            reason: r.get(10)?,
        },
        r.get(11)?,
        r.get(12)?,
    ))
}

/// A record and its parties' preorder indexes (for scope checks).
pub fn get(
    c: &Connection,
    id: u64,
) -> crate::store::db::Result<Option<(Record, NodeIdx, NodeIdx)>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM calls WHERE id = ?"),
        [id as i64],
        row,
    )
    .optional()
    .map(|o| o.map(|(r, a, b)| (r, NodeIdx(a), NodeIdx(b))))
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Calls with a party in this preorder range.
    pub range: Range<usize>,
    /// Calls with this terminal as a party (preorder index).
    pub party: Option<NodeIdx>,
    pub outcome: Option<Outcome>,
    /// Only calls still going on.
    pub live: bool,
    pub media: Option<Media>,
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// Paging: ids below this.
    pub before: Option<u64>,
    pub limit: usize,
}

/// Newest first.
pub fn list(c: &Connection, f: &Filter) -> crate::store::db::Result<Vec<Record>> {
    use crate::store::db::Value;
    let (lo, hi) = (f.range.start as i64, f.range.end as i64);
    let mut sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE ((caller_pre >= ? AND caller_pre < ?) OR (callee_pre >= ? AND callee_pre < ?))"
    );
    let mut args: Vec<Value> = vec![lo.into(), hi.into(), lo.into(), hi.into()];
    if let Some(p) = f.party {
        sql.push_str(" AND (caller_pre = ? OR callee_pre = ?)");
        args.extend([(p.0 as i64).into(), (p.0 as i64).into()]);
    }
    if let Some(o) = f.outcome {
        sql.push_str(" AND outcome = ?");
        args.push(o.as_str().to_owned().into());
    }
    if f.live {
        sql.push_str(" AND outcome IS NULL");
    }
    if let Some(m) = f.media {
        sql.push_str(" AND media = ?");
        args.push(
            match m {
                Media::Audio => "audio",
                Media::Video => "video",
            }
            .to_owned()
            .into(),
        );
    }
    if let Some(t) = f.from {
        sql.push_str(" AND created_at >= ?");
        args.push((t as i64).into());
    }
    if let Some(t) = f.to {
        sql.push_str(" AND created_at < ?");
        args.push((t as i64).into());
    }
    if let Some(b) = f.before {
        sql.push_str(" AND id < ?");
        args.push((b as i64).into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push((f.limit as i64).into());
    let mut st = c.prepare(&sql)?;
    let rows = st.query_map(params_from_iter(args), row)?;
    rows.map(|r| r.map(|(rec, _, _)| rec)).collect()
}

/// Call figures for a group of terminals.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Figures {
    /// Calls the group's terminals placed.
    pub placed: u64,
    /// Calls to the group's terminals that reached them (rang, or were on their way), and how
    /// they went; invites refused at once are in `refused` instead.
    pub received: u64,
    pub answered: u64,
    /// Answered ÷ received, over calls that have ended or been answered (a call superseded by a
    /// crossing one, `glare`, is the same conversation in another call and is not counted).
    pub answered_rate: Option<f64>,
    /// From invite to answer, for answered calls.
    pub mean_answer_ms: Option<u64>,
    pub mean_duration_ms: Option<u64>,
    pub missed: u64,
    pub rejected: u64,
    /// Ended because a party's connection dropped, or the hub stopped.
    pub dropped: u64,
    /// Invites to the group's terminals refused at once: busy, off line, out of scope.
    pub refused: u64,
    pub live: u64,
    #[serde(skip)]
    decided: u64,
    #[serde(skip)]
    answer_ms: u64,
    #[serde(skip)]
    duration_ms: u64,
    #[serde(skip)]
    durations: u64,
}

impl Figures {
    fn receive(&mut self, outcome: Option<&str>, answer_ms: Option<u64>, duration: Option<u64>) {
        if matches!(outcome, Some("busy" | "offline" | "out_of_scope")) {
            self.refused += 1;
            return;
        }
        self.received += 1;
        if let Some(ms) = answer_ms {
            self.answered += 1;
            self.answer_ms += ms;
        }
        if let Some(d) = duration {
            self.durations += 1;
            self.duration_ms += d;
        }
        match outcome {
            None => self.live += 1,
            Some("no_answer") => self.missed += 1,
            Some("rejected") => self.rejected += 1,
            Some("dropped") | Some("interrupted") => self.dropped += 1,
            _ => {}
        }
        // A call still ringing has not been decided yet; an answered one has.
        if (outcome.is_some() && outcome != Some("glare")) || answer_ms.is_some() {
            self.decided += 1;
        }
    }

    fn finish(&mut self) {
        if self.decided > 0 {
            let rate = self.answered as f64 / self.decided as f64;
            self.answered_rate = Some((rate * 10_000.0).round() / 10_000.0);
        }
        self.mean_answer_ms = self.answer_ms.checked_div(self.answered);
        self.mean_duration_ms = self.duration_ms.checked_div(self.durations);
    }
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub node: String,
    pub total: Figures,
    /// The same figures for each child node's subtree.
    pub children: Vec<(String, Figures)>,
}

/// Figures for `node`'s subtree and for each child's, over calls placed in `[from, to)`.
pub fn stats(
    c: &Connection,
    org: &Org,
    node: NodeIdx,
    from: u64,
    to: u64,
) -> crate::store::db::Result<Stats> {
    let r = org.subtree(node);
    let children = org.children(node);
    let mut total = Figures::default();
    let mut per_child: Vec<Figures> = children.iter().map(|_| Figures::default()).collect();
    let child_of = |i: u32| {
        let c = org.child_toward(node, NodeIdx(i))?;
        children.binary_search(&c).ok()
    };
    let mut st = c.prepare(
        "SELECT caller_pre, callee_pre, outcome, answered_at - created_at, duration_ms
         FROM calls
         WHERE ((caller_pre >= ?1 AND caller_pre < ?2) OR (callee_pre >= ?1 AND callee_pre < ?2))
           AND created_at >= ?3 AND created_at < ?4",
    )?;
    let mut rows = st.query(params![
        r.start as i64,
        r.end as i64,
        from as i64,
        to.min(i64::MAX as u64) as i64
    ])?;
    let inside = |i: u32| (i as usize) >= r.start && (i as usize) < r.end;
    while let Some(row) = rows.next()? {
        let (caller, callee): (u32, u32) = (row.get(0)?, row.get(1)?);
        let outcome: Option<String> = row.get(2)?;
        let answer: Option<i64> = row.get(3)?;
        let duration: Option<i64> = row.get(4)?;
        let answer = answer.map(|x| x.max(0) as u64);
        let duration = duration.map(|x| x.max(0) as u64);
        if inside(caller) {
            total.placed += 1;
            if let Some(k) = child_of(caller) {
                per_child[k].placed += 1;
            }
        }
        if inside(callee) {
            total.receive(outcome.as_deref(), answer, duration);
            if let Some(k) = child_of(callee) {
                per_child[k].receive(outcome.as_deref(), answer, duration);
            }
        }
    }
    total.finish();
    for f in &mut per_child {
        f.finish();
    }
    Ok(Stats {
        node: org.id(node).to_string(),
        total,
        children: children
            .iter()
            .map(|&c| org.id(c).to_string())
            .zip(per_child)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::core::CallId;

    fn call(org: &Org, id: u64, from: &str, to: &str, created: u64) -> Call {
        Call::new(
            CallId(id),
            org.lookup(from).unwrap(),
            org.lookup(to).unwrap(),
            Media::Video,
            created,
        )
    }

    #[test]
    fn records_are_written_updated_listed_and_summarized() {
        let org = crate::org::fixture();
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../store/schema_v2.sql"))
            .unwrap();
        // a → w1 answered after 2 s, 60 s long; a → w1 missed; c → v rejected; a → w1 live.
        let mut x = call(&org, 1, "a", "w1", 1_000);
        write(&c, &org, &x).unwrap();
        x.answered_at = Some(3_000);
        x.ended_at = Some(63_000);
        x.outcome = Some(Outcome::Completed);
        write(&c, &org, &x).unwrap();
        let mut y = call(&org, 2, "a", "w1", 100_000);
        y.ended_at = Some(130_000);
        y.outcome = Some(Outcome::NoAnswer);
        write(&c, &org, &y).unwrap();
        let mut z = call(&org, 3, "c", "v", 200_000);
        z.ended_at = Some(201_000);
        z.outcome = Some(Outcome::Rejected);
        write(&c, &org, &z).unwrap();
        write(&c, &org, &call(&org, 4, "a", "w1", 300_000)).unwrap();

        let (rec, _, _) = get(&c, 1).unwrap().unwrap();
        assert_eq!(
            (rec.duration_ms, rec.outcome.as_deref()),
            (Some(60_000), Some("completed"))
        );
        let all = Filter {
            range: org.subtree(org.root()),
            limit: 10,
            ..Filter::default()
        };
        let ids: Vec<u64> = list(&c, &all).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [4, 3, 2, 1], "newest first");
        let missed = Filter {
            outcome: Some(Outcome::NoAnswer),
            ..all.clone()
        };
        assert_eq!(list(&c, &missed).unwrap()[0].id, 2);
        let live = Filter {
            live: true,
            ..all.clone()
        };
        assert_eq!(list(&c, &live).unwrap().len(), 1);
        let page = Filter {
            before: Some(3),
            limit: 1,
            ..all.clone()
        };
        assert_eq!(list(&c, &page).unwrap()[0].id, 2);

        let a = org.lookup("a").unwrap();
        let s = stats(&c, &org, a, 0, u64::MAX).unwrap();
        // Inside a's subtree w1 received calls 1, 2, 4 (4 still ringing) and v call 3: one
        // answered of three decided.
        assert_eq!(s.total.received, 4);
        assert_eq!(s.total.placed, 3, "a placed 1, 2 and 4; c is outside");
        assert_eq!(s.total.answered_rate, Some(0.3333));
        assert_eq!(s.total.rejected, 1);
        assert_eq!(s.total.mean_answer_ms, Some(2_000));
        assert_eq!(s.total.mean_duration_ms, Some(60_000));
        assert_eq!((s.total.missed, s.total.live), (1, 1));
        let (_, w1_branch) = s
            .children
            .iter()
            .find(|(_, f)| f.received > 0)
            .expect("a child holds w1");
        assert_eq!(w1_branch.received, 4);
        let cut = recover(&c, 400_000).unwrap();
        assert_eq!(cut, (5, 1));
        assert_eq!(
            get(&c, 4).unwrap().unwrap().0.outcome.as_deref(),
            Some("interrupted")
        );
    }
}
