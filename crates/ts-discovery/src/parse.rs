//! Decoding LocalAPI answers into the model. Pure: bytes in, values or
//! [`DiscoveryError`]s out. Only the fields we use are read; unknown fields
//! are ignored (the LocalAPI grows), but the ones we use are checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::Deserialize;

use crate::error::DiscoveryError;
use crate::model::{StableNodeId, TailnetNode, TailnetView};

/// `ipnstate.Status`, the parts we read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Status {
    backend_state: String,
    #[serde(rename = "Self")]
    self_status: Option<PeerStatus>,
    #[serde(default)]
    peer: Option<HashMap<String, PeerStatus>>,
}

/// `ipnstate.PeerStatus`, the parts we read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PeerStatus {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    host_name: String,
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(default)]
    tailscale_i_ps: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    online: bool,
    /// The DERP region code of its home ("" until control sends it).
    #[serde(default)]
    relay: Option<String>,
    /// Its endpoints, as this node's netmap has them (only their number
    /// matters).
    #[serde(default)]
    addrs: Option<Vec<serde::de::IgnoredAny>>,
    /// The address of an active direct path, if any.
    #[serde(default)]
    cur_addr: Option<String>,
}

fn malformed(what: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Malformed(what.into())
}

impl PeerStatus {
    fn into_node(self, whose: &str) -> Result<TailnetNode, DiscoveryError> {
        if self.id.is_empty() {
            return Err(malformed(format!("{whose} has no ID")));
        }
        let mut node = TailnetNode {
            id: StableNodeId(self.id),
            hostname: self.host_name,
            dns_name: self.dns_name,
            ipv4: None,
            ipv6: None,
            tags: self.tags.unwrap_or_default().into_iter().collect::<BTreeSet<_>>(),
            online: self.online,
            has_path: self.relay.is_some_and(|r| !r.is_empty())
                || self.addrs.is_some_and(|a| !a.is_empty())
                || self.cur_addr.is_some_and(|a| !a.is_empty()),
        };
        for text in self.tailscale_i_ps.unwrap_or_default() {
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if node.ipv4.is_none() => node.ipv4 = Some(v4),
                Ok(IpAddr::V6(v6)) if node.ipv6.is_none() => node.ipv6 = Some(v6),
                Ok(_) => {}
                Err(_) => {
                    return Err(malformed(format!("{whose} ({}) has address {text:?}", node.id)));
                }
            }
        }
        Ok(node)
    }
}

/// Decodes a `/localapi/v0/status` body. The node must be `Running`.
pub fn parse_status(body: &[u8]) -> Result<TailnetView, DiscoveryError> {
    let status: Status = serde_json::from_slice(body)
        .map_err(|err| malformed(format!("status is not the expected JSON: {err}")))?;
    if status.backend_state != "Running" {
        return Err(DiscoveryError::NotRunning(status.backend_state));
    }
    let self_node =
        status.self_status.ok_or_else(|| malformed("status has no Self"))?.into_node("Self")?;
    // The node itself needs no path to itself.
    let self_node = TailnetNode { has_path: true, ..self_node };
    let mut peers = BTreeMap::new();
    for (key, peer) in status.peer.unwrap_or_default() {
        let node = peer.into_node(&format!("peer {key}"))?;
        peers.insert(node.id.clone(), node);
    }
    Ok(TailnetView { self_node, peers })
}

/// `apitype.WhoIsResponse`, the parts we read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIs {
    node: Option<WhoIsNode>,
}

/// `tailcfg.Node`, the parts we read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIsNode {
    #[serde(rename = "StableID", default)]
    stable_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    addresses: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    hostinfo: Option<WhoIsHostinfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIsHostinfo {
    #[serde(default)]
    hostname: String,
}

/// Decodes a `/localapi/v0/whois` body into the node it names.
pub fn parse_whois(body: &[u8]) -> Result<TailnetNode, DiscoveryError> {
    let whois: WhoIs = serde_json::from_slice(body)
        .map_err(|err| malformed(format!("whois is not the expected JSON: {err}")))?;
    let node = whois.node.ok_or_else(|| malformed("whois has no Node"))?;
    let status = PeerStatus {
        id: node.stable_id,
        host_name: node.hostinfo.map(|h| h.hostname).unwrap_or_default(),
        dns_name: node.name,
        // Addresses are prefixes ("100.64.0.1/32"); keep the address.
        tailscale_i_ps: node.addresses.map(|addrs| {
            addrs.into_iter().map(|a| a.split('/').next().unwrap_or_default().to_owned()).collect()
        }),
        tags: node.tags,
        online: node.online.unwrap_or(false),
        relay: None,
        addrs: None,
        cur_addr: None,
    };
    // A whois says nothing about paths.
    Ok(TailnetNode { has_path: true, ..status.into_node("whois node")? })
}

/// One `ipn.Notify` from the IPN bus, reduced to what matters here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// The backend state, if the message carries one (6 is Running).
    pub state: Option<i64>,
    /// Whether the message carries a netmap, i.e. peers or tags may have changed.
    pub has_netmap: bool,
    /// An error the backend reports.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNotify {
    #[serde(default)]
    state: Option<i64>,
    // Only presence matters; the netmap itself is skipped, not built.
    #[serde(default)]
    net_map: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    err_message: Option<String>,
}

/// Decodes one line of the IPN bus watch.
pub fn parse_notify(line: &[u8]) -> Result<Notify, DiscoveryError> {
    let raw: RawNotify = serde_json::from_slice(line)
        .map_err(|err| malformed(format!("IPN bus message is not the expected JSON: {err}")))?;
    Ok(Notify { state: raw.state, has_netmap: raw.net_map.is_some(), error: raw.err_message })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"{
        "BackendState": "Running",
        "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
        "Self": {"ID": "n1", "HostName": "one", "DNSName": "one.ts.net.",
                 "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"], "Tags": ["tag:c"], "Online": true},
        "Peer": {
            "nodekey:aa": {"ID": "n2", "HostName": "two", "DNSName": "two.ts.net.",
                           "TailscaleIPs": ["100.64.0.2", "fd7a:115c:a1e0::2"], "Online": false,
                           "SomeFutureField": {"x": 1}}
        },
        "Health": ["ignored"]
    }"#;

    #[test]
    fn parses_status() {
        let view = parse_status(STATUS.as_bytes()).unwrap();
        assert_eq!(view.self_node.id.0, "n1");
        assert!(view.self_node.has_tag("tag:c"));
        assert_eq!(view.self_node.ipv6.unwrap().to_string(), "fd7a:115c:a1e0::1");
        let two = &view.peers[&StableNodeId("n2".to_owned())];
        assert!(two.tags.is_empty());
        assert!(!two.online);
        assert_eq!(two.ipv4.unwrap().to_string(), "100.64.0.2");
    }

    /// A peer has a path when its netmap entry gives a DERP home, an
    /// endpoint or a current direct address; not before (an online peer
    /// whose DERP home control has not sent yet, as headscale does for a
    /// second or so after a node comes up). The node itself always has one.
    #[test]
    fn a_peer_has_a_path_once_it_has_a_derp_home_or_an_endpoint() {
        let peer = |fields: &str| {
            let body = format!(
                r#"{{"BackendState":"Running","Self":{{"ID":"me","Relay":""}},
                    "Peer":{{"k":{{"ID":"p","Online":true{fields}}}}}}}"#
            );
            let view = parse_status(body.as_bytes()).unwrap();
            assert!(view.self_node.has_path);
            view.peers[&StableNodeId("p".to_owned())].has_path
        };
        assert!(!peer(""));
        assert!(!peer(r#","Relay":"","Addrs":null,"CurAddr":"""#));
        assert!(!peer(r#","Relay":"","Addrs":[]"#));
        assert!(peer(r#","Relay":"headscale""#));
        assert!(peer(r#","Relay":"","Addrs":["127.0.0.1:41641"]"#));
        assert!(peer(r#","CurAddr":"127.0.0.1:41641""#));
        // Malformed path fields are errors, not silently a path.
        let body =
            br#"{"BackendState":"Running","Self":{"ID":"me"},"Peer":{"k":{"ID":"p","Relay":7}}}"#;
        assert!(parse_status(body).unwrap_err().to_string().contains("not the expected JSON"));
    }

    #[test]
    fn rejects_bad_status_with_a_clear_error() {
        let cases: &[(&str, &str)] = &[
            ("", "not the expected JSON"),
            ("[1,2]", "not the expected JSON"),
            (r#"{"BackendState":"Running"}"#, "no Self"),
            (r#"{"BackendState":"Running","Self":{"HostName":"x"}}"#, "Self has no ID"),
            (
                r#"{"BackendState":"Running","Self":{"ID":"a","TailscaleIPs":["300.1.1.1"]}}"#,
                "has address \"300.1.1.1\"",
            ),
            (r#"{"BackendState":7}"#, "not the expected JSON"),
            (
                r#"{"BackendState":"Running","Self":{"ID":"a"},"Peer":{"k":{"HostName":"p"}}}"#,
                "peer k has no ID",
            ),
        ];
        for (body, want) in cases {
            let err = parse_status(body.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(want), "{body:?} gave {err}, want {want:?}");
        }
        let err = parse_status(br#"{"BackendState":"NeedsLogin"}"#).unwrap_err();
        assert!(matches!(err, DiscoveryError::NotRunning(ref s) if s == "NeedsLogin"), "{err}");
    }

    #[test]
    fn parses_whois() {
        let body = r#"{"Node":{"ID":5,"StableID":"n5","Name":"five.ts.net.","Addresses":["100.64.0.5/32","fd7a:115c:a1e0::5/128"],
                       "Tags":["tag:c"],"Online":true,"Hostinfo":{"Hostname":"five"}},"UserProfile":{},"CapMap":null}"#;
        let node = parse_whois(body.as_bytes()).unwrap();
        assert_eq!(node.id.0, "n5");
        assert_eq!(node.hostname, "five");
        assert_eq!(node.ipv4.unwrap().to_string(), "100.64.0.5");
        assert!(node.has_tag("tag:c") && node.online && node.has_path);
        assert!(parse_whois(b"{}").unwrap_err().to_string().contains("no Node"));
    }

    #[test]
    fn parses_notify() {
        let n = parse_notify(br#"{"State":6,"NetMap":{"Peers":[{"ID":1}]}}"#).unwrap();
        assert_eq!(n, Notify { state: Some(6), has_netmap: true, error: None });
        let n = parse_notify(br#"{"NetMap":null,"ErrMessage":"boom"}"#).unwrap();
        assert_eq!(n, Notify { state: None, has_netmap: false, error: Some("boom".to_owned()) });
        assert!(parse_notify(b"not json").is_err());
    }
}
