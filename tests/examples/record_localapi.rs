//! Records LocalAPI answers from a real local tailnet as JSON fixtures for
//! ts-discovery's unit tests:
//!
//! ```sh
//! cargo run -p tests --features tailnet --example record_localapi -- crates/ts-discovery/tests/fixtures
//! ```
//!
//! Node `fix-a` (tagged `tag:cluster`) sees `fix-b` (tagged), `fix-c`
//! (tagged `tag:other`); then `fix-b` stops; then `fix-b` loses its tag.
#![allow(clippy::print_stdout, reason = "a command-line tool reports what it wrote")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tests::tailnet::LocalTailnet;
use ts_discovery::{LocalApi, LocalApiLimits};
use ts_transport::tsnet::{NodeOptions, TsnetTransport};

const TAG: &str = "tag:cluster";

async fn wait_until(api: &LocalApi, what: &str, ok: impl Fn(&ts_discovery::TailnetView) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if api.status().await.is_ok_and(|view| ok(&view)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not reached within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peer<'a>(
    view: &'a ts_discovery::TailnetView,
    host: &str,
) -> Option<&'a ts_discovery::TailnetNode> {
    view.peers.values().find(|n| n.hostname == host)
}

#[tokio::main]
async fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: record_localapi <out-dir>"));
    std::fs::create_dir_all(&out).expect("create output dir");
    let save = |name: &str, body: &[u8]| {
        std::fs::write(out.join(name), body).expect("write fixture");
        println!("wrote {}", out.join(name).display());
    };

    let tailnet = LocalTailnet::start().await.expect("tailnet");
    let (a, _) = tailnet.node("fix-a").await.expect("fix-a");
    let (b, b_addrs) = tailnet.node("fix-b").await.expect("fix-b");
    let (_c, _) = tailnet.node("fix-c").await.expect("fix-c");
    tailnet.set_tags("fix-a", &[TAG]).await.expect("tag a");
    tailnet.set_tags("fix-b", &[TAG]).await.expect("tag b");
    tailnet.set_tags("fix-c", &["tag:other"]).await.expect("tag c");
    let api = LocalApi::for_node(&a, LocalApiLimits::default()).expect("LocalAPI");
    wait_until(&api, "everyone tagged and online", |v| {
        v.self_node.has_tag(TAG)
            && peer(v, "fix-b").is_some_and(|n| n.has_tag(TAG) && n.online)
            && peer(v, "fix-c").is_some_and(|n| n.has_tag("tag:other") && n.online)
    })
    .await;
    save("status-running.json", &api.get_raw("/localapi/v0/status").await.expect("status"));
    let b_v4 = b_addrs.v4.expect("IPv4");
    save(
        "whois-peer.json",
        &api.get_raw(&format!("/localapi/v0/whois?addr={b_v4}")).await.expect("whois"),
    );

    // The first message of the watch: state and the whole netmap.
    let mut watch = api.watch_ipn_bus().await.expect("watch");
    let first = watch.next_line().await.expect("first message").expect("open watch");
    save("ipn-bus-first.json", &first);
    drop(watch);

    b.close().await;
    wait_until(&api, "fix-b offline", |v| peer(v, "fix-b").is_some_and(|n| !n.online)).await;
    save("status-peer-offline.json", &api.get_raw("/localapi/v0/status").await.expect("status"));

    tailnet.set_tags("fix-b", &[]).await.expect("untag b");
    wait_until(&api, "fix-b untagged", |v| peer(v, "fix-b").is_some_and(|n| n.tags.is_empty()))
        .await;
    save("status-peer-untagged.json", &api.get_raw("/localapi/v0/status").await.expect("status"));

    let mut options = NodeOptions::new(tailnet.state_dir("fix-limbo"), "fix-limbo");
    options.control_url = Some("http://127.0.0.1:9".to_owned());
    let limbo = TsnetTransport::new(options).expect("limbo node");
    let limbo_api = LocalApi::for_node(&limbo, LocalApiLimits::default()).expect("LocalAPI");
    save(
        "status-not-running.json",
        &limbo_api.get_raw("/localapi/v0/status").await.expect("status"),
    );
    limbo.close().await;
    a.close().await;
    tailnet.stop().await;
}
