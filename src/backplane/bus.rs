//! Publish/subscribe of what every hub node hears: presence events, terminals coming and going,
//! committed order changes. On this node subscribers get the published value itself (an `Arc`,
//! nothing encoded); when a link joins this node to others, each event also crosses it once,
//! encoded as JSON, and is decoded there by the same topic type — so everything published is
//! plain serializable data.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::Link;
use super::wire::Wire;

/// A kind of event every node hears. Its fields name terminals by id (`NodeId`), never by a
/// node's local index: other nodes may load the tree in another order.
pub trait Topic: Serialize + DeserializeOwned + Send + Sync + 'static {
    const NAME: &'static str;
}

type Deliver = Arc<
    dyn for<'a> Fn(
            &'a Bus,
            &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>
        + Send
        + Sync,
>;

#[derive(Default)]
pub struct Bus {
    /// Topic → `Arc<Vec<mpsc::Sender<Arc<T>>>>`, replaced whole when a subscriber is added (at
    /// start-up), so a publish only clones an `Arc` under the read lock.
    sinks: RwLock<HashMap<&'static str, Arc<dyn Any + Send + Sync>>>,
    /// Topic → decode and deliver, for events arriving from other nodes.
    decoders: RwLock<HashMap<&'static str, Deliver>>,
    link: OnceLock<Arc<dyn Link>>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Joins the bus to other nodes: from now on every event also crosses the link.
    pub(super) fn attach(&self, link: Arc<dyn Link>) {
        let _ = self.link.set(link);
    }

    /// A new subscriber to `T`, with an inbox of `capacity` (publishers wait when it is full).
    pub fn subscribe<T: Topic>(&self, capacity: usize) -> mpsc::Receiver<Arc<T>> {
        let (tx, rx) = mpsc::channel(capacity);
        let mut sinks = self.sinks.write().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<mpsc::Sender<Arc<T>>> = sinks
            .get(T::NAME)
            .and_then(|s| Arc::clone(s).downcast::<Vec<mpsc::Sender<Arc<T>>>>().ok())
            .map(|v| v.as_ref().clone())
            .unwrap_or_default();
        list.push(tx);
        sinks.insert(T::NAME, Arc::new(list));
        drop(sinks);
        let deliver: Deliver = Arc::new(decode_and_deliver::<T>);
        self.decoders
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(T::NAME, deliver);
        rx
    }

    /// Publishes to every node's subscribers, this node's included. Waits while a subscriber
    /// here is `capacity` events behind.
    pub async fn publish<T: Topic>(&self, event: T) {
        self.publish_elsewhere(&event);
        let _ = self.deliver_here(Arc::new(event)).await;
    }

    /// Publishes to the other nodes' subscribers only: for what this node's already hold (its
    /// own state, told again to nodes that may have missed it).
    pub fn publish_elsewhere<T: Topic>(&self, event: &T) {
        if let Some(link) = self.link.get() {
            // Our own types always serialize.
            let body = serde_json::to_string(event).expect("events serialize");
            link.broadcast(Wire::Event {
                topic: T::NAME.into(),
                body,
            });
        }
    }

    /// Delivers to this node's subscribers only.
    pub(super) async fn deliver_here<T: Topic>(&self, event: Arc<T>) -> Result<(), String> {
        let sinks = self
            .sinks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(T::NAME)
            .cloned();
        let Some(sinks) = sinks.and_then(|s| s.downcast::<Vec<mpsc::Sender<Arc<T>>>>().ok()) else {
            return Ok(());
        };
        for s in sinks.iter() {
            // A subscriber that stopped (shutdown) has nothing left to hear.
            let _ = s.send(Arc::clone(&event)).await;
        }
        Ok(())
    }

    /// An event from another node: decoded by its topic and delivered here.
    pub(super) async fn deliver_encoded(&self, topic: &str, body: &str) -> Result<(), String> {
        let deliver = self
            .decoders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned();
        match deliver {
            Some(d) => d(self, body).await,
            // Nobody here listens to it.
            None => Ok(()),
        }
    }
}

fn decode_and_deliver<'a, T: Topic>(
    bus: &'a Bus,
    body: &'a str,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
    let decoded = serde_json::from_str::<T>(body).map_err(|e| format!("{}: {e}", T::NAME));
    Box::pin(async move { bus.deliver_here(Arc::new(decoded?)).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello(String);
    impl Topic for Hello {
        const NAME: &'static str = "hello";
    }

    #[tokio::test]
    async fn every_subscriber_hears_each_event_once_in_order() {
        let bus = Bus::new();
        let mut a = bus.subscribe::<Hello>(8);
        let mut b = bus.subscribe::<Hello>(8);
        bus.publish(Hello("one".into())).await;
        bus.publish(Hello("two".into())).await;
        for rx in [&mut a, &mut b] {
            assert_eq!(rx.recv().await.unwrap().0, "one");
            assert_eq!(rx.recv().await.unwrap().0, "two");
        }
    }

    #[tokio::test]
    async fn encoded_events_are_decoded_by_their_topic() {
        let bus = Bus::new();
        let mut a = bus.subscribe::<Hello>(8);
        bus.deliver_encoded("hello", r#""from afar""#)
            .await
            .unwrap();
        assert_eq!(a.recv().await.unwrap().0, "from afar");
        assert!(bus.deliver_encoded("hello", "42").await.is_err());
        assert!(bus.deliver_encoded("nobody", "{}").await.is_ok());
    }
}
