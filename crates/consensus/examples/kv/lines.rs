//! The line interface on 127.0.0.1: one command per line, one JSON answer
//! per line, `{"ok": ...}` or `{"error": "..."}`.
//!
//! ```text
//! put <key> <value>         {"ok":{"previous":<old value or null>}}
//! get <key>                 {"ok":<value or null>}        (linearizable)
//! get-local <key>           {"ok":<value or null>}        (this node's copy; may be stale)
//! cas <key> <old|-> <new>   {"ok":{"previous":<old>}} or {"ok":{"mismatch":<current>}}
//! del <key>                 {"ok":{"previous":<old value or null>}}
//! status                    {"ok":{"metrics":{...},"members":[...]}}
//! ```
//!
//! (`-` in `cas`: the key must be absent.) The benchmarks and the
//! headscale suite drive the example through these lines, so their shapes
//! stay as they are.

use std::fmt::Display;

use consensus::{Consensus, Consistency};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::store::{Command, KvStore, Query};

/// Longest line accepted: a client cannot make the node buffer more.
pub(crate) const MAX_LINE: u64 = 64 * 1024;

/// Serves every connection `listener` accepts, each in a task of its own;
/// never returns.
pub(crate) async fn accept(listener: TcpListener, kv: Consensus<KvStore>) {
    loop {
        // A failed accept (too many open files, a connection reset before
        // it was taken) concerns that connection only.
        let Ok((stream, _)) = listener.accept().await else { continue };
        let kv = kv.clone();
        tokio::spawn(async move { serve(stream, |line| handle(&kv, line)).await });
    }
}

/// Answers the lines of `stream` with `handle` until the client closes it.
/// A line that is not UTF-8 is answered with an error; a line over
/// [`MAX_LINE`] too, and it ends the connection (the rest of it could not
/// be told from the next command).
async fn serve<S, H, F>(stream: S, mut handle: H)
where
    S: AsyncRead + AsyncWrite,
    H: FnMut(String) -> F,
    F: Future<Output = Value>,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() as u64 > MAX_LINE;
        let answer = match std::str::from_utf8(&line) {
            _ if too_long => json!({ "error": format!("line longer than {MAX_LINE} bytes") }),
            Ok(text) => handle(text.trim_end().to_owned()).await,
            Err(_) => json!({ "error": "line is not UTF-8" }),
        };
        if write.write_all(format!("{answer}\n").as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

/// The answer to one line.
///
/// Writes go through [`Consensus::execute`]: on a follower it forwards the
/// command to the leader, and the answer is the state machine's once a
/// quorum has committed it. Reads go through [`Consensus::read`].
async fn handle(kv: &Consensus<KvStore>, line: String) -> Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["put", key, value] => answer(
            kv.execute(Command::Put { key: key.to_string(), value: value.to_string() }).await,
        ),
        ["cas", key, old, new] => answer(
            kv.execute(Command::Cas {
                key: key.to_string(),
                expected: (*old != "-").then(|| old.to_string()),
                value: new.to_string(),
            })
            .await,
        ),
        ["del", key] => answer(kv.execute(Command::Delete { key: key.to_string() }).await),
        ["get", key] => {
            answer(kv.read(Query::Get { key: key.to_string() }, Consistency::Linearizable).await)
        }
        ["get-local", key] => {
            answer(kv.read(Query::Get { key: key.to_string() }, Consistency::Local).await)
        }
        ["status"] => json!({ "ok": { "metrics": kv.metrics(), "members": kv.members() } }),
        _ => json!({ "error": format!("unknown command {line:?}") }),
    }
}

/// A result as an answer line: `{"ok": ...}` or `{"error": "..."}`.
fn answer<T: serde::Serialize, E: Display>(result: Result<T, E>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(err) => json!({ "error": err.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line reaches the handler without its line end and gets one
    /// answer line; a line that is not UTF-8 is refused and the
    /// connection goes on; a line over the limit is refused and ends it.
    #[tokio::test]
    async fn serve_answers_each_line_and_refuses_bad_ones() {
        let (near, far) = tokio::io::duplex(4 * MAX_LINE as usize);
        let server = tokio::spawn(serve(near, |line| async move { json!({ "ok": line }) }));
        let (read, mut write) = tokio::io::split(far);
        let mut answers = BufReader::new(read).lines();
        write.write_all(b"put a 1\r\n").await.unwrap();
        assert_eq!(answers.next_line().await.unwrap().unwrap(), r#"{"ok":"put a 1"}"#);
        write.write_all(b"\xff\n").await.unwrap();
        assert_eq!(answers.next_line().await.unwrap().unwrap(), r#"{"error":"line is not UTF-8"}"#);
        write.write_all(&vec![b'x'; MAX_LINE as usize + 1]).await.unwrap();
        let refused = answers.next_line().await.unwrap().unwrap();
        assert_eq!(refused, format!(r#"{{"error":"line longer than {MAX_LINE} bytes"}}"#));
        server.await.unwrap();
        assert_eq!(answers.next_line().await.unwrap(), None, "the connection is still open");
    }

    /// Every command on a one-node cluster (in memory, through the same
    /// public API) answers in the shape its readers parse.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_command_answers_in_its_shape() {
        use std::collections::BTreeSet;
        use std::net::{IpAddr, Ipv4Addr};
        use std::sync::Arc;
        use std::time::Duration;

        use consensus::{
            BootstrapOptions, ClusterView, Config, MemNetwork, StableNodeId, StaticDiscovery,
            StopMode, TailnetNode,
        };

        let ip = Ipv4Addr::new(10, 7, 0, 1);
        let me = TailnetNode {
            id: StableNodeId("kv-1".to_owned()),
            hostname: "kv-1".to_owned(),
            dns_name: String::new(),
            ipv4: Some(ip),
            ipv6: None,
            tags: BTreeSet::from(["tag:kv".to_owned()]),
            online: true,
            has_path: true,
        };
        let discovery = StaticDiscovery::new(ClusterView::new("tag:kv", me, []));
        let kv = Consensus::start_with(
            Arc::new(MemNetwork::new().node(IpAddr::V4(ip))),
            Arc::new(discovery),
            KvStore::default(),
            BootstrapOptions::new("tag:kv"),
            Config { monitor_port: None, ..Config::default() },
        )
        .await
        .expect("a one-node cluster starts");
        kv.wait_for(Duration::from_secs(30), |m| m.leader.is_some()).await.expect("it leads");
        for (line, expected) in [
            ("put a 1", r#"{"ok":{"previous":null}}"#),
            ("put a 2", r#"{"ok":{"previous":"1"}}"#),
            ("get a", r#"{"ok":"2"}"#),
            ("cas a 1 3", r#"{"ok":{"mismatch":"2"}}"#),
            ("cas a 2 3", r#"{"ok":{"previous":"2"}}"#),
            ("cas b - x", r#"{"ok":{"previous":null}}"#),
            ("get-local a", r#"{"ok":"3"}"#),
            ("del a", r#"{"ok":{"previous":"3"}}"#),
            ("get a", r#"{"ok":null}"#),
            ("put a", r#"{"error":"unknown command \"put a\""}"#),
        ] {
            assert_eq!(handle(&kv, line.to_owned()).await.to_string(), expected, "{line}");
        }
        let status = handle(&kv, "status".to_owned()).await;
        assert_eq!(status["ok"]["metrics"]["role"], "leader", "{status}");
        assert_eq!(status["ok"]["members"].as_array().map(Vec::len), Some(1), "{status}");
        kv.stop(StopMode::Stay).await.expect("it stops");
    }

    /// Errors and values become the two answer shapes.
    #[test]
    fn answer_has_two_shapes() {
        assert_eq!(answer::<_, String>(Ok(Some("v"))).to_string(), r#"{"ok":"v"}"#);
        assert_eq!(
            answer::<Option<String>, _>(Err("no leader")).to_string(),
            r#"{"error":"no leader"}"#
        );
    }
}
