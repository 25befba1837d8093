//! The city's side of the simulation: a stream of citizen requests taken in at the city (as the
//! 12345 hotline's integration would, over REST), and each one carried down the tiers and back
//! up — dispatched, reviewed, rated, published, archived — through the same REST API, as each
//! center in turn. Only the orders it took in itself: what people take in on their consoles is
//! theirs. The grid workers' side is in `terminal`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::script::{self, Pace, Rng};
use crate::auth::Role;
use crate::hub::Hub;
use crate::org::{NodeIdx, Tier};

/// Orders of its own in flight at most: the demo is a view, not a load test.
const MAX_OPEN: usize = 400;
const TOKEN_TTL: u64 = 7 * 24 * 3600;

pub struct Driver {
    hub: Arc<Hub>,
    router: Router,
    rng: Rng,
    pace: Pace,
    every: Duration,
    tokens: HashMap<NodeIdx, String>,
    /// Order id → when to look at it next.
    open: BTreeMap<u64, Instant>,
    workers: Vec<NodeIdx>,
    made: u64,
}

impl Driver {
    pub fn new(
        hub: Arc<Hub>,
        workers: Vec<NodeIdx>,
        seed: u64,
        pace: Pace,
        per_minute: f64,
    ) -> Driver {
        let router = crate::api::router(Arc::clone(&hub));
        Driver {
            hub,
            router,
            rng: Rng::new(seed),
            pace,
            every: Duration::from_secs_f64(60.0 / per_minute.max(0.01)),
            tokens: HashMap::new(),
            open: BTreeMap::new(),
            workers,
            made: 0,
        }
    }

    fn token(&mut self, who: NodeIdx) -> String {
        let hub = Arc::clone(&self.hub);
        self.tokens
            .entry(who)
            .or_insert_with(|| {
                let org = &hub.org;
                hub.authority
                    .mint(
                        org,
                        org.id(who).as_str(),
                        Role::default_for(org.tier(who)),
                        TOKEN_TTL,
                        hub.clock.now_ms() / 1000,
                    )
                    .expect("the demo mints for nodes of the tree")
            })
            .clone()
    }

    async fn rest(
        &mut self,
        method: Method,
        path: &str,
        who: NodeIdx,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let token = self.token(who);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .map_err(|e| e.to_string())?;
        let res = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{path}: {status} {}", v["error"]["code"]))
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut next_create = Instant::now() + Duration::from_secs(5);
        let mut tick =
            tokio::time::interval((self.pace.step_after.0 / 2).max(Duration::from_millis(20)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if now >= next_create {
                next_create = now + self.rng.exp(self.every);
                if self.open.len() < MAX_OPEN
                    && let Err(e) = self.create().await
                {
                    tracing::debug!("demo intake: {e}");
                }
            }
            let due: Vec<u64> = self
                .open
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let wait = match self.step(id).await {
                    Ok(Some(wait)) => wait,
                    Ok(None) => {
                        self.open.remove(&id);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("demo order {id}: {e}");
                        self.pace.step_after.1
                    }
                };
                self.open.insert(id, Instant::now() + wait);
            }
        }
    }

    async fn create(&mut self) -> Result<(), String> {
        let r = script::request(&mut self.rng);
        if self.workers.is_empty() {
            return Err("no simulated workers".into());
        }
        let at = self.workers[self.rng.below(self.workers.len())];
        let city = self.hub.org.root();
        self.made += 1;
        let body = json!({
            "source": r.source, "category": r.category, "priority": r.priority,
            "description": r.description,
            "location": {"node": self.hub.org.id(at).as_str()},
            "idempotency_key": format!("demo-{}-{}", self.hub.clock.now_ms(), self.made),
        });
        let v = self
            .rest(Method::POST, "/api/v1/orders", city, Some(body))
            .await?;
        let id = v["order"]["id"].as_u64().ok_or("no order id")?;
        let wait = self
            .rng
            .between(self.pace.step_after.0, self.pace.step_after.1);
        self.open.insert(id, Instant::now() + wait);
        Ok(())
    }

    /// One move on an order by whoever holds it; `None` once it is archived.
    async fn step(&mut self, id: u64) -> Result<Option<Duration>, String> {
        let city = self.hub.org.root();
        let o = self
            .rest(Method::GET, &format!("/api/v1/orders/{id}"), city, None)
            .await?["order"]
            .clone();
        let org = Arc::clone(&self.hub.org);
        let holder = org
            .lookup(o["holder"].as_str().unwrap_or(""))
            .ok_or("unknown holder")?;
        let state = o["state"].as_str().unwrap_or("");
        let pace = (self.pace.step_after.0, self.pace.step_after.1);
        if state == "archived" {
            return Ok(None);
        }
        if org.tier(holder) == Tier::Worker {
            // The worker's phone does its part.
            return Ok(Some(self.pace.step_after.1));
        }
        let act = |a: &str| format!("/api/v1/orders/{id}/{a}");
        match state {
            "intake" | "dispatched" | "in_progress" | "supervised" => {
                let at = org
                    .lookup(o["location"]["node"].as_str().unwrap_or(""))
                    .ok_or("unknown place")?;
                let to = org
                    .children(holder)
                    .iter()
                    .copied()
                    .find(|&c| org.subtree(c).contains(&(at.0 as usize)))
                    .ok_or("the place is not below the holder")?;
                self.rest(
                    Method::POST,
                    &act("dispatch"),
                    holder,
                    Some(json!({"to": org.id(to).as_str()})),
                )
                .await?;
            }
            "result_reported" if o["reviewed"] != true => {
                let approve = self.rng.unit() < 0.96;
                let mut body = json!({"approve": approve});
                if !approve {
                    body["comment"] = json!("请补充处理后的现场情况");
                }
                self.rest(Method::POST, &act("review"), holder, Some(body))
                    .await?;
            }
            "result_reported" => {
                // The seed's completion: 97.4 % of those asked were satisfied.
                let satisfied = self.rng.unit() < 0.974;
                let score = if satisfied {
                    4 + self.rng.below(2)
                } else {
                    1 + self.rng.below(2)
                };
                self.rest(
                    Method::POST,
                    &act("rate"),
                    holder,
                    Some(json!({"score": score, "satisfied": satisfied})),
                )
                .await?;
            }
            "rated" => {
                let summary = o["result"]["text"].as_str().unwrap_or("已办结").to_owned();
                self.rest(
                    Method::POST,
                    &act("publish"),
                    holder,
                    Some(json!({"summary": summary})),
                )
                .await?;
            }
            "published" => {
                self.rest(Method::POST, &act("archive"), holder, None)
                    .await?;
            }
            _ => {}
        }
        Ok(Some(self.rng.between(pace.0, pace.1)))
    }
}
