//! Discovery on the real local tailnet: tags set through control's admin API
//! reach a node's cluster view and its authorizer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tests::tailnet::LocalTailnet;
use ts_discovery::{
    Discovery, DiscoveryError, DiscoveryState, LocalApi, LocalApiLimits, TailnetDiscovery,
    TailnetDiscoveryConfig,
};
use ts_transport::tsnet::{NodeOptions, TsnetTransport};

const TAG: &str = "tag:cluster";
/// The bound the issue sets for a tag change to reach a peer.
const PROPAGATION: Duration = Duration::from_secs(2);

fn discovery_for(node: &TsnetTransport) -> TailnetDiscovery {
    let api = LocalApi::for_node(node, LocalApiLimits::default()).expect("LocalAPI");
    TailnetDiscovery::start(api, TailnetDiscoveryConfig::new(TAG))
}

/// Waits until `ok` holds for the discovery state; returns how long it took.
async fn wait_for(
    discovery: &TailnetDiscovery,
    limit: Duration,
    what: &str,
    ok: impl Fn(&DiscoveryState) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut state = discovery.state();
    let reached = tokio::time::timeout(limit, async {
        loop {
            if ok(&state.borrow_and_update()) {
                return;
            }
            state.changed().await.expect("discovery stopped");
        }
    })
    .await;
    let took = started.elapsed();
    assert!(
        reached.is_ok(),
        "{what}: not reached within {limit:?}; last state {:?}",
        *state.borrow()
    );
    took
}

fn has_member(state: &DiscoveryState, ip: IpAddr) -> bool {
    state.view.as_ref().is_some_and(|view| view.member_by_addr(ip).is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_a_peer_adds_it_and_untagging_removes_it_within_two_seconds() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("disc-a").await.unwrap();
    let (b, b_addrs) = tailnet.node("disc-b").await.unwrap();
    tailnet.set_tags("disc-a", &[TAG]).await.unwrap();
    let discovery = discovery_for(&a);
    let auth = discovery.authorizer(Duration::from_secs(30));

    // The node's own tag is reported.
    wait_for(&discovery, Duration::from_secs(10), "own tag", |s| {
        s.view.as_ref().is_some_and(|v| v.self_tagged())
    })
    .await;
    let b_v4 = IpAddr::V4(b_addrs.v4.unwrap());
    let b_v6 = IpAddr::V6(b_addrs.v6.unwrap());
    assert!(!auth.allows(b_v4) && !auth.allows(b_v6), "untagged peer allowed");

    tailnet.set_tags("disc-b", &[TAG]).await.unwrap();
    let took =
        wait_for(&discovery, PROPAGATION, "tagged peer joins", |s| has_member(s, b_v4)).await;
    eprintln!("tag reached the peer's view in {took:?}");
    // Both address families of the tagged peer are allowed, from memory.
    assert!(auth.allows(b_v4), "tagged peer's IPv4 refused");
    assert!(auth.allows(b_v6), "tagged peer's IPv6 refused");
    // The same address written as IPv4-mapped IPv6 is the same peer.
    let mapped = IpAddr::V6(b_addrs.v4.unwrap().to_ipv6_mapped());
    assert!(auth.allows(mapped), "IPv4-mapped form of the peer's address refused");
    let view = discovery.current().unwrap();
    let member = view.member_by_addr(b_v6).expect("member found by its IPv6 address");
    assert_eq!(member.hostname, "disc-b");
    assert!(member.has_tag(TAG));

    tailnet.set_tags("disc-b", &[]).await.unwrap();
    let took =
        wait_for(&discovery, PROPAGATION, "untagged peer leaves", |s| !has_member(s, b_v4)).await;
    eprintln!("untag reached the peer's view in {took:?}");
    assert!(!auth.allows(b_v4) && !auth.allows(b_v6), "untagged peer still allowed");

    discovery.shutdown().await;
    a.close().await;
    b.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_stays_in_the_cluster_but_shows_offline() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("off-a").await.unwrap();
    let (b, b_addrs) = tailnet.node("off-b").await.unwrap();
    let b_v4 = IpAddr::V4(b_addrs.v4.unwrap());
    tailnet.set_tags("off-a", &[TAG]).await.unwrap();
    tailnet.set_tags("off-b", &[TAG]).await.unwrap();
    let discovery = discovery_for(&a);
    let online = |s: &DiscoveryState| {
        s.view.as_ref().and_then(|v| v.member_by_addr(b_v4).map(|m| m.online)).unwrap_or(false)
    };
    wait_for(&discovery, Duration::from_secs(10), "member online", online).await;

    b.close().await;
    let took = wait_for(&discovery, Duration::from_secs(10), "member offline", |s| {
        has_member(s, b_v4) && !online(s)
    })
    .await;
    eprintln!("stopped member shown offline after {took:?}");
    let view = discovery.current().unwrap();
    assert!(view.member_by_addr(b_v4).is_some(), "a stopped member must stay in the cluster");
    assert!(
        discovery.authorizer(Duration::from_secs(30)).allows(b_v4),
        "an offline member is still a member"
    );

    discovery.shutdown().await;
    a.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whois_names_tailnet_nodes_and_nothing_else() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("who-a").await.unwrap();
    let (_b, b_addrs) = tailnet.node("who-b").await.unwrap();
    tailnet.set_tags("who-b", &[TAG, "tag:other"]).await.unwrap();
    let api = LocalApi::for_node(&a, LocalApiLimits::default()).unwrap();
    let b_v6 = IpAddr::V6(b_addrs.v6.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let node = api.whois(b_v6).await.unwrap().expect("whois knows the peer");
        assert_eq!(node.hostname, "who-b");
        assert_eq!(node.ipv4, b_addrs.v4);
        if node.has_tag(TAG) && node.has_tag("tag:other") {
            break;
        }
        assert!(Instant::now() < deadline, "whois never showed the tags: {node:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.whois("100.64.0.250".parse().unwrap()).await.unwrap().is_none());
    a.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_local_api_keeps_the_last_view_and_then_fails_closed() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("lost-a").await.unwrap();
    let (_b, b_addrs) = tailnet.node("lost-b").await.unwrap();
    let b_v4 = IpAddr::V4(b_addrs.v4.unwrap());
    tailnet.set_tags("lost-b", &[TAG]).await.unwrap();
    let api = LocalApi::for_node(&a, LocalApiLimits::default()).unwrap();
    let mut config = TailnetDiscoveryConfig::new(TAG);
    config.resync_interval = Duration::from_millis(200);
    let discovery = TailnetDiscovery::start(api, config);
    let staleness = Duration::from_secs(1);
    let auth = discovery.authorizer(staleness);
    wait_for(&discovery, Duration::from_secs(10), "member seen", |s| has_member(s, b_v4)).await;
    assert!(auth.allows(b_v4));

    // The node goes away: its LocalAPI with it.
    a.close().await;
    wait_for(&discovery, Duration::from_secs(10), "read error recorded", |s| {
        s.last_error.is_some()
    })
    .await;
    let state = discovery.state().borrow().clone();
    assert!(has_member(&state, b_v4), "last good view was dropped on error");
    assert!(
        matches!(
            state.last_error.as_deref(),
            Some(DiscoveryError::Unreachable { .. } | DiscoveryError::Timeout { .. })
        ),
        "unexpected error {:?}",
        state.last_error
    );
    // Past the staleness bound the authorizer refuses the member.
    let deadline = Instant::now() + staleness + Duration::from_secs(5);
    while auth.allows(b_v4) {
        assert!(Instant::now() < deadline, "stale view still authorizes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    discovery.shutdown().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_running_is_reported_as_such() {
    let tailnet = LocalTailnet::start().await.unwrap();
    // Control at a port nobody serves: the node starts but never runs.
    let mut options = NodeOptions::new(tailnet.state_dir("limbo"), "limbo");
    options.control_url = Some("http://127.0.0.1:9".to_owned());
    let node = TsnetTransport::new(options).unwrap();
    let api = LocalApi::for_node(&node, LocalApiLimits::default()).unwrap();
    match api.status().await {
        Err(DiscoveryError::NotRunning(state)) => assert_ne!(state, "Running"),
        other => panic!("status of a node that cannot log in gave {other:?}"),
    }
    node.close().await;
    tailnet.stop().await;
}
