//! The analysis shell's SQL: the facts of stored orders, the site registry, interventions, and
//! the import of a generated year.

use crate::store::db::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::core::{Fact, Names, Site, Window};
use super::synth::Year;
use crate::orders::model::{
    Order, OrderId, Outcome, Place, Priority, Rating, Reporter, Source, State,
};
use crate::orders::persist::{EventRow, OrderRow, TransitionRows, write_transition};
use crate::orders::wire::OrderDoc;
use crate::org::{GeoPoint, NodeIdx, Org};

/// What to read: created inside `window`, placed in the preorder range, of one category or all.
pub struct FactQuery<'a> {
    pub window: Window,
    pub range: std::ops::Range<usize>,
    pub category: Option<&'a str>,
}

/// The facts of the orders asked for, categories and causes interned into `names`.
pub fn facts(
    c: &Connection,
    q: &FactQuery,
    categories: &mut Names,
    causes: &mut Names,
) -> crate::store::db::Result<Vec<Fact>> {
    let mut sql = String::from(
        "SELECT id, created_at, category, cause, node_pre, lat, lon, state, late, satisfied, reopened
         FROM orders WHERE created_at >= ?1 AND created_at < ?2 AND node_pre >= ?3 AND node_pre < ?4
                       AND source != 'analysis'",
    );
    if q.category.is_some() {
        sql.push_str(" AND category = ?5");
    }
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = match q.category {
        Some(cat) => st.query(params![
            q.window.from as i64,
            q.window.to as i64,
            q.range.start as i64,
            q.range.end as i64,
            cat
        ])?,
        None => st.query(params![
            q.window.from as i64,
            q.window.to as i64,
            q.range.start as i64,
            q.range.end as i64
        ])?,
    };
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let lat: Option<f64> = r.get(5)?;
        let lon: Option<f64> = r.get(6)?;
        let cause: Option<String> = r.get(3)?;
        out.push(Fact {
            id: r.get::<_, i64>(0)? as u64,
            created_at: r.get::<_, i64>(1)? as u64,
            category: categories.intern(r.get_ref(2)?.as_str()?),
            cause: cause.map(|c| causes.intern(&c)),
            node: NodeIdx(r.get::<_, i64>(4)? as u32),
            point: lat.zip(lon).map(|(lat, lon)| GeoPoint { lat, lon }),
            closed: r.get_ref(7)?.as_str()? == State::Archived.as_str(),
            on_time: r.get::<_, i64>(8)? == 0,
            satisfied: r.get::<_, Option<bool>>(9)?,
            reopened: r.get::<_, i64>(10)? > 0,
        });
    }
    Ok(out)
}

/// When the first stored order came in: no history goes back further.
pub fn data_from(c: &Connection) -> crate::store::db::Result<Option<u64>> {
    c.query_row("SELECT MIN(created_at) FROM orders", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|v| v.map(|v| v as u64))
}

/// A site as the REST routes show it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SiteRow {
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub node: String,
    pub lat: f64,
    pub lon: f64,
    pub radius_m: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub created_at: u64,
}

impl SiteRow {
    pub fn site(&self, org: &Org) -> Option<Site> {
        Some(Site {
            id: self.id,
            kind: self.kind.clone(),
            name: self.name.clone(),
            node: org.lookup(&self.node)?,
            point: GeoPoint {
                lat: self.lat,
                lon: self.lon,
            },
            radius_m: self.radius_m,
        })
    }
}

/// The registry's sites in the preorder range, of one kind or all, by id.
pub fn sites(
    c: &Connection,
    range: std::ops::Range<usize>,
    kind: Option<&str>,
) -> crate::store::db::Result<Vec<SiteRow>> {
    let mut st = c.prepare_cached(
        "SELECT id, kind, name, node, lat, lon, radius_m, ref, created_at FROM sites
         WHERE node_pre >= ?1 AND node_pre < ?2 AND (CAST(?3 AS TEXT) IS NULL OR kind = ?3) ORDER BY id",
    )?;
    let rows = st.query_map(
        params![range.start as i64, range.end as i64, kind],
        site_row,
    )?;
    rows.collect()
}

fn site_row(r: &crate::store::db::Row) -> crate::store::db::Result<SiteRow> {
    Ok(SiteRow {
        id: r.get::<_, i64>(0)? as u64,
        kind: r.get(1)?,
        name: r.get(2)?,
        node: r.get(3)?,
        lat: r.get(4)?,
        lon: r.get(5)?,
        radius_m: r.get(6)?,
        r#ref: r.get(7)?,
        created_at: r.get::<_, i64>(8)? as u64,
    })
}

pub fn site(c: &Connection, id: u64) -> crate::store::db::Result<Option<SiteRow>> {
    c.query_row(
        "SELECT id, kind, name, node, lat, lon, radius_m, ref, created_at FROM sites WHERE id = ?1",
        [id as i64],
        site_row,
    )
    .optional()
}

/// A site to add, checked.
pub struct NewSite {
    pub kind: String,
    pub name: String,
    pub node: NodeIdx,
    pub point: GeoPoint,
    pub radius_m: f64,
    pub r#ref: Option<String>,
}

/// Adds sites in one transaction; a site whose `ref` is already stored is left as it is. Returns
/// each site's id and whether it is new.
pub fn add_sites(
    c: &Connection,
    org: &Org,
    sites: &[NewSite],
    at: u64,
) -> crate::store::db::Result<Vec<(u64, bool)>> {
    let mut out = Vec::with_capacity(sites.len());
    for s in sites {
        if let Some(r) = &s.r#ref
            && let Some(id) = c
                .query_row("SELECT id FROM sites WHERE ref = ?1", [r], |x| {
                    x.get::<_, i64>(0)
                })
                .optional()?
        {
            out.push((id as u64, false));
            continue;
        }
        let id = c.prepare_cached(
            "INSERT INTO sites (kind, name, node, node_pre, lat, lon, radius_m, ref, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        )?
        .query_row(params![
            s.kind,
            s.name,
            org.id(s.node).as_str(),
            s.node.0,
            s.point.lat,
            s.point.lon,
            s.radius_m,
            s.r#ref,
            at as i64
        ], |r| r.get::<_, i64>(0))?;
        out.push((id as u64, true));
    }
    Ok(out)
}

/// An intervention as stored and shown, with its task's state when it has one.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InterventionRow {
    pub id: u64,
    pub title: String,
    pub category: String,
    pub node: String,
    pub sites: Vec<u64>,
    /// When it took effect: as recorded, or when its task's loop closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_state: Option<String>,
    pub evidence: Vec<u64>,
    pub created_by: String,
    pub created_at: u64,
}

pub struct NewIntervention<'a> {
    pub title: &'a str,
    pub category: &'a str,
    pub node: NodeIdx,
    pub sites: &'a [u64],
    pub at: Option<u64>,
    pub order: Option<u64>,
    pub evidence: &'a [u64],
    pub created_by: &'a str,
    pub created_at: u64,
}

pub fn add_intervention(
    c: &Connection,
    org: &Org,
    i: &NewIntervention,
) -> crate::store::db::Result<u64> {
    let json = |v: &[u64]| serde_json::to_string(v).expect("numbers serialize");
    c.prepare_cached(
        "INSERT INTO interventions (title, category, node, node_pre, sites, at, order_id, evidence,
                                    created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
    )?
    .query_row(
        params![
            i.title,
            i.category,
            org.id(i.node).as_str(),
            i.node.0,
            json(i.sites),
            i.at.map(|v| v as i64),
            i.order.map(|v| v as i64),
            json(i.evidence),
            i.created_by,
            i.created_at as i64
        ],
        |r| r.get::<_, i64>(0),
    )
    .map(|id| id as u64)
}

const INTERVENTION: &str =
    "SELECT i.id, i.title, i.category, i.node, i.sites, COALESCE(i.at, o.closed_at),
        i.order_id, o.state, i.evidence, i.created_by, i.created_at
   FROM interventions i LEFT JOIN orders o ON o.id = i.order_id";

fn intervention_row(r: &crate::store::db::Row) -> crate::store::db::Result<InterventionRow> {
    let list = |i: usize| -> crate::store::db::Result<Vec<u64>> {
        let s: String = r.get(i)?;
        serde_json::from_str(&s).map_err(|e| crate::store::db::Error::Column(i, e.to_string()))
    };
    Ok(InterventionRow {
        id: r.get::<_, i64>(0)? as u64,
        title: r.get(1)?,
        category: r.get(2)?,
        node: r.get(3)?,
        sites: list(4)?,
        at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        order: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        order_state: r.get(7)?,
        evidence: list(8)?,
        created_by: r.get(9)?,
        created_at: r.get::<_, i64>(10)? as u64,
    })
}

pub fn interventions(
    c: &Connection,
    range: std::ops::Range<usize>,
) -> crate::store::db::Result<Vec<InterventionRow>> {
    let mut st = c.prepare_cached(&format!(
        "{INTERVENTION} WHERE i.node_pre >= ?1 AND i.node_pre < ?2 ORDER BY i.id DESC LIMIT 500"
    ))?;
    let rows = st.query_map(
        params![range.start as i64, range.end as i64],
        intervention_row,
    )?;
    rows.collect()
}

/// The intervention a pushed task's order belongs to.
pub fn intervention_by_order(
    c: &Connection,
    order: u64,
) -> crate::store::db::Result<Option<InterventionRow>> {
    c.query_row(
        &format!("{INTERVENTION} WHERE i.order_id = ?1"),
        [order as i64],
        intervention_row,
    )
    .optional()
}

pub fn intervention(c: &Connection, id: u64) -> crate::store::db::Result<Option<InterventionRow>> {
    c.query_row(
        &format!("{INTERVENTION} WHERE i.id = ?1"),
        [id as i64],
        intervention_row,
    )
    .optional()
}

/// Request times at the given sites (or, with none, anywhere in the range) of a category, inside
/// the window: what a before/after comparison counts.
pub fn times_at(
    c: &Connection,
    org: &Org,
    sites: &[SiteRow],
    range: std::ops::Range<usize>,
    category: &str,
    window: Window,
) -> crate::store::db::Result<Vec<u64>> {
    let mut cats = Names::default();
    let mut causes = Names::default();
    let q = FactQuery {
        window,
        range,
        category: Some(category),
    };
    let facts = facts(c, &q, &mut cats, &mut causes)?;
    if sites.is_empty() {
        return Ok(facts.iter().map(|f| f.created_at).collect());
    }
    let list: Vec<Site> = sites.iter().filter_map(|s| s.site(org)).collect();
    let at = super::core::match_sites(&facts, &list);
    Ok(facts
        .iter()
        .zip(at)
        .filter(|(_, s)| s.is_some())
        .map(|(f, _)| f.created_at)
        .collect())
}

/// How long after its deadline a routine order is escalated, under the default policy.
const ESCALATE_AFTER_MS: u64 = 24 * 3_600_000;

/// Writes a generated year into the store as imported history: each order as it stands at the
/// year's end (closed ones whole, with their document; open ones with the create event the
/// orders service loads them from), the sites, and the intervention at the hot squares. Ids
/// follow those already stored. Returns the first order id used.
pub fn import_year(
    c: &Connection,
    org: &Org,
    year: &Year,
    by: NodeIdx,
) -> crate::store::db::Result<u64> {
    let first: i64 = c.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM orders", [], |r| {
        r.get(0)
    })?;
    let end = year.spec.start + u64::from(year.spec.days) * super::synth::DAY_MS;
    let refs: Vec<NewSite> = year
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| NewSite {
            kind: s.kind.into(),
            name: s.name.clone(),
            node: s.node,
            point: s.point,
            radius_m: s.radius_m,
            r#ref: Some(super::history::site_ref(year.spec.seed, i)),
        })
        .collect();
    let site_ids = add_sites(c, org, &refs, year.spec.start)?;
    for (i, r) in year.requests.iter().enumerate() {
        let id = OrderId(first as u64 + i as u64);
        let mut chain: Vec<NodeIdx> = org.ancestors(r.node).collect();
        chain.reverse();
        chain.push(r.node);
        let priority = match r.priority {
            "urgent" => Priority::Urgent,
            "emergency" => Priority::Emergency,
            _ => Priority::Routine,
        };
        let source = match r.source {
            "app" => Source::App,
            "grid_patrol" => Source::GridPatrol,
            "referral_110" => Source::Referral110,
            "referral_120" => Source::Referral120,
            "integration" => Source::Integration,
            _ => Source::Hotline12345,
        };
        let due = r.created_at + 72 * 3_600_000;
        let mut o = Order {
            id,
            source,
            category: r.category.into(),
            cause: r.cause.map(Into::into),
            description: r.description.into(),
            place: Place {
                node: r.node,
                point: Some(r.point),
                address: String::new().into(),
            },
            priority,
            reporter: Reporter {
                name: "".into(),
                phone: "".into(),
            },
            created_at: r.created_at,
            updated_at: r.created_at,
            due_at: due,
            state: State::InProgress,
            holder: r.node,
            chain: chain.clone(),
            acknowledged: true,
            report_chain: Vec::new(),
            result: None,
            reviewed: false,
            rating: None,
            summary: None,
            supervision: 0,
            late: false,
            reopened: 0,
            version: 1,
            closed_at: None,
            assigned_seq: None,
            read_at: None,
        };
        if let Some(done) = r.closed {
            o.state = State::Archived;
            o.holder = chain[0];
            o.report_chain = chain.clone();
            o.chain = vec![chain[0]];
            o.result = Some(Outcome {
                text: r.result.into(),
                by: r.node,
                at: done.at,
            });
            o.reviewed = true;
            o.rating = Some(Rating {
                score: done.score,
                satisfied: done.satisfied,
                comment: "".into(),
                at: done.at,
            });
            o.summary = Some(r.description.into());
            o.supervision = u8::from(!done.on_time);
            o.late = !done.on_time;
            o.reopened = u16::from(done.reopened);
            o.updated_at = done.at;
            o.closed_at = Some(done.at);
        } else if due + ESCALATE_AFTER_MS < end {
            // Late past the escalation at the year's end: supervised and sent up to the village
            // station, as the orders service would have done (under the default policy), so a
            // hub started on the import has no backlog of deadlines to catch up on.
            o.supervision = 2;
            o.late = true;
            o.state = State::Supervised;
            o.acknowledged = false;
            o.chain.pop();
            o.holder = *o.chain.last().expect("a worker has a village above it");
        } else if due < end {
            o.supervision = 1;
            o.late = true;
            o.state = State::Supervised;
        }
        let doc = OrderDoc::of(org, &o, 0);
        let json = serde_json::to_string(&doc).expect("order documents serialize");
        let closed = o.state == State::Archived;
        let event = crate::orders::model::Event {
            order: id,
            seq: 1,
            at: o.created_at,
            actor: Some(by),
            action: crate::orders::model::Action::Create,
            detail: Default::default(),
        };
        let rows = TransitionRows {
            created: true,
            order: OrderRow::of(org, &o, closed.then(|| json.clone()), None),
            event: EventRow::of(org, &event, Some(&doc)),
        };
        if closed {
            // A closed order is read from its document; its history is not imported.
            crate::orders::persist::insert_order(c, &rows.order)?;
        } else {
            write_transition(c, &rows)?;
        }
    }
    let hot: Vec<u64> = year
        .truth
        .hot_squares
        .iter()
        .map(|&i| site_ids[i as usize].0)
        .collect();
    add_intervention(
        c,
        org,
        &NewIntervention {
            title: "广场舞噪音治理：定时段、限音量、设监督员",
            category: "noise",
            node: org.root(),
            sites: &hot,
            at: Some(year.spec.intervention_at()),
            order: None,
            evidence: &[],
            created_by: org.id(by).as_str(),
            created_at: year.spec.intervention_at(),
        },
    )?;
    Ok(first as u64)
}
