//! The waits under way on this node for another node to let go of a client (see
//! [`super::RemoteLink::release_on`]), so that this node's own answer to a release can wait for them.
//!
//! A client reconnecting quickly A → B → C: B's connection waits for A to close the old connection
//! before its CONNACK; C's waits for B. B's session ends at once when C's take applies (its connection
//! was not served yet), but A may not have let go yet: B answers C only once its own wait for A is over
//! (A answered, or A can no longer serve without having applied B's take), so no connection of the
//! client is served on A once C's is. A wait towards the node that asks is not waited for (A → B → A:
//! A's new connection is not the one B waited on), and every wait is bounded by its own deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One wait under way: its id, the node waited for (`None`: not known yet, a clean start's claim still
/// on its way), and whether it is over.
struct Wait {
    id: u64,
    node: Option<u64>,
    over: watch::Receiver<bool>,
}

/// The waits under way, by client id.
#[derive(Default)]
pub struct Releases {
    waits: Mutex<HashMap<String, Vec<Wait>>>,
    next: std::sync::atomic::AtomicU64,
}

/// A wait under way; over when dropped. It begins when the registry opens the session (before the
/// connection could be told anything), so an answer to a release never misses it.
pub struct Waiting {
    releases: Arc<Releases>,
    client_id: String,
    id: u64,
    over: watch::Sender<bool>,
}

impl Releases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Wait>>> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node starts waiting for `node` (`None`: a node not known yet) to let go of `client_id`.
    pub fn begin(self: &Arc<Self>, client_id: &str, node: Option<u64>) -> Waiting {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (over, rx) = watch::channel(false);
        self.lock()
            .entry(client_id.to_string())
            .or_default()
            .push(Wait { id, node, over: rx });
        Waiting {
            releases: self.clone(),
            client_id: client_id.to_string(),
            id,
            over,
        }
    }

    /// Resolves once every wait under way now for `client_id`, towards nodes other than `asker`, is over.
    pub fn settled(
        &self,
        client_id: &str,
        asker: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pending: Vec<watch::Receiver<bool>> = self
            .lock()
            .get(client_id)
            .map(|ws| {
                ws.iter()
                    .filter(|w| w.node != Some(asker))
                    .map(|w| w.over.clone())
                    .collect()
            })
            .unwrap_or_default();
        async move {
            for mut over in pending {
                // A sender gone (the wait dropped without saying so) is over too.
                let _ = over.wait_for(|o| *o).await;
            }
        }
    }

    /// How many client ids have a wait under way.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().len()
    }
}

impl Waiting {
    /// The node waited for is known now.
    pub fn towards(&self, node: u64) {
        let mut waits = self.releases.lock();
        if let Some(w) = waits
            .get_mut(&self.client_id)
            .and_then(|ws| ws.iter_mut().find(|w| w.id == self.id))
        {
            w.node = Some(node);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.over.send(true);
        let mut waits = self.releases.lock();
        if let Some(ws) = waits.get_mut(&self.client_id) {
            ws.retain(|w| w.id != self.id);
            if ws.is_empty() {
                waits.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn an_answer_waits_for_this_nodes_own_wait_for_the_client_but_not_for_the_asker() {
        let r = Arc::new(Releases::default());
        // B waits for A (node 1) to let go of "c"; C (node 3) asks B to let go.
        let towards_a = r.begin("c", Some(1));
        let mut answer = Box::pin(r.settled("c", 3));
        assert!(
            (&mut answer).now_or_never().is_none(),
            "answered while the wait for node 1 is under way"
        );
        // Node 1 itself asking is not held up by the wait towards it, nor is another client's answer.
        assert!(r.settled("c", 1).now_or_never().is_some());
        assert!(r.settled("other", 3).now_or_never().is_some());
        drop(towards_a);
        assert!(
            answer.now_or_never().is_some(),
            "answered once the wait is over"
        );
        assert_eq!(r.clients(), 0, "a wait that is over is forgotten");
    }

    #[tokio::test]
    async fn a_wait_begun_after_the_question_does_not_hold_the_answer() {
        let r = Arc::new(Releases::default());
        let first = r.begin("c", Some(1));
        let answer = r.settled("c", 3);
        let _later = r.begin("c", Some(2));
        drop(first);
        assert!(
            answer.now_or_never().is_some(),
            "only the waits under way when asked count"
        );
        assert_eq!(r.clients(), 1);
    }

    #[test]
    fn a_wait_towards_a_node_not_known_yet_holds_every_answer_until_it_is() {
        let r = Arc::new(Releases::default());
        let claim = r.begin("c", None);
        assert!(r.settled("c", 1).now_or_never().is_none());
        assert!(r.settled("c", 3).now_or_never().is_none());
        claim.towards(1);
        assert!(
            r.settled("c", 1).now_or_never().is_some(),
            "known now: the asker is the node waited for"
        );
        assert!(r.settled("c", 3).now_or_never().is_none());
    }
}
