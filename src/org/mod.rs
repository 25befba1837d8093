//! org — the five-tier command tree (city → county → township → village → grid worker).
//!
//! Nodes are stored in depth-first preorder, so the subtree of node `n` is the contiguous index
//! range `n .. n.end`: "is A inside B's subtree" is two integer comparisons, and a subtree's
//! presence entries are one slice. Every node is also a terminal (endpoint): centers and
//! stations at the upper four tiers, field workers at the leaves.

mod generate;
mod load;

pub use generate::{Preset, generate_csv};
pub use load::{LoadError, OrgIssue, parse_csv};

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Dense index of a node in preorder. Only meaningful for the `Org` that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdx(pub u32);

impl NodeIdx {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// External identifier of a node (and of the terminal at that node), e.g. `230805007`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeId(Box<str>);

/// Longest id accepted anywhere: ids appear in every message, so they stay short.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("id {0:?} contains {1:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar(String, char),
}

impl NodeId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadChar(s.to_owned(), c));
        }
        Ok(NodeId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        NodeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The five command tiers, top down. The derive order is the tier order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    City,
    County,
    Township,
    Village,
    Worker,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::City,
        Tier::County,
        Tier::Township,
        Tier::Village,
        Tier::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::City => "city",
            Tier::County => "county",
            Tier::Township => "township",
            Tier::Village => "village",
            Tier::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The tier directly below this one, if any.
    pub fn below(self) -> Option<Tier> {
        Tier::ALL.get(self as usize + 1).copied()
    }

    /// Centers and stations (every tier but workers) command a subtree.
    pub fn is_center(self) -> bool {
        self != Tier::Worker
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub parent: Option<NodeIdx>,
    pub tier: Tier,
    pub name: Box<str>,
    pub name_en: Box<str>,
    pub location: Option<GeoPoint>,
    /// One past the last preorder index of this node's subtree.
    end: u32,
    children: Range<u32>,
}

/// The loaded tree. Immutable after load; shared as `Arc<Org>`.
#[derive(Debug)]
pub struct Org {
    nodes: Vec<Node>,
    /// Keyed by the id's text, so that a lookup by `&str` needs no `NodeId` (and no allocation):
    /// it runs for every order change a feed hears.
    by_id: HashMap<Box<str>, NodeIdx>,
    /// Children of every node, grouped per parent; `Node::children` is a range into this.
    child_list: Vec<NodeIdx>,
    tier_counts: [usize; 5],
}

impl Org {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn root(&self) -> NodeIdx {
        NodeIdx(0)
    }

    pub fn node(&self, idx: NodeIdx) -> &Node {
        &self.nodes[idx.get()]
    }

    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (NodeIdx, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (NodeIdx(i as u32), n))
    }

    pub fn lookup(&self, id: &str) -> Option<NodeIdx> {
        // Only valid ids were put in, so anything else is simply not found.
        self.by_id.get(id).copied()
    }

    pub fn id(&self, idx: NodeIdx) -> &NodeId {
        &self.nodes[idx.get()].id
    }

    pub fn tier(&self, idx: NodeIdx) -> Tier {
        self.nodes[idx.get()].tier
    }

    pub fn parent(&self, idx: NodeIdx) -> Option<NodeIdx> {
        self.nodes[idx.get()].parent
    }

    pub fn children(&self, idx: NodeIdx) -> &[NodeIdx] {
        let r = &self.nodes[idx.get()].children;
        &self.child_list[r.start as usize..r.end as usize]
    }

    /// Preorder index range of `idx`'s subtree, `idx` included.
    pub fn subtree(&self, idx: NodeIdx) -> Range<usize> {
        idx.get()..self.nodes[idx.get()].end as usize
    }

    /// Number of nodes strictly below `idx`.
    pub fn descendants(&self, idx: NodeIdx) -> usize {
        self.nodes[idx.get()].end as usize - idx.get() - 1
    }

    /// O(1): is `node` inside the subtree rooted at `root` (inclusive)?
    pub fn contains(&self, root: NodeIdx, node: NodeIdx) -> bool {
        root.0 <= node.0 && node.0 < self.nodes[root.get()].end
    }

    /// The child of `idx` whose subtree holds `node`: the next hop from `idx` towards it. `None`
    /// when `node` is `idx` itself or outside its subtree. Children are in preorder, so this is a
    /// binary search.
    pub fn child_toward(&self, idx: NodeIdx, node: NodeIdx) -> Option<NodeIdx> {
        let children = self.children(idx);
        let k = children.partition_point(|c| c.0 <= node.0);
        let c = *children.get(k.checked_sub(1)?)?;
        self.contains(c, node).then_some(c)
    }

    /// `idx`'s ancestors, nearest first, excluding `idx` itself (at most four).
    pub fn ancestors(&self, idx: NodeIdx) -> Ancestors<'_> {
        Ancestors {
            org: self,
            next: self.parent(idx),
        }
    }

    pub fn tier_counts(&self) -> [usize; 5] {
        self.tier_counts
    }

    /// A hash of the tree's shape (ids and parents, in preorder): differs when the file changes
    /// in a way that moves nodes.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for n in &self.nodes {
            let parent = n.parent.map_or(u32::MAX, |p| p.0);
            for b in n.id.as_str().bytes().chain(parent.to_le_bytes()) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}-{}", self.nodes.len())
    }

    /// Nodes that the city (root) reaches point to point: every node but the root.
    pub fn dispatchable(&self) -> usize {
        self.nodes.len().saturating_sub(1)
    }
}

pub struct Ancestors<'a> {
    org: &'a Org,
    next: Option<NodeIdx>,
}

impl Iterator for Ancestors<'_> {
    type Item = NodeIdx;
    fn next(&mut self) -> Option<NodeIdx> {
        let cur = self.next?;
        self.next = self.org.parent(cur);
        Some(cur)
    }
}

/// A small tree for unit tests: city `c`; counties `a` and `b`; under `a` the chain
/// `t` (township) → `v` (village) → workers `w1`, `w2`.
#[cfg(test)]
pub(crate) fn fixture() -> Org {
    parse_csv(
        "id,parent,tier,name,name_en,lat,lon\n\
         c,,city,C,C,46.8,130.3\n\
         a,c,county,A,A,,\n\
         t,a,township,T,T,,\n\
         v,t,village,V,V,,\n\
         w1,v,worker,W1,W1,,\n\
         w2,v,worker,W2,W2,,\n\
         b,c,county,B,B,,\n",
    )
    .expect("fixture is valid")
}

/// A node as parsed from a file, before the tree is checked and indexed.
#[derive(Debug, Clone)]
pub struct RawNode {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    pub tier: Tier,
    pub name: String,
    pub name_en: String,
    pub location: Option<GeoPoint>,
}
