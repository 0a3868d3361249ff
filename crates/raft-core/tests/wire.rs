//! Property tests of the wire format: every message type survives an encode
//! and decode unchanged, and the frame decoder refuses malformed input
//! without panicking.

use std::collections::BTreeSet;
use std::net::IpAddr;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use proptest::prelude::*;
use raft_core::testing::TypeConfig;
use raft_core::testing::frame::{self, FrameError, Message};
use raft_core::{Batch, ClientId, ClusterId, NodeInfo, Proposal};

const MAX_FRAME: usize = 1 << 20;

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        "[a-zA-Z0-9]{0,16}",
        proptest::collection::vec(any::<IpAddr>(), 0..3),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(stable_id, addrs, raft_port, command_port)| NodeInfo {
            stable_id,
            addrs,
            raft_port,
            command_port,
        })
}

fn log_id() -> impl Strategy<Value = LogId<u64>> {
    (0..1000u64, 1..10u64, 0..100_000u64)
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn proposal() -> impl Strategy<Value = Proposal> {
    prop_oneof![
        (any::<u128>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(client, seq, command)| Proposal::Command { client: ClientId(client), seq, command }
        ),
        Just(Proposal::Register),
    ]
}

fn membership() -> impl Strategy<Value = Membership<u64, NodeInfo>> {
    proptest::collection::btree_map(1..20u64, node_info(), 1..5).prop_map(|nodes| {
        let voters: BTreeSet<u64> = nodes.keys().copied().collect();
        Membership::new(vec![voters], nodes)
    })
}

fn entry() -> impl Strategy<Value = Entry<TypeConfig>> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        proptest::collection::vec(proposal(), 0..4).prop_map(|p| EntryPayload::Normal(Batch(p))),
        membership().prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn message() -> impl Strategy<Value = Message> {
    let vote = (0..1000u64, 1..10u64).prop_map(|(t, n)| Vote::new(t, n));
    prop_oneof![
        (
            ("[a-z]{0,12}", any::<u128>(), any::<u64>(), "[A-Za-z0-9]{0,20}"),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<usize>(),
                any::<usize>(),
                any::<usize>()
            )
        )
            .prop_map(
                |((cluster, id, from, stable_id), (incarnation, to, ttl, max, answer, total))| {
                    Message::Hello {
                        cluster,
                        cluster_id: ClusterId(id),
                        from,
                        stable_id,
                        incarnation,
                        to,
                        sessions: raft_core::SessionLimits {
                            ttl_entries: ttl,
                            max_sessions: max,
                            max_answer_bytes: answer,
                            max_answer_total_bytes: total,
                        },
                    }
                }
            ),
        Just(()).prop_map(|()| Message::Welcome),
        ".{0,40}".prop_map(Message::Refused),
        (
            vote.clone(),
            proptest::option::of(log_id()),
            proptest::collection::vec(entry(), 0..4),
            proptest::option::of(log_id())
        )
            .prop_map(
                |(vote, prev_log_id, entries, leader_commit)| Message::AppendEntries(
                    AppendEntriesRequest { vote, prev_log_id, entries, leader_commit }
                )
            ),
        Just(()).prop_map(|()| Message::AppendEntriesResult(Ok(AppendEntriesResponse::Success))),
        (vote.clone(), proptest::option::of(log_id()))
            .prop_map(|(vote, last_log_id)| Message::Vote(VoteRequest { vote, last_log_id })),
        (vote.clone(), any::<bool>(), proptest::option::of(log_id())).prop_map(
            |(vote, vote_granted, last_log_id)| {
                Message::VoteResult(Ok(VoteResponse { vote, vote_granted, last_log_id }))
            }
        ),
        (
            vote,
            proptest::option::of(log_id()),
            membership(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..256),
            any::<bool>()
        )
            .prop_map(|(vote, last_log_id, m, offset, data, done)| {
                Message::InstallSnapshot(InstallSnapshotRequest {
                    vote,
                    meta: SnapshotMeta {
                        last_log_id,
                        last_membership: StoredMembership::new(last_log_id, m),
                        snapshot_id: "s".into(),
                    },
                    offset,
                    data,
                    done,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(test_support::proptest_config(256, 0x5eed_0001))]

    /// Encode, decode, encode again: the same bytes.
    #[test]
    fn every_message_round_trips(id in any::<u64>(), message in message()) {
        let bytes = frame::encode(id, &message);
        let (decoded, used) = frame::decode(&bytes, MAX_FRAME).unwrap().expect("a whole frame");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decoded.request_id, id);
        prop_assert_eq!(&frame::encode(id, &decoded.message), &bytes);
        // Any strict prefix is "need more bytes", never an error or a panic.
        for cut in [0, 1, 3, 4, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(frame::decode(&bytes[..cut], MAX_FRAME).unwrap().is_none());
        }
    }

    /// Damaged frames fail cleanly.
    #[test]
    fn damaged_frames_fail_without_panicking(message in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = frame::encode(1, &message);
        for (at, xor) in flips {
            let at = 4 + at % (bytes.len() - 4).max(1);
            if at < bytes.len() {
                bytes[at] ^= xor | 1;
            }
        }
        let _ = frame::decode(&bytes, MAX_FRAME);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = frame::decode(&bytes, MAX_FRAME);
    }
}

#[test]
fn an_oversized_length_is_refused_from_the_prefix_alone() {
    let prefix = ((MAX_FRAME + 1) as u32).to_be_bytes();
    match frame::decode(&prefix, MAX_FRAME) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_FRAME + 1, MAX_FRAME))
        }
        other => panic!("got {other:?}"),
    }
    let mut stream = &prefix[..];
    let read = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(frame::read(&mut stream, MAX_FRAME));
    assert!(matches!(read, Err(FrameError::TooLarge { .. })), "{read:?}");
}

#[test]
fn another_protocol_version_is_named() {
    let mut bytes = frame::encode(1, &Message::Welcome);
    bytes[4] = 9;
    let err = frame::decode(&bytes, MAX_FRAME).unwrap_err();
    assert!(err.to_string().contains("version 9"), "{err}");
}
