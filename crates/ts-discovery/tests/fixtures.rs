//! The pure functions driven by LocalAPI answers recorded from the real local
//! tailnet (`cargo run -p tests --features tailnet --example record_localapi -- crates/ts-discovery/tests/fixtures`): node `fix-a`
//! tagged `tag:cluster` sees `fix-b` (tagged) and `fix-c` (`tag:other`);
//! then `fix-b` stops; then it loses its tag.

use ts_discovery::{ClusterEvent, DiscoveryError, diff, parse_notify, parse_status, parse_whois};

const TAG: &str = "tag:cluster";
const RUNNING: &[u8] = include_bytes!("fixtures/status-running.json");
const OFFLINE: &[u8] = include_bytes!("fixtures/status-peer-offline.json");
const UNTAGGED: &[u8] = include_bytes!("fixtures/status-peer-untagged.json");
const NOT_RUNNING: &[u8] = include_bytes!("fixtures/status-not-running.json");
const WHOIS: &[u8] = include_bytes!("fixtures/whois-peer.json");
const IPN_BUS_FIRST: &[u8] = include_bytes!("fixtures/ipn-bus-first.json");

#[test]
fn running_status_gives_the_tagged_cluster() {
    let tailnet = parse_status(RUNNING).unwrap();
    assert_eq!(tailnet.self_node.hostname, "fix-a");
    assert_eq!(tailnet.peers.len(), 2);
    let cluster = tailnet.cluster(TAG);
    assert!(cluster.self_tagged(), "own tag not reported");
    let members: Vec<&str> = cluster.members.values().map(|n| n.hostname.as_str()).collect();
    assert_eq!(members, ["fix-b"], "only the peer carrying {TAG} is a member");
    let b = cluster.members.values().next().unwrap();
    assert!(b.online);
    assert!(b.dns_name.starts_with("fix-b."), "{}", b.dns_name);
    for ip in b.addrs() {
        assert!(cluster.contains_addr(ip), "{ip} of a member not allowed");
    }
    let c = tailnet.peers.values().find(|n| n.hostname == "fix-c").unwrap();
    for ip in c.addrs() {
        assert!(!cluster.contains_addr(ip), "{ip} of a peer with another tag allowed");
    }
    assert_eq!(c.addrs().count(), 2, "IPv4 and IPv6 both parsed");
}

#[test]
fn a_stopped_member_stays_but_goes_offline() {
    let before = parse_status(RUNNING).unwrap().cluster(TAG);
    let after = parse_status(OFFLINE).unwrap().cluster(TAG);
    let events = diff(&before, &after);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], ClusterEvent::WentOffline(n) if n.hostname == "fix-b"),
        "{events:?}"
    );
    assert_eq!(after.members.len(), 1);
}

#[test]
fn losing_the_tag_leaves_the_cluster() {
    let before = parse_status(OFFLINE).unwrap().cluster(TAG);
    let after = parse_status(UNTAGGED).unwrap().cluster(TAG);
    let events = diff(&before, &after);
    assert!(
        matches!(events.as_slice(), [ClusterEvent::Left(n)] if n.hostname == "fix-b"),
        "{events:?}"
    );
    let b = before.members.values().next().unwrap();
    for ip in b.addrs() {
        assert!(!after.contains_addr(ip), "{ip} still allowed after the tag was cleared");
    }
}

#[test]
fn a_node_that_cannot_log_in_is_not_running() {
    match parse_status(NOT_RUNNING) {
        Err(DiscoveryError::NotRunning(state)) => assert_eq!(state, "NeedsLogin"),
        other => panic!("got {other:?}"),
    }
}

#[test]
fn whois_and_the_ipn_bus_parse() {
    let node = parse_whois(WHOIS).unwrap();
    assert_eq!(node.hostname, "fix-b");
    assert!(node.has_tag(TAG));
    let notify = parse_notify(IPN_BUS_FIRST).unwrap();
    assert!(notify.has_netmap, "first watch message carries the netmap");
    assert_eq!(notify.state, Some(6), "first watch message carries the Running state");
}

#[test]
fn truncated_or_corrupted_answers_fail_without_panicking() {
    for fixture in [RUNNING, OFFLINE, WHOIS, IPN_BUS_FIRST] {
        for cut in (0..fixture.len()).step_by(97) {
            let _ = parse_status(&fixture[..cut]);
            let _ = parse_whois(&fixture[..cut]);
            let _ = parse_notify(&fixture[..cut]);
        }
        let mut flipped = fixture.to_vec();
        for i in (0..flipped.len()).step_by(13) {
            flipped[i] ^= 0x20;
        }
        let _ = parse_status(&flipped);
        let _ = parse_whois(&flipped);
        let _ = parse_notify(&flipped);
    }
    assert!(parse_status(&RUNNING[..RUNNING.len() / 2]).is_err());
}
