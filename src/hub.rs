//! hub — this node: the handles every part of it is reached by. Built by `app::start`.

use std::sync::Arc;

use axum::http::StatusCode;

use crate::auth::Authority;
use crate::backplane::Backplane;
use crate::calls::service::CallsHandle;
use crate::clock::Clock;
use crate::config::Config;
use crate::http::ApiError;
use crate::orders::service::OrdersHandle;
use crate::org::Org;
use crate::outbox::Outbox;
use crate::presence::actor::PresenceHandle;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::transport::Transport;

pub struct Hub {
    pub org: Arc<Org>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub authority: Arc<Authority>,
    pub clock: Clock,
    pub transport: Arc<Transport>,
    pub backplane: Arc<Backplane>,
    pub presence: PresenceHandle,
    /// The stateful services, on the node that runs them (every node but the others of a
    /// cluster, which forward their terminals' requests to it).
    pub services: Option<Services>,
}

pub struct Services {
    pub store: Arc<Store>,
    pub outbox: Outbox,
    pub orders: OrdersHandle,
    pub calls: CallsHandle,
    pub sessions: crate::sessions::service::SessionsHandle,
}

impl Hub {
    /// The stateful services, or the REST error that says they are not on this node.
    pub fn services(&self) -> Result<&Services, ApiError> {
        self.services.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_served_here",
                "this hub node forwards orders and calls to the node that runs them; send REST requests for them there",
            )
        })
    }
}
