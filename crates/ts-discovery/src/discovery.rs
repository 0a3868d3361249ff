//! Sources of the cluster view and the authorization answer built on them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::DiscoveryError;
use crate::localapi::LocalApi;
use crate::model::{ClusterEvent, ClusterView, diff};

/// Capacity of the event channel; a receiver that falls further behind gets
/// `Lagged` and should re-read [`Discovery::state`].
const EVENT_CAPACITY: usize = 1024;

/// How fresh a view is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing has been read yet.
    Never,
    /// Last read successfully at this instant: tokio's clock, so that a
    /// test with paused time sees the view age as that clock advances
    /// (convert a [`std::time::Instant`] with `Instant::from_std`).
    ReadAt(Instant),
    /// A fixed view that cannot go stale.
    Static,
}

/// What a discovery source knows right now.
#[derive(Clone, Debug)]
pub struct DiscoveryState {
    /// The last good view; kept when later reads fail.
    pub view: Option<Arc<ClusterView>>,
    /// When the view was last confirmed.
    pub freshness: Freshness,
    /// The error of the last read, if it failed.
    pub last_error: Option<Arc<DiscoveryError>>,
}

impl DiscoveryState {
    fn empty() -> DiscoveryState {
        DiscoveryState { view: None, freshness: Freshness::Never, last_error: None }
    }

    /// Whether the view is older than `max_age` (or absent).
    pub fn is_stale(&self, max_age: Duration) -> bool {
        match self.freshness {
            Freshness::Never => true,
            Freshness::ReadAt(at) => at.elapsed() > max_age,
            Freshness::Static => false,
        }
    }
}

/// A source of the cluster view.
pub trait Discovery: Send + Sync + 'static {
    /// The current state; `changed()` on the receiver wakes on every update.
    fn state(&self) -> watch::Receiver<DiscoveryState>;

    /// Changes between successive views, as they are seen.
    fn events(&self) -> broadcast::Receiver<ClusterEvent>;

    /// The last good view, if any.
    fn current(&self) -> Option<Arc<ClusterView>> {
        self.state().borrow().view.clone()
    }

    /// Stops the source's background work, if it has any. Idempotent.
    fn stop(&self) {}

    /// An authorizer over this source that refuses everything when the view
    /// is older than `max_staleness`.
    fn authorizer(&self, max_staleness: Duration) -> Authorizer {
        Authorizer { state: self.state(), max_staleness }
    }
}

/// Whether an address may talk to this node: it belongs to a tagged peer or
/// to the node itself. Answered from memory, cheap enough for every
/// connection and request.
///
/// Fails closed: before the first successful read, or once the view is
/// older than the staleness bound, only the node's own addresses are
/// allowed.
#[derive(Clone, Debug)]
pub struct Authorizer {
    state: watch::Receiver<DiscoveryState>,
    max_staleness: Duration,
}

impl Authorizer {
    /// Whether `ip` may connect or be dialed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let state = self.state.borrow();
        let Some(view) = &state.view else { return false };
        let ip = ip.to_canonical();
        if view.self_node.addrs().any(|own| own == ip) {
            return true;
        }
        !state.is_stale(self.max_staleness) && view.contains_addr(ip)
    }

    /// Whether the peer of an accepted stream may talk to this node.
    pub fn allows_peer(&self, peer: ts_transport::PeerAddr) -> bool {
        self.allows(peer.ip())
    }

    /// The stable id of the node that owns `ip`, if it may talk to this
    /// node (by the same rules as [`Authorizer::allows`]): this node for
    /// its own addresses, else the tagged peer that has it while the view
    /// is fresh.
    pub fn owner(&self, ip: IpAddr) -> Option<String> {
        let state = self.state.borrow();
        let view = state.view.as_ref()?;
        let ip = ip.to_canonical();
        if view.self_node.addrs().any(|own| own == ip) {
            return Some(view.self_node.id.0.clone());
        }
        if state.is_stale(self.max_staleness) {
            return None;
        }
        view.member_by_addr(ip).map(|node| node.id.0.clone())
    }
}

/// Publishes a new view: updates the state and sends the events.
fn publish(
    state: &watch::Sender<DiscoveryState>,
    events: &broadcast::Sender<ClusterEvent>,
    view: ClusterView,
    freshness: Freshness,
) {
    state.send_modify(|current| {
        let changes = match &current.view {
            Some(old) if **old == view => Vec::new(),
            Some(old) => diff(old, &view),
            None => view.members.values().cloned().map(ClusterEvent::Joined).collect(),
        };
        for event in changes {
            // No receivers is fine.
            let _ = events.send(event);
        }
        if current.view.as_deref() != Some(&view) {
            current.view = Some(Arc::new(view));
        }
        current.freshness = freshness;
        current.last_error = None;
    });
}

/// A fixed or test-driven cluster, for clusters on in-memory or TCP
/// transports.
#[derive(Debug)]
pub struct StaticDiscovery {
    state: watch::Sender<DiscoveryState>,
    events: broadcast::Sender<ClusterEvent>,
}

impl StaticDiscovery {
    /// A source that reports `view` until told otherwise.
    pub fn new(view: ClusterView) -> StaticDiscovery {
        let discovery = StaticDiscovery {
            state: watch::Sender::new(DiscoveryState::empty()),
            events: broadcast::Sender::new(EVENT_CAPACITY),
        };
        discovery.set(view);
        discovery
    }

    /// Replaces the view; subscribers see the differences as events.
    pub fn set(&self, view: ClusterView) {
        publish(&self.state, &self.events, view, Freshness::Static);
    }
}

impl Discovery for StaticDiscovery {
    fn state(&self) -> watch::Receiver<DiscoveryState> {
        self.state.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
}

/// Settings of [`TailnetDiscovery`].
#[derive(Clone, Debug)]
pub struct TailnetDiscoveryConfig {
    /// The cluster tag, such as `tag:cluster`.
    pub tag: String,
    /// A full re-read this often even without IPN bus news: the safety net
    /// for a missed notification, and what keeps the view fresh.
    pub resync_interval: Duration,
    /// First wait before retrying a failed read or watch; doubles up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl TailnetDiscoveryConfig {
    /// Defaults for `tag`: re-read every 5 s, retry after 100 ms up to 5 s.
    pub fn new(tag: impl Into<String>) -> TailnetDiscoveryConfig {
        TailnetDiscoveryConfig {
            tag: tag.into(),
            resync_interval: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The cluster view of a tailnet node, pushed by its IPN bus: every netmap
/// the node receives triggers a re-read of its status, and a periodic
/// re-read covers anything missed. Read errors keep the last good view.
///
/// Background work stops on [`TailnetDiscovery::shutdown`] or drop.
#[derive(Debug)]
pub struct TailnetDiscovery {
    state: watch::Sender<DiscoveryState>,
    events: broadcast::Sender<ClusterEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl TailnetDiscovery {
    fn abort_tasks(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TailnetDiscovery {
    /// Starts watching the node behind `api`.
    pub fn start(api: LocalApi, config: TailnetDiscoveryConfig) -> TailnetDiscovery {
        let state = watch::Sender::new(DiscoveryState::empty());
        let events = broadcast::Sender::new(EVENT_CAPACITY);
        let refresh = Arc::new(Notify::new());
        // Read at once, without waiting for the watch to connect.
        refresh.notify_one();
        let watcher = tokio::spawn(watch_bus(api.clone(), config.clone(), refresh.clone()));
        let reader = tokio::spawn(read_loop(api, config, refresh, state.clone(), events.clone()));
        TailnetDiscovery { state, events, tasks: vec![watcher, reader] }
    }

    /// Stops the background tasks and waits for them to end.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TailnetDiscovery {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

impl Discovery for TailnetDiscovery {
    fn stop(&self) {
        self.abort_tasks();
    }

    fn state(&self) -> watch::Receiver<DiscoveryState> {
        self.state.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
}

fn next_backoff(current: Duration, config: &TailnetDiscoveryConfig) -> Duration {
    (current * 2).min(config.max_backoff)
}

/// Follows the IPN bus and asks for a re-read on every state or netmap
/// message. Reconnects with backoff.
async fn watch_bus(api: LocalApi, config: TailnetDiscoveryConfig, refresh: Arc<Notify>) {
    let mut backoff = config.min_backoff;
    loop {
        match api.watch_ipn_bus().await {
            Ok(mut watch) => loop {
                match watch.next().await {
                    Ok(Some(notify)) => {
                        backoff = config.min_backoff;
                        if notify.has_netmap || notify.state.is_some() {
                            refresh.notify_one();
                        }
                    }
                    Ok(None) => {
                        tracing::debug!("IPN bus watch ended; reconnecting");
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "IPN bus watch failed; reconnecting");
                        break;
                    }
                }
            },
            Err(err) => tracing::debug!(error = %err, ?backoff, "cannot open the IPN bus watch"),
        }
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff, &config);
    }
}

/// Re-reads the status when asked, every `resync_interval`, and after a
/// failure with backoff.
async fn read_loop(
    api: LocalApi,
    config: TailnetDiscoveryConfig,
    refresh: Arc<Notify>,
    state: watch::Sender<DiscoveryState>,
    events: broadcast::Sender<ClusterEvent>,
) {
    let mut backoff = config.min_backoff;
    let mut wait = config.resync_interval;
    loop {
        tokio::select! {
            _ = refresh.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        match api.status().await {
            Ok(tailnet) => {
                publish(
                    &state,
                    &events,
                    tailnet.cluster(&config.tag),
                    Freshness::ReadAt(Instant::now()),
                );
                backoff = config.min_backoff;
                wait = config.resync_interval;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the tailnet; keeping the last good view");
                state.send_modify(|current| current.last_error = Some(Arc::new(err)));
                wait = backoff.min(config.resync_interval);
                backoff = next_backoff(backoff, &config);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{StableNodeId, TailnetNode};

    fn node(id: &str, last: u8, tagged: bool) -> TailnetNode {
        TailnetNode {
            id: StableNodeId(id.to_owned()),
            hostname: id.to_owned(),
            dns_name: String::new(),
            ipv4: Some(Ipv4Addr::new(100, 64, 0, last)),
            ipv6: None,
            tags: if tagged { BTreeSet::from(["tag:c".to_owned()]) } else { BTreeSet::new() },
            online: true,
            has_path: true,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))
    }

    #[tokio::test(start_paused = true)]
    async fn authorizer_fails_closed_before_the_first_read_and_when_stale() {
        let (tx, rx) = watch::channel(DiscoveryState::empty());
        let auth = Authorizer { state: rx, max_staleness: Duration::from_secs(30) };
        assert!(!auth.allows(ip(1)), "allowed before any read");
        let view = ClusterView::new(
            "tag:c",
            node("me", 1, true),
            [node("peer", 2, true), node("other", 3, false)],
        );
        tx.send_replace(DiscoveryState {
            view: Some(Arc::new(view)),
            freshness: Freshness::ReadAt(Instant::now()),
            last_error: None,
        });
        assert!(auth.allows(ip(1)) && auth.allows(ip(2)));
        assert!(!auth.allows(ip(3)) && !auth.allows(ip(9)));
        // The view ages with the (paused) clock: fresh up to the bound,
        // stale just past it.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(auth.allows(ip(2)), "tagged peer refused on a view exactly as old as the bound");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!auth.allows(ip(2)), "tagged peer allowed on a stale view");
        assert!(auth.allows(ip(1)), "the node itself is always allowed once known");
    }

    #[tokio::test]
    async fn static_discovery_publishes_changes_as_events() {
        let discovery = StaticDiscovery::new(ClusterView::new(
            "tag:c",
            node("me", 1, true),
            [node("a", 2, true)],
        ));
        let mut events = discovery.events();
        let auth = discovery.authorizer(Duration::from_millis(1));
        assert!(auth.allows(ip(2)), "a static view never goes stale");
        discovery.set(ClusterView::new("tag:c", node("me", 1, true), [node("b", 3, true)]));
        assert_eq!(events.recv().await.unwrap(), ClusterEvent::Left(node("a", 2, true)));
        assert_eq!(events.recv().await.unwrap(), ClusterEvent::Joined(node("b", 3, true)));
        assert!(!auth.allows(ip(2)) && auth.allows(ip(3)));
        assert_eq!(discovery.current().unwrap().members.len(), 1);
    }
}
