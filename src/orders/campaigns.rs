//! Campaigns: one task fanned out to every worker (or chosen tiers) of a subtree, each worker
//! submitting records — e.g. one per household checked, as when 2.18 million residents were
//! verified in three days. Sans-IO: the progress core counts committed records per node, up the
//! tree incrementally, and says which nodes changed since the last flush.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::org::{NodeIdx, Org, Tier};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The record was checked and is correct.
    Verified,
    /// Checked and corrected.
    Updated,
    /// Could not be found (moved away, no such household).
    NotFound,
    /// The resident declined.
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Verified,
        Outcome::Updated,
        Outcome::NotFound,
        Outcome::Refused,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Updated => "updated",
            Outcome::NotFound => "not_found",
            Outcome::Refused => "refused",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Records per outcome, and workers who said they are done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub verified: u64,
    pub updated: u64,
    pub not_found: u64,
    pub refused: u64,
    pub workers_done: u64,
}

impl Counts {
    fn slot(&mut self, o: Outcome) -> &mut u64 {
        match o {
            Outcome::Verified => &mut self.verified,
            Outcome::Updated => &mut self.updated,
            Outcome::NotFound => &mut self.not_found,
            Outcome::Refused => &mut self.refused,
        }
    }
    pub fn records(&self) -> u64 {
        self.verified + self.updated + self.not_found + self.refused
    }
}

/// Which terminals of a subtree a notice or campaign goes to.
pub fn recipients(org: &Org, node: NodeIdx, tiers: &[Tier], except: NodeIdx) -> Vec<NodeIdx> {
    org.subtree(node)
        .map(|i| NodeIdx(i as u32))
        .filter(|&n| n != except && tiers.contains(&org.tier(n)))
        .collect()
}

/// One campaign's progress, kept per node of its subtree.
pub struct Progress {
    org: Arc<Org>,
    pub root: NodeIdx,
    totals: Counts,
    per_node: HashMap<NodeIdx, Counts>,
    done: HashSet<NodeIdx>,
    changed: HashSet<NodeIdx>,
}

impl Progress {
    pub fn new(org: Arc<Org>, root: NodeIdx) -> Progress {
        Progress {
            org,
            root,
            totals: Counts::default(),
            per_node: HashMap::new(),
            done: HashSet::new(),
            changed: HashSet::new(),
        }
    }

    /// The worker and the nodes between it and the campaign's root, root included.
    fn path(&self, worker: NodeIdx) -> impl Iterator<Item = NodeIdx> + '_ {
        let root = self.root;
        std::iter::once(worker)
            .chain(self.org.ancestors(worker))
            .take_while(move |&n| self.org.contains(root, n))
    }

    /// A committed record: `before` is the outcome the same key had (a correction), if any.
    pub fn record(&mut self, worker: NodeIdx, before: Option<Outcome>, after: Outcome) {
        if before == Some(after) {
            return;
        }
        let path: Vec<NodeIdx> = self.path(worker).collect();
        if let Some(b) = before {
            *self.totals.slot(b) = self.totals.slot(b).saturating_sub(1);
        }
        *self.totals.slot(after) += 1;
        for n in path {
            let c = self.per_node.entry(n).or_default();
            if let Some(b) = before {
                *c.slot(b) = c.slot(b).saturating_sub(1);
            }
            *c.slot(after) += 1;
            self.changed.insert(n);
        }
    }

    /// A worker finished its part; counted once.
    pub fn done(&mut self, worker: NodeIdx) -> bool {
        if !self.done.insert(worker) {
            return false;
        }
        self.totals.workers_done += 1;
        let path: Vec<NodeIdx> = self.path(worker).collect();
        for n in path {
            self.per_node.entry(n).or_default().workers_done += 1;
            self.changed.insert(n);
        }
        true
    }

    pub fn totals(&self) -> Counts {
        self.totals
    }

    pub fn node(&self, n: NodeIdx) -> Counts {
        self.per_node.get(&n).copied().unwrap_or_default()
    }

    /// Nodes whose counts changed since the last call.
    pub fn take_changed(&mut self) -> Vec<NodeIdx> {
        let mut v: Vec<NodeIdx> = self.changed.drain().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_up_the_tree_and_corrections_move_counts() {
        let org = Arc::new(crate::org::fixture());
        let n = |s| org.lookup(s).unwrap();
        let mut p = Progress::new(Arc::clone(&org), n("a"));
        p.record(n("w1"), None, Outcome::Verified);
        p.record(n("w2"), None, Outcome::NotFound);
        p.record(n("w1"), Some(Outcome::Verified), Outcome::Updated);
        p.record(n("w1"), Some(Outcome::Updated), Outcome::Updated);
        assert_eq!(p.totals().records(), 2);
        assert_eq!(
            (
                p.totals().updated,
                p.totals().not_found,
                p.totals().verified
            ),
            (1, 1, 0)
        );
        assert_eq!(p.node(n("v")).records(), 2);
        assert_eq!(p.node(n("a")).records(), 2);
        assert_eq!(
            p.node(n("c")).records(),
            0,
            "above the campaign's root: not counted"
        );
        assert_eq!(
            p.take_changed(),
            vec![n("a"), n("t"), n("v"), n("w1"), n("w2")]
        );
        assert!(p.take_changed().is_empty());
        assert!(p.done(n("w1")));
        assert!(!p.done(n("w1")), "once");
        assert_eq!(
            (p.totals().workers_done, p.node(n("t")).workers_done),
            (1, 1)
        );
    }

    #[test]
    fn recipients_are_the_chosen_tiers_of_the_subtree() {
        let org = crate::org::fixture();
        let n = |s| org.lookup(s).unwrap();
        let r = recipients(&org, n("c"), &[Tier::Worker], n("c"));
        assert_eq!(r, vec![n("w1"), n("w2")]);
        let r = recipients(&org, n("a"), &[Tier::Township, Tier::Village], n("a"));
        assert_eq!(r, vec![n("t"), n("v")]);
        assert!(recipients(&org, n("b"), &[Tier::Worker], n("c")).is_empty());
    }
}
