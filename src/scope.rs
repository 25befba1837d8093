//! scope — who may see what, from the org tree and a credential's role. Pure functions.
//!
//! Operators and stations see their whole subtree; a worker sees itself and its own chain of
//! command, never its siblings. Every REST route and WebSocket request asks here.

use crate::auth::{Credential, Role};
use crate::org::{NodeIdx, Org};

/// May `who` watch (or list) the whole subtree rooted at `node`?
pub fn can_watch_subtree(org: &Org, who: &Credential, node: NodeIdx) -> bool {
    match who.role {
        Role::Worker => node == who.endpoint,
        Role::Operator | Role::Station | Role::Observer => org.contains(who.endpoint, node),
    }
}

/// May `who` see the single node/terminal `target`?
pub fn can_see(org: &Org, who: &Credential, target: NodeIdx) -> bool {
    can_watch_subtree(org, who, target) || org.ancestors(who.endpoint).any(|a| a == target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_see_their_subtree_workers_their_chain() {
        let org = crate::org::fixture();
        let id = |s| org.lookup(s).unwrap();
        let op = Credential {
            endpoint: id("a"),
            role: Role::Operator,
            seat: crate::auth::Seat::MAIN,
            expires_at: 0,
        };
        assert!(can_watch_subtree(&org, &op, id("a")));
        assert!(can_watch_subtree(&org, &op, id("w2")));
        assert!(!can_watch_subtree(&org, &op, id("b")));
        assert!(!can_watch_subtree(&org, &op, id("c")));
        assert!(can_see(&org, &op, id("c")), "its own superior");
        let w = Credential {
            endpoint: id("w1"),
            role: Role::Worker,
            seat: crate::auth::Seat::MAIN,
            expires_at: 0,
        };
        assert!(can_watch_subtree(&org, &w, id("w1")));
        assert!(!can_watch_subtree(&org, &w, id("v")));
        assert!(can_see(&org, &w, id("v")) && can_see(&org, &w, id("c")));
        assert!(!can_see(&org, &w, id("w2")), "not a sibling");
        assert!(!can_see(&org, &w, id("b")));
    }
}
