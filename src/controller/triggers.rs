//! Reconcile triggers: watch events turned into objects to reconcile for,
//! never ahead of the cache they feed, and never paused for long.
//!
//! A reflector fills its store from a relist in two steps: the objects
//! (`InitApply`) go into a buffer, and the store switches to that buffer only
//! at `InitDone`. kube-runtime's `touched_objects` triggers on each
//! `InitApply`, so a reconcile may start while the store still holds the
//! copies from before the relist, plan from them, and then wait for a change
//! that has already happened. After an API server restart that left Rollouts
//! waiting on finished AnalysisRuns for good. Here relisted objects trigger
//! only once the store holds them.

use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{Error, Event};

/// The pause of a controller's merged trigger stream after one of its
/// streams reports an error. kube-runtime's default grows from 0.8 s to
/// 30 s (plus jitter) and resets only when some trigger yields an object, so
/// the handful of watch errors an API server restart causes (each watch
/// resuming at a version the new server no longer has, then relisting)
/// stopped every trigger for about a minute. Each watch already backs off
/// on its own, so the merged stream only needs a short breather.
pub struct TriggerPause;

const TRIGGER_PAUSE: Duration = Duration::from_millis(100);

impl Iterator for TriggerPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(TRIGGER_PAUSE)
    }
}

impl Backoff for TriggerPause {
    fn reset(&mut self) {}
}

/// The objects to reconcile for, deletions included (for related objects:
/// a deleted ReplicaSet wakes its Rollout), from a reflector's event stream
/// (the store is updated before an event comes out of it).
pub fn settled_objects<K, S>(events: S) -> impl Stream<Item = Result<K, Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, Error>> + Send,
{
    settled(events, true)
}

/// The same without deletions, for the controller's own kind: a deleted
/// object is no longer in the store to be reconciled.
pub fn settled_applied<K, S>(events: S) -> impl Stream<Item = Result<K, Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, Error>> + Send,
{
    settled(events, false)
}

fn settled<K, S>(events: S, with_deletes: bool) -> impl Stream<Item = Result<K, Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, Error>> + Send,
{
    events
        .scan(Vec::new(), move |relisted: &mut Vec<K>, event| {
            let ready: Vec<Result<K, Error>> = match event {
                Ok(Event::Apply(object)) => vec![Ok(object)],
                Ok(Event::Delete(object)) if with_deletes => vec![Ok(object)],
                Ok(Event::Delete(_)) => Vec::new(),
                Ok(Event::Init) => {
                    relisted.clear();
                    Vec::new()
                }
                Ok(Event::InitApply(object)) => {
                    relisted.push(object);
                    Vec::new()
                }
                Ok(Event::InitDone) => std::mem::take(relisted).into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            futures::future::ready(Some(stream::iter(ready)))
        })
        .flatten()
}

/// One reflector's events for two controllers, so both plan from one cache
/// and one watch. The first stream gets everything, errors included; the
/// second the events only (its controller reads the same store). The
/// bounded channels pass backpressure on: neither controller runs more than
/// a buffer ahead of the other. Ends at `stop` or when both are gone.
pub fn fan_out<K, S>(
    events: S,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (
    impl Stream<Item = Result<Event<K>, Error>> + Send,
    impl Stream<Item = Result<Event<K>, Error>> + Send,
)
where
    K: Clone + Send + 'static,
    S: Stream<Item = Result<Event<K>, Error>> + Send + 'static,
{
    use futures::SinkExt;
    let (mut first, first_rx) = futures::channel::mpsc::channel(FAN_OUT_BUFFER);
    let (mut second, second_rx) = futures::channel::mpsc::channel(FAN_OUT_BUFFER);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut stop = std::pin::pin!(stop);
        loop {
            let next = tokio::select! {
                _ = &mut stop => break,
                next = events.next() => next,
            };
            let Some(item) = next else { break };
            if let Ok(event) = &item {
                let _ = second.send(Ok(event.clone())).await;
            }
            let _ = first.send(item).await;
            if first.is_closed() && second.is_closed() {
                break;
            }
        }
    });
    (first_rx, second_rx)
}

const FAN_OUT_BUFFER: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::{WatchStreamExt, reflector::Store};

    fn config_map(name: &str, version: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version}
        }))
        .expect("fixture")
    }

    /// What the store shows for each triggered object at the moment the
    /// trigger comes out: the version it was triggered for, never an older one.
    async fn seen_at_trigger(events: Vec<Event<ConfigMap>>) -> Vec<(String, Option<String>)> {
        let (store, writer): (Store<ConfigMap>, _) = reflector::store();
        let events = reflector::reflector(writer, stream::iter(events.into_iter().map(Ok)));
        settled_objects(events)
            .map(|object| {
                let object = object.expect("no errors in the fixture");
                let cached = store
                    .get(&ObjectRef::from_obj(&object))
                    .and_then(|c| c.metadata.resource_version.clone());
                (object.metadata.resource_version.unwrap_or_default(), cached)
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn relisted_objects_trigger_only_once_the_store_holds_them() {
        let seen = seen_at_trigger(vec![
            Event::Init,
            Event::InitApply(config_map("a", "1")),
            Event::InitDone,
            Event::Apply(config_map("a", "2")),
            // A relist after a desync (the API server restarted, say).
            Event::Init,
            Event::InitApply(config_map("a", "5")),
            Event::InitApply(config_map("b", "5")),
            Event::InitDone,
        ])
        .await;
        assert_eq!(
            seen,
            [
                ("1".to_string(), Some("1".to_string())),
                ("2".to_string(), Some("2".to_string())),
                ("5".to_string(), Some("5".to_string())),
                ("5".to_string(), Some("5".to_string())),
            ]
        );
    }

    #[tokio::test]
    async fn fan_out_gives_both_sides_every_event_and_only_the_first_the_errors() {
        let events = stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(config_map("a", "1"))),
            Ok(Event::InitDone),
            Err(Error::NoResourceVersion),
            Ok(Event::Apply(config_map("a", "2"))),
        ]);
        let (first, second) = fan_out(events, futures::future::pending::<()>());
        let versions = |items: Vec<Result<ConfigMap, Error>>| -> Vec<String> {
            items
                .into_iter()
                .map(|i| {
                    i.map_or("error".into(), |o| {
                        o.metadata.resource_version.unwrap_or_default()
                    })
                })
                .collect()
        };
        let (first, second) = futures::join!(
            settled_objects(first).collect::<Vec<_>>(),
            settled_applied(second).collect::<Vec<_>>()
        );
        assert_eq!(versions(first), ["1", "error", "2"]);
        assert_eq!(versions(second), ["1", "2"]);
    }

    #[tokio::test]
    async fn touched_objects_would_have_run_ahead_of_the_store() {
        // The behaviour this module exists to avoid, kept as a check that
        // the test above can tell the difference.
        let (store, writer): (Store<ConfigMap>, _) = reflector::store();
        let events = reflector::reflector(
            writer,
            stream::iter(
                [
                    Event::Init,
                    Event::InitApply(config_map("a", "1")),
                    Event::InitDone,
                    Event::Init,
                    Event::InitApply(config_map("a", "5")),
                    Event::InitDone,
                ]
                .into_iter()
                .map(Ok),
            ),
        );
        let stale: Vec<Option<String>> = events
            .touched_objects()
            .map(|object| {
                let object = object.expect("no errors");
                store
                    .get(&ObjectRef::from_obj(&object))
                    .and_then(|c| c.metadata.resource_version.clone())
            })
            .collect()
            .await;
        assert_eq!(stale, [None, Some("1".to_string())]);
    }
}
