//! The execute path's spans (execute, forward, propose, commit, apply) and
//! the request id they carry: a command executed through a follower, with
//! every span's close recorded by a global subscriber (this binary's only
//! test, so nothing else logs into it).

use std::io::Write;
use std::sync::{Arc, Mutex};

use test_support::cluster::{MemCluster, Tailnet, WAIT};
use test_support::tally::{Tally, add};
use test_support::{eventually, fast_config};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_forwarded_command_has_a_span_with_its_request_id() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("warn,consensus=debug,cmd_rpc=debug,raft_core=debug")
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| fast_config()).await;
    let follower = (cluster.leader() + 1) % 3;
    cluster.node(follower).execute(add("traced", 1)).await.unwrap();
    // The leader applied the command before it answered, but its metrics
    // (and the other members) may lag: wait for every member's apply span.
    let applied =
        |text: &str| text.lines().filter(|l| l.contains("apply{") && l.contains("close")).count();
    eventually(WAIT, "every member's apply span", async || {
        applied(&String::from_utf8_lossy(&captured.0.lock().unwrap())) >= 3
    })
    .await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The command's session: the one the execute span names.
    let execute = text
        .lines()
        .find(|l| l.contains("execute{client="))
        .unwrap_or_else(|| panic!("no execute span:\n{text}"));
    let client = execute.split("client=").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let id = format!("client={client} seq=1");
    for stage in ["execute{", "forward{", "propose{", "apply{"] {
        assert!(
            text.lines().any(|l| l.contains(stage) && l.contains(&id) && l.contains("close")),
            "no closed {stage} span for {id}:\n{text}"
        );
    }
    // The commit wait sits inside the propose span, so it carries the id.
    assert!(
        text.lines().any(|l| l.contains(&format!("propose{{{id}}}:commit")) && l.contains("close")),
        "no commit span inside propose for {id}:\n{text}"
    );
    // One apply per member.
    let applies = text.lines().filter(|l| l.contains("apply{") && l.contains(&id)).count();
    assert!(applies >= 3, "{applies} apply spans for {id}");
    cluster.shutdown().await;
}
