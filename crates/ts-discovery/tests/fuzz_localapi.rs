//! Fuzzing of the LocalAPI parsers with property tests (the stand-in for
//! cargo-fuzz targets, which need a nightly toolchain): random bytes,
//! damaged recordings, and recordings with values of the wrong type at any
//! place. Every input must give a view or a clear error, never a panic.

use proptest::prelude::*;
use serde_json::Value;
use ts_discovery::{parse_notify, parse_status, parse_whois};

const FIXTURES: &[&[u8]] = &[
    include_bytes!("fixtures/status-running.json"),
    include_bytes!("fixtures/status-peer-offline.json"),
    include_bytes!("fixtures/status-peer-untagged.json"),
    include_bytes!("fixtures/status-not-running.json"),
    include_bytes!("fixtures/whois-peer.json"),
    include_bytes!("fixtures/ipn-bus-first.json"),
];

/// Runs every parser; each must answer, and errors must say something.
fn parse_all(input: &[u8]) -> Result<(), TestCaseError> {
    let errors = [
        parse_status(input).err().map(|e| e.to_string()),
        parse_whois(input).err().map(|e| e.to_string()),
        parse_notify(input).err().map(|e| e.to_string()),
    ];
    for message in errors.into_iter().flatten() {
        prop_assert!(!message.trim().is_empty(), "an error without a message");
    }
    Ok(())
}

/// Every JSON pointer into `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(serde_json::json!(1e300)),
        ".{0,30}".prop_map(Value::from),
        Just(serde_json::json!("100.64.0.999")),
        Just(serde_json::json!("tag:cluster")),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!([[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]])),
    ]
}

proptest! {
    #![proptest_config(test_support::proptest_config(512, 0x10ca_1a91))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_all(&bytes)?;
    }

    #[test]
    fn damaged_recordings_never_panic(
        which in 0..FIXTURES.len(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = FIXTURES[which].to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        parse_all(&bytes)?;
    }

    #[test]
    fn values_of_the_wrong_type_anywhere_never_panic(
        which in 0..FIXTURES.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), wrong_value()), 1..4),
    ) {
        let mut doc: Value = serde_json::from_slice(FIXTURES[which]).expect("fixtures are JSON");
        for (at, value) in edits {
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            let pointer = &all[at.index(all.len())];
            if pointer.is_empty() {
                doc = value;
            } else if let Some(slot) = doc.pointer_mut(pointer) {
                *slot = value;
            }
        }
        parse_all(doc.to_string().as_bytes())?;
    }
}
