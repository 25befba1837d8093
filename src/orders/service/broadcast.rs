//! Notices and campaigns in the orders service: both reach many terminals through their durable
//! outboxes. A campaign's state lives in the service's task and changes only there, when the
//! store reports that what changes it was written.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::db::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Answer, Effect, Read, ReadKind, Reply, Service, ServiceError};
use crate::auth::Role;
use crate::backplane::{ConnKey, Group};
use crate::orders::campaigns::{Outcome, Progress, recipients};
use crate::orders::{OrderError, Who};
use crate::org::{NodeIdx, Org, Tier};
use crate::scope;
use crate::store::Job;
use crate::transport::protocol::{ReqId, encode};

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
pub type Correction = (Option<Outcome>, Outcome);

/// A notice as stored: its head, its recipients with their sequences, and how many read it.
pub struct NoticeRow {
    sender: String,
    node: String,
    tiers: String,
    title: String,
    body: String,
    created_at: i64,
    recipients: Vec<(String, u64)>,
    reads: i64,
}

/// The group of consoles watching a campaign's progress.
fn watchers(id: u64) -> Group {
    Group::new("campaign", id)
}

/// Loads every campaign (closed ones stay readable) and its progress from the store.
pub fn load_campaigns(
    c: &crate::store::Connection,
    org: &Arc<Org>,
) -> crate::store::db::Result<(HashMap<u64, CampaignState>, u64, u64)> {
    let mut out = HashMap::new();
    let mut st = c.prepare(
        "SELECT id, sender, node, tiers, title, instructions, created_at, due_at, recipients,
                closed_at
         FROM campaigns",
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
            r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        ))
    })?;
    for row in rows {
        let (id, sender, node, tiers, title, instructions, created_at, due_at, n, closed_at) = row?;
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
                closed_at,
                recipients: n,
                progress,
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
            .ok_or_else(|| ServiceError::NotFound(format!("no node {node} in the org tree")))?;
        let cred = crate::auth::Credential {
            endpoint: who.node,
            role: who.role,
            seat: crate::auth::Seat::MAIN,
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
        if targets.is_empty() {
            return Err(ServiceError::Invalid(format!(
                "no terminal of tiers {} below {node}: nobody to send to",
                tiers_str(&tiers)
            )));
        }
        Ok((n, tiers, targets))
    }

    /// Writes one outbox message per recipient, all sharing `payload`, together with `rows`
    /// (given each recipient's sequence), in one job whose turn in the pipeline is `effect`.
    async fn fan_out(
        &mut self,
        targets: &[NodeIdx],
        kind: &'static str,
        reference: u64,
        payload: String,
        rows: impl FnOnce(&crate::store::Connection, &[(NodeIdx, u64)]) -> crate::store::db::Result<()>
        + Send
        + 'static,
        effect: Effect,
    ) {
        let outbox = self.outbox.clone();
        let mut batch = outbox.batch().await;
        // Serialized once; each recipient's frame differs only in its sequence number.
        let payload: Arc<str> = payload.into();
        let seqs: Vec<(NodeIdx, u64)> = targets
            .iter()
            .map(|&t| {
                (
                    t,
                    batch.push(t, kind, Some(reference), Arc::clone(&payload)),
                )
            })
            .collect();
        let t = self.pipeline.wait(effect);
        let news = self.news.clone();
        batch
            .commit(
                Job::new(move |c| rows(c, &seqs)).notify(&news, move |r| super::Stored {
                    ticket: t,
                    result: r.map(|()| Read::Nothing),
                }),
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
        let now = self.clock.now_ms();
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
        let summary = serde_json::json!({ "notice": {
            "id": id, "from": from, "node": at, "tiers": tiers, "title": n.title,
            "created_at": now, "recipients": count,
        }});
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
                .write(params![id as i64, from, at, tiers_s, title, body, now as i64, count as i64])?;
                let mut st = c.prepare_cached(
                    "INSERT INTO notice_recipients (notice_id, endpoint, seq) VALUES (?1, ?2, ?3)",
                )?;
                for (t, seq) in seqs {
                    st.write(params![id as i64, org.id(*t).as_str(), *seq as i64])?;
                }
                Ok(())
            },
            Effect::Written(reply, true, Answer::Value(summary)),
        )
        .await;
    }

    /// A notice with its delivery and read counts (delivered = acknowledged by the terminal),
    /// read in order with everything written before it.
    pub(super) async fn notice_get(&mut self, who: Who, id: u64, reply: Reply) {
        let t = self.pipeline.wait(Effect::NoticeGet(reply, who, id));
        self.query(t, move |c| read_notice(c, id), Read::Notice)
            .await;
    }

    /// The notice as `who` may see it: its recipients, its sender, and centers above it; to
    /// anyone else it does not exist.
    pub(super) fn notice_view(
        &self,
        who: Who,
        id: u64,
        n: Option<NoticeRow>,
    ) -> Result<serde_json::Value, ServiceError> {
        let missing = || ServiceError::NotFound(format!("no notice {id}"));
        let n = n.ok_or_else(missing)?;
        let org = &self.org;
        let mine = n
            .recipients
            .iter()
            .any(|(e, _)| org.lookup(e) == Some(who.node));
        let visible = mine
            || org.lookup(&n.sender) == Some(who.node)
            || (who.role != Role::Worker
                && org
                    .lookup(&n.node)
                    .is_some_and(|x| org.contains(who.node, x)));
        if !visible {
            return Err(missing());
        }
        let delivered = n
            .recipients
            .iter()
            .filter(|(e, seq)| org.lookup(e).is_some_and(|x| self.acked_of(x) >= *seq))
            .count();
        Ok(serde_json::json!({ "notice": {
            "id": id, "from": n.sender, "node": n.node, "tiers": parse_tiers(&n.tiers),
            "title": n.title, "body": n.body, "created_at": n.created_at,
            "recipients": n.recipients.len(), "delivered": delivered, "read": n.reads,
        }}))
    }

    /// A read receipt: only a recipient may give one; anyone else is told there is no such
    /// notice or campaign, and nothing is counted.
    pub(super) async fn mark_read(&mut self, who: Who, kind: ReadKind, id: u64, reply: Reply) {
        let endpoint = self.org.id(who.node).to_string();
        let now = self.clock.now_ms();
        match kind {
            ReadKind::Notice => {
                let t = self.pipeline.wait(Effect::Receipt(reply, kind, id));
                self.query(
                    t,
                    move |c| {
                        let recipient = c
                            .query_row(
                                "SELECT 1 FROM notice_recipients WHERE notice_id = ?1 AND endpoint = ?2",
                                params![id as i64, endpoint],
                                |_| Ok(()),
                            )
                            .optional()?
                            .is_some();
                        if recipient {
                            crate::orders::persist::write_read(c, "notice", id, &endpoint, now)?;
                        }
                        Ok(recipient)
                    },
                    Read::Recipient,
                )
                .await;
            }
            ReadKind::Campaign => {
                let recipient = self
                    .campaigns
                    .get(&id)
                    .is_some_and(|c| c.takes_records_from(&self.org, who.node));
                if !recipient {
                    let e = ServiceError::NotFound(format!("no campaign {id}"));
                    return self.reject(reply, e).await;
                }
                let t = self.pipeline.wait(Effect::Receipt(reply, kind, id));
                self.query(
                    t,
                    move |c| {
                        crate::orders::persist::write_read(c, "campaign", id, &endpoint, now)
                            .map(|()| true)
                    },
                    Read::Recipient,
                )
                .await;
            }
        }
    }

    pub(super) async fn campaign_start(&mut self, who: Who, n: CampaignIn, reply: Reply) {
        let now = self.clock.now_ms();
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
        };
        let status = state.status(&self.org, id);
        // Decided now, so requests after this one see it; taken back if the write fails.
        self.campaigns.insert(id, state);
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
            Effect::CampaignStarted(reply, id, status),
        )
        .await;
    }

    /// The campaign, if `who` may know of it: not found otherwise, whether or not it exists.
    pub(super) fn visible_campaign(
        &self,
        who: Who,
        id: u64,
    ) -> Result<&CampaignState, ServiceError> {
        self.campaigns
            .get(&id)
            .filter(|c| c.visible_to(&self.org, who))
            .ok_or_else(|| ServiceError::NotFound(format!("no campaign {id}")))
    }

    /// An open campaign `who` is a recipient of.
    fn recipient_of(&self, who: Who, id: u64) -> Result<&CampaignState, ServiceError> {
        let c = self.visible_campaign(who, id)?;
        if !c.takes_records_from(&self.org, who.node) {
            return Err(OrderError::OutOfScope(format!(
                "{} is not one of campaign {id}'s recipients",
                self.org.id(who.node)
            ))
            .into());
        }
        if c.closed_at.is_some() {
            return Err(ServiceError::Closed(format!(
                "campaign {id} is closed; it takes no more records"
            )));
        }
        Ok(c)
    }

    pub(super) async fn campaign_get(&mut self, who: Who, id: u64, reply: Reply) {
        self.now_or_later(Effect::CampaignStatus(reply, who, id))
            .await;
    }

    pub(super) async fn campaign_record(
        &mut self,
        who: Who,
        id: u64,
        records: Vec<RecordIn>,
        reply: Reply,
    ) {
        let checked = self
            .recipient_of(who, id)
            .and_then(|_| check_records(&records));
        let rows = match checked {
            Ok(r) => r,
            Err(e) => return self.reject(reply, e).await,
        };
        let worker = who.node;
        let worker_id = self.org.id(worker).to_string();
        let now = self.clock.now_ms();
        let n = rows.len();
        let t = self.pipeline.wait(Effect::Records(reply, id, worker, n));
        self.query(
            t,
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
                    let before: Option<String> = old
                        .query_row(params![id as i64, key], |r| r.get(0))
                        .optional()?;
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
                Ok(changes)
            },
            Read::Corrections,
        )
        .await;
    }

    pub(super) async fn campaign_done(&mut self, who: Who, id: u64, reply: Reply) {
        if let Err(e) = self.recipient_of(who, id) {
            return self.reject(reply, e).await;
        }
        let worker = self.org.id(who.node).to_string();
        let now = self.clock.now_ms();
        let t = self.pipeline.wait(Effect::Done(reply, id, who.node));
        self.submit(
            t,
            Job::new(move |c| {
                c.prepare_cached(
                    "INSERT INTO campaign_done (campaign_id, worker, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .write(params![id as i64, worker, now as i64])
            }),
        )
        .await;
    }

    pub(super) async fn campaign_watch(
        &mut self,
        who: Who,
        conn: ConnKey,
        id: u64,
        watch: bool,
        re: Option<ReqId>,
    ) {
        let kind = if watch {
            "campaign.watch"
        } else {
            "campaign.unwatch"
        };
        if self.visible_campaign(who, id).is_ok() {
            let group = watchers(id);
            if watch {
                self.out.join(&group, conn);
            } else {
                self.out.leave(&group, conn);
            }
        }
        let reply = Reply::Terminal { conn, re, kind };
        self.now_or_later(Effect::CampaignStatus(reply, who, id))
            .await;
    }

    pub(super) async fn campaign_close(&mut self, who: Who, id: u64, reply: Reply) {
        let checked = self.visible_campaign(who, id).and_then(|c| {
            let may = who.node == c.sender
                || (who.role != Role::Worker && self.org.contains(who.node, c.sender));
            if !may {
                return Err(OrderError::OutOfScope(format!(
                    "only the sender of campaign {id} or a center above it may close it"
                ))
                .into());
            }
            if c.closed_at.is_some() {
                return Err(ServiceError::Closed(format!(
                    "campaign {id} is closed already"
                )));
            }
            Ok(())
        });
        if let Err(e) = checked {
            return self.reject(reply, e).await;
        }
        let now = self.clock.now_ms();
        // Decided now, so requests after this one find it closed; reopened if the write fails.
        if let Some(c) = self.campaigns.get_mut(&id) {
            c.closed_at = Some(now);
        }
        let t = self.pipeline.wait(Effect::Closed(reply, id));
        self.submit(
            t,
            Job::new(move |c| {
                c.execute(
                    "UPDATE campaigns SET closed_at = ?2 WHERE id = ?1",
                    params![id as i64, now as i64],
                )
                .map(drop)
            }),
        )
        .await;
    }

    /// Live progress: each campaign whose counts changed sends one frame to its watchers on
    /// every node — totals and the changed centers (workers' own counts stay out of it).
    pub(super) fn flush_progress(&mut self) {
        let org = Arc::clone(&self.org);
        for (id, c) in self.campaigns.iter_mut() {
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
            self.out.to_group(&watchers(*id), &frame);
        }
    }
}

/// Checks records' keys and data; returns them as rows to write.
fn check_records(
    records: &[RecordIn],
) -> Result<Vec<(String, Outcome, Option<String>)>, ServiceError> {
    if records.is_empty() || records.len() > RECORDS_PER_REQUEST {
        return Err(ServiceError::Invalid(format!(
            "send 1 to {RECORDS_PER_REQUEST} records per request, not {}",
            records.len()
        )));
    }
    let mut rows = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if r.key.is_empty() || r.key.len() > KEY || r.key.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(format!(
                "records[{i}].key must be 1–{KEY} bytes without control characters"
            )));
        }
        let data = match &r.data {
            None => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let s = v.to_string();
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
}

fn read_notice(
    c: &crate::store::Connection,
    id: u64,
) -> crate::store::db::Result<Option<NoticeRow>> {
    let head = c
        .query_row(
            "SELECT sender, node, tiers, title, body, created_at FROM notices WHERE id = ?1",
            [id as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((sender, node, tiers, title, body, created_at)) = head else {
        return Ok(None);
    };
    let mut st =
        c.prepare_cached("SELECT endpoint, seq FROM notice_recipients WHERE notice_id = ?1")?;
    let recipients: Vec<(String, u64)> = st
        .query_map([id as i64], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    let reads: i64 = c.query_row(
        "SELECT COUNT(*) FROM reads WHERE kind = 'notice' AND ref = ?1",
        [id as i64],
        |r| r.get(0),
    )?;
    Ok(Some(NoticeRow {
        sender,
        node,
        tiers,
        title,
        body,
        created_at,
        recipients,
        reads,
    }))
}
