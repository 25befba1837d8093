//! The dispatch table: which service owns each request type, and who hears that a terminal
//! connected or left. Transport reads the envelope and hands the request, with its origin, to
//! the service that owns its type; it never looks inside `data` and knows no domain.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::protocol::{ErrorCode, ProtoError, ReqId};
use crate::auth::{Credential, Role, Seat};
use crate::org::NodeIdx;

/// Identifies one connection across hub nodes and restarts. It is the connection's start time
/// in microseconds, shifted left by `HUB_BITS`, with the hub node's id in the low bits: keys are
/// unique, name the node that holds the connection, and a later connection of a terminal has a
/// larger key whichever node it lands on.
pub type ConnKey = u64;

/// Bits of a connection key that name its hub node.
pub const HUB_BITS: u32 = 12;

/// One hub node of a cluster (one `gridhub serve` process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HubId(pub u16);

impl HubId {
    pub const MAX: u16 = (1 << HUB_BITS) - 1;
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hub-{}", self.0)
    }
}

/// The hub node holding connection `key`.
pub fn hub_of(key: ConnKey) -> HubId {
    HubId((key & HubId::MAX as u64) as u16)
}

/// Where a request came from: the connection (on whichever node holds it), its terminal, and
/// what its credential allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub conn: ConnKey,
    pub endpoint: NodeIdx,
    pub role: Role,
    /// Which of the terminals at its node it is.
    pub seat: Seat,
    /// Unix seconds at which its credential expires.
    pub expires_at: u64,
}

impl Origin {
    pub fn hub(&self) -> HubId {
        hub_of(self.conn)
    }

    /// What its credential says, for the scope checks.
    pub fn credential(&self) -> Credential {
        Credential {
            endpoint: self.endpoint,
            role: self.role,
            seat: self.seat,
            expires_at: self.expires_at,
        }
    }
}

/// One request as the service that owns its type receives it.
#[derive(Debug)]
pub struct Request<'a> {
    pub origin: Origin,
    pub id: Option<ReqId>,
    /// The request's type, as registered in the table.
    pub kind: &'static str,
    /// The raw JSON of `data` (`{}` when the envelope had none); the service parses it.
    pub data: &'a str,
    /// When it was decoded, for latency figures.
    pub at: Instant,
}

impl Request<'_> {
    /// A typed error answering this request.
    pub fn error(&self, e: ProtoError) -> ProtoError {
        e.answering(self.id.clone(), self.kind)
    }
}

/// A request a service refused before acting on it (bad `data`, out of scope).
#[derive(Debug)]
pub enum Refused {
    /// The connection answers it now.
    Now(ProtoError),
    /// The service answers it in its turn, after the answers to requests before it (services
    /// that promise answers in request order); the code is what it answers, for the
    /// connection's count of errors.
    InTurn(ErrorCode),
}

impl From<ProtoError> for Refused {
    fn from(e: ProtoError) -> Refused {
        Refused::Now(e)
    }
}

/// A service that owns some request types. A refusal counts against the connection's abuse
/// limit; everything else the service answers itself, through the backplane, to the request's
/// origin.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused>;
}

/// Told when a terminal's connection is registered on this node and when it has gone.
#[async_trait::async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    async fn opened(&self, origin: Origin, at_ms: u64);
    async fn closed(&self, origin: Origin, at_ms: u64);
    /// Connection ticket `id` (valid until `expires_at`, Unix seconds) opens a connection here:
    /// false if it already opened one on another node of the hub. This node's own check runs
    /// first.
    async fn spend_ticket(&self, _id: &str, _expires_at: u64) -> bool {
        true
    }
}

/// A part of `hello` that a service adds (e.g. `calls`: ICE servers for this terminal).
pub type Greeting = Arc<dyn Fn(&Origin, u64) -> serde_json::Value + Send + Sync>;

/// Request type → the service that owns it; built once at start-up.
#[derive(Default)]
pub struct Table {
    routes: HashMap<&'static str, Arc<dyn Handler>>,
    kinds: Vec<&'static str>,
    greetings: Vec<(&'static str, Greeting)>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// Routes these request types to `handler`.
    ///
    /// # Panics
    /// If a type is routed twice: two services cannot own one type (a wiring mistake at
    /// start-up, never a runtime condition).
    pub fn route(&mut self, kinds: &[&'static str], handler: Arc<dyn Handler>) -> &mut Table {
        for &k in kinds {
            let before = self.routes.insert(k, Arc::clone(&handler));
            assert!(before.is_none(), "request type {k} routed twice");
            self.kinds.push(k);
        }
        self
    }

    /// Adds a section to every `hello`.
    pub fn greet(&mut self, section: &'static str, g: Greeting) -> &mut Table {
        self.greetings.push((section, g));
        self
    }

    /// The owner of a request type, and the type as registered (a `'static` name).
    pub fn get(&self, kind: &str) -> Option<(&'static str, &Arc<dyn Handler>)> {
        self.routes.get_key_value(kind).map(|(k, h)| (*k, h))
    }

    /// Every routed type, in the order routed.
    pub fn kinds(&self) -> &[&'static str] {
        &self.kinds
    }

    pub fn greetings(&self) -> &[(&'static str, Greeting)] {
        &self.greetings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_hub() {
        let key = (1_764_100_000_000_000u64 << HUB_BITS) | 7;
        assert_eq!(hub_of(key), HubId(7));
        assert_eq!(hub_of(HubId::MAX as u64), HubId(HubId::MAX));
    }

    struct Nobody;
    #[async_trait::async_trait]
    impl Handler for Nobody {
        async fn handle(&self, _: Request<'_>) -> Result<(), Refused> {
            Ok(())
        }
    }

    #[test]
    #[should_panic(expected = "routed twice")]
    fn a_type_has_one_owner() {
        let mut t = Table::new();
        t.route(&["a.b"], Arc::new(Nobody));
        t.route(&["a.b"], Arc::new(Nobody));
    }

    #[test]
    fn lookups_return_the_registered_name() {
        let mut t = Table::new();
        t.route(&["x.one", "x.two"], Arc::new(Nobody));
        let owned = String::from("x.two");
        assert_eq!(t.get(&owned).map(|(k, _)| k), Some("x.two"));
        assert!(t.get("x.three").is_none());
        assert_eq!(t.kinds(), ["x.one", "x.two"]);
    }
}
