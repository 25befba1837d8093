//! This node's live connections, found by terminal and by connection key, and the keys minted
//! for new ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::conn::Conn;
use super::dispatch::{ConnKey, HUB_BITS, HubId};
use crate::auth::Seat;
use crate::org::NodeIdx;

/// A terminal's connections on this node, one per seat; nearly always one.
pub type Seats = SmallVec<[Arc<Conn>; 1]>;

/// One connection per seat of a terminal on this node (the newer wins), indexed both ways.
/// How far ahead of this node's clock another node's connection keys are followed (a minute).
const MAX_SKEW_US: u64 = 60_000_000;

pub struct Registry {
    hub: HubId,
    by_endpoint: DashMap<NodeIdx, Seats>,
    by_key: DashMap<ConnKey, Arc<Conn>>,
    /// The last key minted; keys only grow.
    last_key: AtomicU64,
    /// Signalled whenever a connection leaves; the drain waits on it.
    pub(super) left: Notify,
}

impl Registry {
    pub fn new(hub: HubId) -> Registry {
        Registry {
            hub,
            by_endpoint: DashMap::new(),
            by_key: DashMap::new(),
            last_key: AtomicU64::new(0),
            left: Notify::new(),
        }
    }

    pub fn hub(&self) -> HubId {
        self.hub
    }

    /// A key for a new connection opened at `now_us` (Unix microseconds): later than every key
    /// this node minted before, and than any minted at an earlier time by any node.
    pub fn mint_key(&self, now_us: u64) -> ConnKey {
        let candidate = (now_us << HUB_BITS) | self.hub.0 as u64;
        let step = 1 << HUB_BITS;
        let mut last = self.last_key.load(Relaxed);
        loop {
            let key = candidate.max(last + step);
            match self
                .last_key
                .compare_exchange_weak(last, key, Relaxed, Relaxed)
            {
                Ok(_) => return key,
                Err(now) => last = now,
            }
        }
    }

    /// A key another node minted, as heard at `now_us`: every key this node mints from now on
    /// is larger, so a terminal that connects here after its connection elsewhere was announced
    /// wins its seat even if this node's clock runs behind that node's. A key from further ahead
    /// than `MAX_SKEW_US` (a clock gone wrong, a forged key) is not followed: it would carry
    /// this node's keys with it, for as long as the skew.
    pub fn witness(&self, key: ConnKey, now_us: u64) {
        if key >> HUB_BITS > now_us.saturating_add(MAX_SKEW_US) {
            return;
        }
        let mask = HubId::MAX as u64;
        let floor = (key & !mask) | self.hub.0 as u64;
        self.last_key.fetch_max(floor, Relaxed);
    }

    /// Every seat of the terminal connected here.
    pub fn seats(&self, ep: NodeIdx) -> Seats {
        self.by_endpoint
            .get(&ep)
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Calls `f` with each connection of the terminal here, without copying the list.
    pub fn each_seat(&self, ep: NodeIdx, mut f: impl FnMut(&Arc<Conn>)) {
        if let Some(s) = self.by_endpoint.get(&ep) {
            s.iter().for_each(&mut f);
        }
    }

    pub fn seat(&self, ep: NodeIdx, seat: Seat) -> Option<Arc<Conn>> {
        let s = self.by_endpoint.get(&ep)?;
        s.iter().find(|c| c.seat == seat).cloned()
    }

    pub fn by_key(&self, key: ConnKey) -> Option<Arc<Conn>> {
        self.by_key.get(&key).map(|c| Arc::clone(&c))
    }

    /// Connections on this node.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Terminals with a connection on this node.
    pub fn terminals(&self) -> usize {
        self.by_endpoint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Registers `conn`; returns the connection it replaces, if its seat was connected.
    pub(super) fn insert(&self, conn: Arc<Conn>) -> Option<Arc<Conn>> {
        self.by_key.insert(conn.key, Arc::clone(&conn));
        let mut seats = self.by_endpoint.entry(conn.endpoint).or_default();
        match seats.iter_mut().find(|c| c.seat == conn.seat) {
            Some(old) => Some(std::mem::replace(old, conn)),
            None => {
                seats.push(conn);
                None
            }
        }
    }

    /// Unregisters `conn`; its seat stays registered if a newer connection took its place.
    pub(super) fn remove(&self, conn: &Conn) {
        self.by_key.remove(&conn.key);
        if let dashmap::Entry::Occupied(mut e) = self.by_endpoint.entry(conn.endpoint) {
            e.get_mut().retain(|c| c.key != conn.key);
            if e.get().is_empty() {
                e.remove();
            }
        }
        self.left.notify_waiters();
    }

    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for c in self.by_key.iter() {
            f(c.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_grow_and_carry_the_hub() {
        let r = Registry::new(HubId(5));
        let a = r.mint_key(1_000);
        let b = r.mint_key(1_000);
        let c = r.mint_key(999);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(
            [a, b, c]
                .iter()
                .all(|&k| super::super::dispatch::hub_of(k) == HubId(5))
        );
        let other = Registry::new(HubId(6));
        assert!(
            other.mint_key(2_000) > c,
            "a later connection elsewhere has a larger key"
        );
    }

    #[test]
    fn a_key_minted_after_another_nodes_is_larger_even_on_a_clock_behind() {
        // Node 2 minted at t; node 1, whose clock reads 3 ms earlier, heard of it first.
        let (one, two) = (Registry::new(HubId(1)), Registry::new(HubId(2)));
        let t = 1_764_100_000_000_000u64;
        let theirs = two.mint_key(t);
        assert!(
            one.mint_key(t - 3_000) < theirs,
            "unheard, the clock decides"
        );
        one.witness(theirs, t - 3_000);
        let ours = one.mint_key(t - 3_000);
        assert!(ours > theirs, "{ours} > {theirs}");
        assert_eq!(super::super::dispatch::hub_of(ours), HubId(1));
        // Hearing of an older key changes nothing.
        one.witness(theirs - (10 << HUB_BITS), t);
        let next = one.mint_key(0);
        assert!(next > ours && next < ours + (2 << HUB_BITS));
        // Nor does a key from an hour ahead: this node's keys stay on its own clock.
        one.witness(two.mint_key(t + 3_600_000_000), t);
        assert!(one.mint_key(t) < (t + 1_000) << HUB_BITS);
    }
}
