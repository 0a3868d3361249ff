//! The frame decoder never allocates more than the frame limit, whatever it
//! is fed: a counting allocator records the largest single allocation made
//! while decoding arbitrary bytes and hostile length claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use raft_core::testing::frame::{self, Message};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACKING.with(Cell::get) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACKING.with(Cell::get) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The limit under test: small, so a violation would stand out.
const LIMIT: usize = 64 << 10;

fn largest_allocation_decoding(bytes: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    TRACKING.with(|t| t.set(true));
    let _ = frame::decode(bytes, LIMIT);
    TRACKING.with(|t| t.set(false));
    LARGEST.load(Ordering::Relaxed)
}

/// A frame whose body claims a byte vector of `claim` bytes but holds none.
fn hostile_frame(claim: u64) -> Vec<u8> {
    // Message::Refused(String): variant index, then a varint length claim.
    let mut body = vec![2u8];
    body.push(253);
    body.extend_from_slice(&claim.to_le_bytes());
    let mut bytes = ((1 + 8 + body.len()) as u32).to_be_bytes().to_vec();
    bytes.push(frame::encode(0, &Message::Welcome)[4]);
    bytes.extend_from_slice(&7u64.to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

#[test]
fn hostile_length_claims_allocate_nothing_near_their_size() {
    for claim in [LIMIT as u64 + 1, 1 << 30, u64::MAX / 2] {
        let bytes = hostile_frame(claim);
        assert!(frame::decode(&bytes, LIMIT).is_err(), "claim {claim} decoded");
        let largest = largest_allocation_decoding(&bytes);
        assert!(
            largest <= LIMIT,
            "claim {claim}: allocated {largest} bytes with a {LIMIT}-byte limit"
        );
    }
}

proptest! {
    #![proptest_config(test_support::proptest_config(2000, 0x5eed_0002))]

    #[test]
    fn arbitrary_bytes_stay_within_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let largest = largest_allocation_decoding(&bytes);
        prop_assert!(largest <= LIMIT, "allocated {} bytes with a {}-byte limit", largest, LIMIT);
    }

    #[test]
    fn framed_garbage_stays_within_the_limit(body in proptest::collection::vec(any::<u8>(), 0..4096), id in any::<u64>()) {
        let mut bytes = ((9 + body.len()) as u32).to_be_bytes().to_vec();
        bytes.push(1);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&body);
        let largest = largest_allocation_decoding(&bytes);
        prop_assert!(largest <= LIMIT, "allocated {} bytes with a {}-byte limit", largest, LIMIT);
    }
}
