//! The chaos node's line interface, the `kv` example's
//! (`crates/consensus/examples/kv/lines.rs`) over the checking store
//! [`crate::kv`]: one command per line, one JSON answer per line
//! (`{"ok": ...}` or `{"error": "..."}`), lines of at most [`MAX_LINE`]
//! bytes.
//!
//! [`accept`] and [`serve`] read the lines and write the answers; [`kv_command`] answers
//! the commands every kv node has:
//!
//! ```text
//! put <key> <value>         set a key
//! get <key>                 read it (linearizable)
//! get-local <key>           read it from this node only (may be stale)
//! cas <key> <old|-> <new>   compare-and-set ("-": the key is absent)
//! del <key>                 delete it
//! ```
//!
//! The chaos node adds its own lines (`status`, `version`, `digest` and
//! `fault ...`) in front of these.

use std::fmt::Display;
use std::future::Future;

use consensus::{Consensus, Consistency};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::kv::{KvCommand, KvQuery, KvStore};

/// Longest line accepted on the line interface.
pub const MAX_LINE: u64 = 64 * 1024;

/// Serves the line interface on every connection `listener` accepts, each
/// in a task of its own, with `handle` answering the lines; never returns.
pub async fn accept<H, F>(listener: TcpListener, handle: H)
where
    H: FnMut(String) -> F + Clone + Send + 'static,
    F: Future<Output = Value> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve(stream, handle.clone()));
    }
}

/// Serves the line interface on `stream` until it closes: each line,
/// without its line end, goes to `handle`, and its answer is written back
/// on one line. A line that is not UTF-8 is answered with an error; a line
/// over [`MAX_LINE`] too, and it ends the connection (the rest of it could
/// not be told from the next command).
pub async fn serve<S, H, F>(stream: S, mut handle: H)
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

/// The answer to the command `words` if it is one every kv node has
/// (`put`, `get`, `get-local`, `cas`, `del`); `None` for any other line.
pub async fn kv_command(kv: &Consensus<KvStore>, words: &[&str]) -> Option<Value> {
    let result = match words {
        ["put", key, value] => kv
            .execute(KvCommand::Put { key: key.to_string(), value: value.to_string() })
            .await
            .map(|r| json!(r)),
        ["cas", key, old, new] => kv
            .execute(KvCommand::Cas {
                key: key.to_string(),
                expected: (*old != "-").then(|| old.to_string()),
                value: new.to_string(),
            })
            .await
            .map(|r| json!(r)),
        ["del", key] => {
            kv.execute(KvCommand::Delete { key: key.to_string() }).await.map(|r| json!(r))
        }
        ["get", key] => {
            kv.read(KvQuery::Get { key: key.to_string() }, Consistency::Linearizable).await
        }
        ["get-local", key] => {
            kv.read(KvQuery::Get { key: key.to_string() }, Consistency::Local).await
        }
        _ => return None,
    };
    Some(answer(result))
}

/// A result as a line's answer: `{"ok": value}` or `{"error": "..."}`.
pub fn answer<E: Display>(result: Result<Value, E>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(err) => json!({ "error": err.to_string() }),
    }
}

/// The answer to a line no command matches.
pub fn unknown(line: &str) -> Value {
    json!({ "error": format!("unknown command {line:?}") })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
}
