//! Notices and campaigns in the orders service: both reach many terminals through their durable
//! outboxes, so they share the service's per-terminal sequence numbers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Reply, Service, ServiceError};
use crate::auth::Role;
use crate::clock::now_ms;
use crate::orders::campaigns::{Outcome, Progress, recipients};
use crate::orders::persist::{OutboxRow, write_outbox};
use crate::orders::{OrderError, Who};
use crate::org::{NodeIdx, Org, Tier};
use crate::scope;
use crate::store::{Job, StoreError};
use crate::transport::conn::Conn;
use crate::transport::protocol::{ReqId, encode, outbox_frame, success};

/// Longest texts, in characters.
const TITLE: usize = 100;
const BODY: usize = 2000;
/// Records per `campaign.record` request, and the largest `data` of one record (bytes of JSON).
pub const RECORDS_PER_REQUEST: usize = 100;
const RECORD_DATA: usize = 2048;
const KEY: usize = 64;

fn tiers_str(t: &[Tier]) -> String {
    t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
}

fn parse_tiers(s: &str) -> Vec<Tier> {
    s.split(',').filter_map(Tier::parse).collect()
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ServiceError> {
    let n = v.trim().chars().count();
    if n == 0 {
        return Err(ServiceError::Invalid(format!("{field} is required")));
    }
    if n > max {
        return Err(ServiceError::Invalid(format!(
            "{field} is {n} characters; at most {max} are allowed"
        )));
    }
    Ok(())
}

/// `notice.send` / `POST /api/v1/notices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeIn {
    /// The subtree it goes to.
    pub node: crate::org::NodeId,
    /// Which tiers of it (default: every tier below the node).
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    pub title: String,
    pub body: String,
}

/// `campaign.start` / `POST /api/v1/campaigns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignIn {
    pub node: crate::org::NodeId,
    /// Default: grid workers.
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    pub title: String,
    pub instructions: String,
    #[serde(default)]
    pub due_at: Option<u64>,
}

/// One record of a campaign.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    /// What was checked, e.g. a household number; unique within the campaign.
    pub key: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// A campaign as the service keeps it.
pub struct CampaignState {
    pub sender: NodeIdx,
    pub node: NodeIdx,
    pub tiers: Vec<Tier>,
    pub title: String,
    pub instructions: String,
    pub created_at: u64,
    pub due_at: Option<u64>,
    pub closed_at: Option<u64>,
    pub recipients: u64,
    pub progress: Progress,
    /// Consoles watching its progress.
    pub watchers: Vec<Arc<Conn>>,
}

impl CampaignState {
    fn takes_records_from(&self, org: &Org, n: NodeIdx) -> bool {
        org.contains(self.node, n) && self.tiers.contains(&org.tier(n))
    }

    /// Centers whose subtree holds the campaign, its sender, and its recipients may look.
    fn visible_to(&self, org: &Org, who: Who) -> bool {
        who.node == self.sender
            || (who.role != Role::Worker && org.contains(who.node, self.node))
            || self.takes_records_from(org, who.node)
    }

    pub fn status(&self, org: &Org, id: u64) -> serde_json::Value {
        let children: Vec<serde_json::Value> = org
            .children(self.node)
            .iter()
            .map(|&c| {
                let n = org.node(c);
                serde_json::json!({ "node": n.id, "name": n.name, "counts": self.progress.node(c) })
            })
            .collect();
        serde_json::json!({
            "id": id,
            "sender": org.id(self.sender),
            "node": org.id(self.node),
            "tiers": self.tiers,
            "title": self.title,
            "instructions": self.instructions,
            "created_at": self.created_at,
            "due_at": self.due_at,
            "closed_at": self.closed_at,
            "recipients": self.recipients,
            "totals": self.progress.totals(),
            "records": self.progress.totals().records(),
            "by_node": children,
        })
    }
}

/// What a key held before a record, and what it holds now.
type Correction = (Option<Outcome>, Outcome);

/// Campaigns under their own lock: the store's completion thread updates progress directly
/// when records commit, never through the service's inbox (which could wait on the store).
pub type Campaigns = Arc<Mutex<HashMap<u64, CampaignState>>>;

pub fn lock(c: &Campaigns) -> std::sync::MutexGuard<'_, HashMap<u64, CampaignState>> {
    // Nothing panics while holding this lock; a poisoned map is still consistent.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads open campaigns and their progress from the store.
pub fn load_campaigns(
    c: &rusqlite::Connection,
    org: &Arc<Org>,
) -> rusqlite::Result<(HashMap<u64, CampaignState>, u64, u64)> {
    let mut out = HashMap::new();
    let mut st = c.prepare(
        "SELECT id, sender, node, tiers, title, instructions, created_at, due_at, recipients
         FROM campaigns WHERE closed_at IS NULL",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)? as u64,
            r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            r.get::<_, i64>(8)? as u64,
        ))
    })?;
    for row in rows {
        let (id, sender, node, tiers, title, instructions, created_at, due_at, n) = row?;
        let (Some(sender), Some(node)) = (org.lookup(&sender), org.lookup(&node)) else {
            tracing::error!(
                campaign = id,
                "campaign refers to nodes no longer in the org tree"
            );
            continue;
        };
        let mut progress = Progress::new(Arc::clone(org), node);
        let mut agg = c.prepare_cached(
            "SELECT worker, outcome, COUNT(*) FROM campaign_records WHERE campaign_id = ?1 GROUP BY worker, outcome",
        )?;
        for a in agg.query_map([id as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (w, o, k) = a?;
            if let (Some(w), Some(o)) = (org.lookup(&w), Outcome::parse(&o)) {
                for _ in 0..k {
                    progress.record(w, None, o);
                }
            }
        }
        let mut done =
            c.prepare_cached("SELECT worker FROM campaign_done WHERE campaign_id = ?1")?;
        for w in done.query_map([id as i64], |r| r.get::<_, String>(0))? {
            if let Some(w) = org.lookup(&w?) {
                progress.done(w);
            }
        }
        progress.take_changed();
        out.insert(
            id,
            CampaignState {
                sender,
                node,
                tiers: parse_tiers(&tiers),
                title,
                instructions,
                created_at,
                due_at,
                closed_at: None,
                recipients: n,
                progress,
                watchers: Vec::new(),
            },
        );
    }
    let next_notice: i64 =
        c.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM notices", [], |r| {
            r.get(0)
        })?;
    let next_campaign: i64 =
        c.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM campaigns", [], |r| {
            r.get(0)
        })?;
    Ok((out, next_notice as u64, next_campaign as u64))
}

#[derive(Serialize)]
struct NoticePayload<'a> {
    kind: &'static str,
    notice: NoticeView<'a>,
}

#[derive(Serialize)]
struct NoticeView<'a> {
    id: u64,
    from: &'a str,
    node: &'a str,
    title: &'a str,
    body: &'a str,
    at: u64,
}

#[derive(Serialize)]
struct CampaignPayload<'a> {
    kind: &'static str,
    campaign: CampaignView<'a>,
}

#[derive(Serialize)]
struct CampaignView<'a> {
    id: u64,
    from: &'a str,
    node: &'a str,
    title: &'a str,
    instructions: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<u64>,
    at: u64,
}

impl Service {
    /// Checks that `who` may send to the subtree of `node` and returns it.
    fn sender_scope(&self, who: Who, node: &crate::org::NodeId) -> Result<NodeIdx, ServiceError> {
        let n = self
            .org
            .lookup(node.as_str())
            .ok_or_else(|| ServiceError::Invalid(format!("node {node} is not in the org tree")))?;
        let cred = crate::auth::Credential {
            endpoint: who.node,
            role: who.role,
            expires_at: 0,
        };
        if who.role == Role::Worker || !scope::can_watch_subtree(&self.org, &cred, n) {
            return Err(OrderError::OutOfScope(format!(
                "{} may send only to its own subtree; {node} is outside it",
                self.org.id(who.node)
            ))
            .into());
        }
        Ok(n)
    }

    /// Who a notice or campaign goes to: the subtree (checked against the sender's scope), the
    /// tiers (`default` when none are given), and the terminals they make up.
    fn audience(
        &self,
        who: Who,
        node: &crate::org::NodeId,
        tiers: Option<Vec<Tier>>,
        default: impl FnOnce(Tier) -> Vec<Tier>,
    ) -> Result<(NodeIdx, Vec<Tier>, Vec<NodeIdx>), ServiceError> {
        let n = self.sender_scope(who, node)?;
        let tiers = tiers.unwrap_or_else(|| default(self.org.tier(n)));
        if tiers.is_empty() {
            return Err(ServiceError::Invalid("tiers is empty".into()));
        }
        let targets = recipients(&self.org, n, &tiers, who.node);
        Ok((n, tiers, targets))
    }

    /// Writes one outbox message per recipient with `payload`, plus `extra` rows (given each
    /// recipient's sequence), atomically; then delivers live and runs `after`.
    async fn fan_out(
        &mut self,
        targets: &[NodeIdx],
        kind: &'static str,
        reference: u64,
        payload: String,
        extra: impl FnOnce(&rusqlite::Connection, &[(NodeIdx, u64)]) -> rusqlite::Result<()>
        + Send
        + 'static,
        after: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let now = now_ms();
        let seqs: Vec<(NodeIdx, u64)> = targets
            .iter()
            .map(|&t| {
                let s = &mut self.last_seq[t.get()];
                *s += 1;
                (t, *s)
            })
            .collect();
        let org = Arc::clone(&self.org);
        let backplane = Arc::clone(&self.backplane);
        let metrics = Arc::clone(&self.metrics);
        // Shared by the write (writer thread) and the delivery after it (completion thread).
        let seqs: Arc<[(NodeIdx, u64)]> = seqs.into();
        let rows_seqs = Arc::clone(&seqs);
        let payload = Arc::new(payload);
        let p2 = Arc::clone(&payload);
        self.store
            .submit_async(Job::new(
                move |c| {
                    for &(t, seq) in rows_seqs.iter() {
                        write_outbox(
                            c,
                            &OutboxRow {
                                endpoint: org.id(t).as_str().into(),
                                seq,
                                at: now,
                                kind,
                                reference: Some(reference),
                                payload: p2.as_str().into(),
                            },
                        )?;
                    }
                    extra(c, &rows_seqs)
                },
                move |r| {
                    if r.is_ok() {
                        // The payload was serialized once; each recipient's frame differs only
                        // in its sequence number.
                        for (t, seq) in seqs.iter() {
                            backplane.deliver_outbox(*t, *seq, &outbox_frame(*seq, &payload));
                        }
                        metrics
                            .outbox_messages
                            .fetch_add(seqs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    after(r);
                },
            ))
            .await;
    }

    pub(super) async fn deliver(
        &mut self,
        to: NodeIdx,
        kind: &'static str,
        reference: u64,
        payload: String,
    ) {
        self.fan_out(
            &[to],
            kind,
            reference,
            payload,
            |_, _| Ok(()),
            move |r| {
                if let Err(e) = r {
                    tracing::error!(kind, reference, "outbox message not written: {e}");
                }
            },
        )
        .await;
    }

    pub(super) async fn notice_send(&mut self, who: Who, n: NoticeIn, reply: Reply) {
        let checked = check_text("title", &n.title, TITLE)
            .and_then(|_| check_text("body", &n.body, BODY))
            .and_then(|_| {
                // By default, every tier below the node.
                self.audience(who, &n.node, n.tiers.clone(), |below| {
                    Tier::ALL.into_iter().filter(|t| *t > below).collect()
                })
            });
        let (node, tiers, targets) = match checked {
            Ok(x) => x,
            Err(e) => return self.reject(reply, e).await,
        };
        let id = self.next_notice;
        self.next_notice += 1;
        let now = now_ms();
        let (from, at) = (
            self.org.id(who.node).to_string(),
            self.org.id(node).to_string(),
        );
        let payload = serde_json::to_string(&NoticePayload {
            kind: "notice",
            notice: NoticeView {
                id,
                from: &from,
                node: &at,
                title: &n.title,
                body: &n.body,
                at: now,
            },
        })
        .expect("notices serialize");
        let count = targets.len() as u64;
        let org = Arc::clone(&self.org);
        let (title, body, tiers_s) = (n.title.clone(), n.body.clone(), tiers_str(&tiers));
        let summary = serde_json::json!({
            "id": id, "from": from, "node": at, "tiers": tiers, "title": n.title,
            "created_at": now, "recipients": count,
        });
        let (from2, at2) = (from.clone(), at.clone());
        self.fan_out(
            &targets,
            "notice",
            id,
            payload,
            move |c, seqs| {
                c.prepare_cached(
                    "INSERT INTO notices (id, sender, node, tiers, title, body, created_at, recipients)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![id as i64, from2, at2, tiers_s, title, body, now as i64, count as i64])?;
                let mut st = c.prepare_cached(
                    "INSERT INTO notice_recipients (notice_id, endpoint, seq) VALUES (?1, ?2, ?3)",
                )?;
                for (t, seq) in seqs {
                    st.execute(params![id as i64, org.id(*t).as_str(), *seq as i64])?;
                }
                Ok(())
            },
            move |r| match r {
                Ok(()) => reply.ok_value(true, serde_json::json!({ "notice": summary })),
                Err(e) => reply.err(e.into()),
            },
        )
        .await;
    }

    /// A notice with its delivery and read counts (delivered = acknowledged by the terminal).
    pub(super) async fn notice_get(&mut self, who: Who, id: u64, reply: Reply) {
        let org = Arc::clone(&self.org);
        let read = self
            .store
            .read(move |c| {
                let head = c.query_row(
                    "SELECT sender, node, tiers, title, body, created_at, recipients FROM notices WHERE id = ?1",
                    [id as i64],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    },
                );
                let head = match head {
                    Ok(h) => h,
                    Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mut st = c.prepare_cached("SELECT endpoint, seq FROM notice_recipients WHERE notice_id = ?1")?;
                let rs: Vec<(String, u64)> = st
                    .query_map([id as i64], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                    .collect::<Result<_, _>>()?;
                let reads: i64 = c.query_row(
                    "SELECT COUNT(*) FROM reads WHERE kind = 'notice' AND ref = ?1",
                    [id as i64],
                    |r| r.get(0),
                )?;
                Ok(Some((head, rs, reads)))
            })
            .await;
        let (head, rs, reads) = match read {
            Ok(Some(x)) => x,
            Ok(None) => {
                return self
                    .reject(reply, ServiceError::Invalid(format!("no notice {id}")))
                    .await;
            }
            Err(e) => return self.reject(reply, e.into()).await,
        };
        let (sender, node, tiers, title, body, created_at, count) = head;
        let sender_n = org.lookup(&sender);
        let node_n = org.lookup(&node);
        let mine = rs.iter().any(|(e, _)| org.lookup(e) == Some(who.node));
        let visible = mine
            || sender_n == Some(who.node)
            || (who.role != Role::Worker && node_n.is_some_and(|n| org.contains(who.node, n)));
        if !visible {
            return self
                .reject(
                    reply,
                    OrderError::OutOfScope(format!("notice {id} is outside your scope")).into(),
                )
                .await;
        }
        let delivered = rs
            .iter()
            .filter(|(e, seq)| org.lookup(e).is_some_and(|n| self.acked[n.get()] >= *seq))
            .count();
        let v = serde_json::json!({ "notice": {
            "id": id, "from": sender, "node": node, "tiers": parse_tiers(&tiers), "title": title,
            "body": body, "created_at": created_at, "recipients": count,
            "delivered": delivered, "read": reads,
        }});
        self.after_commit(move || reply.ok_value(false, v)).await;
    }

    pub(super) async fn mark_read(&mut self, who: Who, kind: &'static str, id: u64, reply: Reply) {
        let endpoint = self.org.id(who.node).to_string();
        let now = now_ms();
        self.store
            .submit_async(Job::new(
                move |c| crate::orders::persist::write_read(c, kind, id, &endpoint, now),
                move |r| match r {
                    Ok(()) => reply.ok_value(false, serde_json::json!({})),
                    Err(e) => reply.err(e.into()),
                },
            ))
            .await;
    }

    pub(super) async fn campaign_start(&mut self, who: Who, n: CampaignIn, reply: Reply) {
        let now = now_ms();
        let checked = check_text("title", &n.title, TITLE)
            .and_then(|_| check_text("instructions", &n.instructions, BODY))
            .and_then(|_| {
                if n.due_at.is_some_and(|d| d <= now) {
                    return Err(ServiceError::Invalid("due_at is in the past".into()));
                }
                self.audience(who, &n.node, n.tiers.clone(), |_| vec![Tier::Worker])
            });
        let (node, tiers, targets) = match checked {
            Ok(x) => x,
            Err(e) => return self.reject(reply, e).await,
        };
        let id = self.next_campaign;
        self.next_campaign += 1;
        let (from, at) = (
            self.org.id(who.node).to_string(),
            self.org.id(node).to_string(),
        );
        let payload = serde_json::to_string(&CampaignPayload {
            kind: "campaign.task",
            campaign: CampaignView {
                id,
                from: &from,
                node: &at,
                title: &n.title,
                instructions: &n.instructions,
                due_at: n.due_at,
                at: now,
            },
        })
        .expect("campaigns serialize");
        let count = targets.len() as u64;
        let state = CampaignState {
            sender: who.node,
            node,
            tiers: tiers.clone(),
            title: n.title.clone(),
            instructions: n.instructions.clone(),
            created_at: now,
            due_at: n.due_at,
            closed_at: None,
            recipients: count,
            progress: Progress::new(Arc::clone(&self.org), node),
            watchers: Vec::new(),
        };
        let status = state.status(&self.org, id);
        lock(&self.campaigns).insert(id, state);
        let (title, instructions, tiers_s, due) =
            (n.title, n.instructions, tiers_str(&tiers), n.due_at);
        self.fan_out(
            &targets,
            "campaign.task",
            id,
            payload,
            move |c, _| {
                c.prepare_cached(
                    "INSERT INTO campaigns (id, sender, node, tiers, title, instructions, created_at, due_at, recipients)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    id as i64, from, at, tiers_s, title, instructions, now as i64,
                    due.map(|d| d as i64), count as i64
                ])?;
                Ok(())
            },
            move |r| match r {
                Ok(()) => reply.ok_value(true, serde_json::json!({ "campaign": status })),
                Err(e) => reply.err(e.into()),
            },
        )
        .await;
    }

    pub(super) async fn campaign_get(&mut self, who: Who, id: u64, reply: Reply) {
        let v = {
            let map = lock(&self.campaigns);
            match map.get(&id) {
                Some(c) if c.visible_to(&self.org, who) => {
                    Ok(serde_json::json!({ "campaign": c.status(&self.org, id) }))
                }
                Some(_) => Err(OrderError::OutOfScope(format!(
                    "campaign {id} is outside your scope"
                ))
                .into()),
                None => Err(ServiceError::Invalid(format!("no open campaign {id}"))),
            }
        };
        match v {
            Ok(v) => self.after_commit(move || reply.ok_value(false, v)).await,
            Err(e) => self.reject(reply, e).await,
        }
    }

    pub(super) async fn campaign_record(
        &mut self,
        who: Who,
        id: u64,
        records: Vec<RecordIn>,
        reply: Reply,
    ) {
        let checked = (|| {
            let map = lock(&self.campaigns);
            let c = map
                .get(&id)
                .ok_or_else(|| ServiceError::Invalid(format!("no open campaign {id}")))?;
            if !c.takes_records_from(&self.org, who.node) {
                return Err(OrderError::OutOfScope(format!(
                    "{} is not one of campaign {id}'s recipients",
                    self.org.id(who.node)
                ))
                .into());
            }
            if records.is_empty() || records.len() > RECORDS_PER_REQUEST {
                return Err(ServiceError::Invalid(format!(
                    "send 1 to {RECORDS_PER_REQUEST} records per request, not {}",
                    records.len()
                )));
            }
            let mut rows = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                if r.key.is_empty()
                    || r.key.len() > KEY
                    || !r.key.chars().all(|ch| !ch.is_control())
                {
                    return Err(ServiceError::Invalid(format!(
                        "records[{i}].key must be 1–{KEY} bytes without control characters"
                    )));
                }
                let data = match &r.data {
                    None => None,
                    Some(serde_json::Value::Object(_)) => {
                        let s = r.data.as_ref().map(|d| d.to_string()).unwrap_or_default();
                        if s.len() > RECORD_DATA {
                            return Err(ServiceError::Invalid(format!(
                                "records[{i}].data is {} bytes; at most {RECORD_DATA}",
                                s.len()
                            )));
                        }
                        Some(s)
                    }
                    Some(_) => {
                        return Err(ServiceError::Invalid(format!(
                            "records[{i}].data must be an object"
                        )));
                    }
                };
                rows.push((r.key.clone(), r.outcome, data));
            }
            Ok(rows)
        })();
        let rows = match checked {
            Ok(r) => r,
            Err(e) => return self.reject(reply, e).await,
        };
        let worker = who.node;
        let worker_id = self.org.id(worker).to_string();
        let now = now_ms();
        let slot: Arc<Mutex<Vec<Correction>>> = Arc::default();
        let fill = Arc::clone(&slot);
        let campaigns = Arc::clone(&self.campaigns);
        let n = rows.len();
        self.store
            .submit_async(Job::new(
                move |c| {
                    // The store decides what a key held before, so corrections count exactly.
                    let mut old = c.prepare_cached(
                        "SELECT outcome FROM campaign_records WHERE campaign_id = ?1 AND key = ?2",
                    )?;
                    let mut put = c.prepare_cached(
                        "INSERT INTO campaign_records (campaign_id, key, worker, outcome, data, at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(campaign_id, key) DO UPDATE SET worker = excluded.worker,
                           outcome = excluded.outcome, data = excluded.data, at = excluded.at",
                    )?;
                    let mut changes = Vec::with_capacity(rows.len());
                    for (key, outcome, data) in &rows {
                        let before: Option<String> =
                            match old.query_row(params![id as i64, key], |r| r.get(0)) {
                                Ok(v) => Some(v),
                                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                                Err(e) => return Err(e),
                            };
                        put.execute(params![
                            id as i64,
                            key,
                            worker_id,
                            outcome.as_str(),
                            data,
                            now as i64
                        ])?;
                        changes.push((before.as_deref().and_then(Outcome::parse), *outcome));
                    }
                    *fill.lock().unwrap_or_else(|e| e.into_inner()) = changes;
                    Ok(())
                },
                move |r| match r {
                    Ok(()) => {
                        let changes =
                            std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
                        if let Some(c) = lock(&campaigns).get_mut(&id) {
                            for (before, after) in changes {
                                c.progress.record(worker, before, after);
                            }
                        }
                        reply.ok_value(false, serde_json::json!({ "accepted": n }));
                    }
                    Err(e) => reply.err(e.into()),
                },
            ))
            .await;
    }

    pub(super) async fn campaign_done(&mut self, who: Who, id: u64, reply: Reply) {
        let ok = lock(&self.campaigns)
            .get(&id)
            .map(|c| c.takes_records_from(&self.org, who.node));
        match ok {
            None => {
                return self
                    .reject(
                        reply,
                        ServiceError::Invalid(format!("no open campaign {id}")),
                    )
                    .await;
            }
            Some(false) => {
                let e = OrderError::OutOfScope(format!(
                    "{} is not one of campaign {id}'s recipients",
                    self.org.id(who.node)
                ));
                return self.reject(reply, e.into()).await;
            }
            Some(true) => {}
        }
        let worker = self.org.id(who.node).to_string();
        let now = now_ms();
        let campaigns = Arc::clone(&self.campaigns);
        let node = who.node;
        self.store
            .submit_async(Job::new(
                move |c| {
                    c.prepare_cached(
                        "INSERT OR IGNORE INTO campaign_done (campaign_id, worker, at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id as i64, worker, now as i64])
                    .map(drop)
                },
                move |r| match r {
                    Ok(()) => {
                        if let Some(c) = lock(&campaigns).get_mut(&id) {
                            c.progress.done(node);
                        }
                        reply.ok_value(false, serde_json::json!({}))
                    }
                    Err(e) => reply.err(e.into()),
                },
            ))
            .await;
    }

    pub(super) async fn campaign_watch(
        &mut self,
        conn: Arc<Conn>,
        id: u64,
        watch: bool,
        re: Option<ReqId>,
    ) {
        let who = Who {
            node: conn.endpoint,
            role: conn.role,
        };
        let kind = if watch {
            "campaign.watch"
        } else {
            "campaign.unwatch"
        };
        let result = {
            let mut map = lock(&self.campaigns);
            match map.get_mut(&id) {
                Some(c) if c.visible_to(&self.org, who) => {
                    c.watchers.retain(|w| w.key != conn.key);
                    if watch {
                        c.watchers.push(Arc::clone(&conn));
                    }
                    Ok(c.status(&self.org, id))
                }
                Some(_) => Err(ServiceError::from(OrderError::OutOfScope(format!(
                    "campaign {id} is outside your scope"
                )))),
                None => Err(ServiceError::Invalid(format!("no open campaign {id}"))),
            }
        };
        let reply = Reply::Ws { conn, re, kind };
        match result {
            Ok(status) => reply.ok_value(false, serde_json::json!({ "campaign": status })),
            Err(e) => self.reject(reply, e).await,
        }
    }

    pub(super) async fn campaign_close(&mut self, who: Who, id: u64, reply: Reply) {
        let allowed = {
            let map = lock(&self.campaigns);
            map.get(&id).map(|c| {
                who.node == c.sender
                    || (who.role != Role::Worker && self.org.contains(who.node, c.sender))
            })
        };
        match allowed {
            None => {
                return self
                    .reject(
                        reply,
                        ServiceError::Invalid(format!("no open campaign {id}")),
                    )
                    .await;
            }
            Some(false) => {
                let e = OrderError::OutOfScope(format!(
                    "only the sender of campaign {id} or a center above it may close it"
                ));
                return self.reject(reply, e.into()).await;
            }
            Some(true) => {}
        }
        let now = now_ms();
        let campaigns = Arc::clone(&self.campaigns);
        let org = Arc::clone(&self.org);
        self.store
            .submit_async(Job::new(
                move |c| {
                    c.execute(
                        "UPDATE campaigns SET closed_at = ?2 WHERE id = ?1",
                        params![id as i64, now as i64],
                    )
                    .map(drop)
                },
                move |r| match r {
                    Ok(()) => {
                        let status = lock(&campaigns).remove(&id).map(|mut c| {
                            c.closed_at = Some(now);
                            c.status(&org, id)
                        });
                        reply.ok_value(false, serde_json::json!({ "campaign": status }))
                    }
                    Err(e) => reply.err(e.into()),
                },
            ))
            .await;
    }

    /// Live progress: each watched campaign whose counts changed sends one frame to its
    /// watchers — totals and the changed centers (workers' own counts stay out of it).
    pub(super) fn flush_progress(&mut self) {
        let org = Arc::clone(&self.org);
        let mut map = lock(&self.campaigns);
        for (id, c) in map.iter_mut() {
            c.watchers.retain(|w| w.is_open());
            if c.watchers.is_empty() {
                continue;
            }
            let changed = c.progress.take_changed();
            if changed.is_empty() {
                continue;
            }
            let nodes: Vec<serde_json::Value> = changed
                .iter()
                .filter(|&&n| org.tier(n) != Tier::Worker)
                .map(|&n| serde_json::json!({ "node": org.id(n), "counts": c.progress.node(n) }))
                .collect();
            let frame = encode(
                "campaign.progress",
                None,
                &serde_json::json!({ "campaign": id, "totals": c.progress.totals(), "nodes": nodes }),
            );
            for w in &c.watchers {
                w.send(&frame);
            }
        }
    }
}

/// Why an answer carries a JSON value; helpers for replies other than orders.
impl Reply {
    pub fn ok_value(self, created: bool, v: serde_json::Value) {
        match self {
            Reply::Ws { conn, re, kind } => {
                if let Some(f) = success(re.as_ref(), kind, &v) {
                    conn.send(&f);
                }
            }
            Reply::Rest(tx) => {
                let _ = tx.send(Ok((created, super::RestBody::Value(v))));
            }
            Reply::None => {}
        }
    }
}
