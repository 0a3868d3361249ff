//! The one place that knows the wire and disk encoding: bincode 2 in serde
//! mode (bincode is unmaintained upstream; keeping it behind this module
//! means swapping it touches one file).
//!
//! Decoding is bounded: a hostile length inside the bytes cannot make the
//! decoder allocate more than the limit it is given.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest value decoded from disk (a log entry, the vote, snapshot meta).
pub(crate) const MAX_STORED_VALUE: usize = 256 << 20;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
    /// What bincode reported.
    pub reason: String,
}

/// Smallest allocation limit the codec works with.
pub(crate) const MIN_LIMIT: usize = 64 << 10;

/// Encodes `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own types into a Vec cannot fail: they have no maps with
    // non-string keys or unsized sequences bincode rejects.
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|err| unreachable!("bincode failed to encode an in-memory value: {err}"))
}

/// Decodes a `T` from exactly `bytes`; trailing bytes are an error.
///
/// bincode allocates a container as soon as it reads its claimed length, up
/// to a compile-time limit. So the limit used is the largest of a few fixed
/// tiers that does not exceed `limit`: whatever the bytes claim, decoding
/// never allocates more than `limit` for them (`limit` below [`MIN_LIMIT`]
/// counts as [`MIN_LIMIT`]).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<T, DecodeError> {
    if bytes.len() > limit.max(MIN_LIMIT) {
        return Err(DecodeError {
            what,
            reason: format!("{} bytes exceed the {limit}-byte limit", bytes.len()),
        });
    }
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    let decoded = match limit {
        l if l >= 256 * MIB => decode_within::<T, { 256 * MIB }>(bytes),
        l if l >= 64 * MIB => decode_within::<T, { 64 * MIB }>(bytes),
        l if l >= 16 * MIB => decode_within::<T, { 16 * MIB }>(bytes),
        l if l >= 4 * MIB => decode_within::<T, { 4 * MIB }>(bytes),
        l if l >= MIB => decode_within::<T, { MIB }>(bytes),
        l if l >= 256 * KIB => decode_within::<T, { 256 * KIB }>(bytes),
        _ => decode_within::<T, { 64 * KIB }>(bytes),
    };
    let (value, used) = decoded.map_err(|err| DecodeError { what, reason: err.to_string() })?;
    if used != bytes.len() {
        return Err(DecodeError { what, reason: format!("{} trailing bytes", bytes.len() - used) });
    }
    Ok(value)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

/// The allocation limit for a value of `len` bytes read back from our own
/// storage: generous (in-memory sizes exceed encoded ones), but bounded.
pub(crate) fn stored_limit(len: usize) -> usize {
    len.saturating_mul(8).clamp(MIN_LIMIT, MAX_STORED_VALUE)
}

/// `[format][header length: u32 LE][header]`, ready for the rest to be
/// appended: the layout of snapshot files and snapshot data.
pub(crate) fn framed_header<T: Serialize>(format: u8, header: &T) -> Vec<u8> {
    let header = encode(header);
    let mut out = Vec::with_capacity(5 + header.len());
    out.push(format);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out
}

/// Splits bytes laid out by [`framed_header`] into the decoded header and
/// the rest, checking the format and every bound (the header decodes within
/// [`MAX_STORED_VALUE`]). Errors say what is wrong with `what`.
pub(crate) fn split_framed<'a, T: DeserializeOwned>(
    bytes: &'a [u8],
    format: u8,
    what: &'static str,
) -> Result<(T, &'a [u8]), String> {
    if bytes.first() != Some(&format) {
        return Err(format!("{what}: unknown format {:?}", bytes.first()));
    }
    let len = bytes
        .get(1..5)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| format!("{what}: truncated header"))?;
    let end = len.checked_add(5).ok_or_else(|| format!("{what}: header length {len} overflows"))?;
    let header = bytes.get(5..end).ok_or_else(|| format!("{what}: truncated header"))?;
    // The whole stored-value limit, not one scaled to the length: a header
    // of many small integers (a session table) claims several times its
    // encoded size when decoded, and it must always load.
    let header = decode(header, MAX_STORED_VALUE, what).map_err(|e| e.to_string())?;
    Ok((header, &bytes[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_length_is_refused_before_allocating() {
        // A Vec<u8> claiming 2^40 bytes, followed by nothing.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<Vec<u8>>(&bytes, 1 << 20, "test vector").unwrap_err();
        assert!(err.to_string().contains("test vector"), "{err}");
        // And a claim just over the tier is refused too.
        let mut bytes = vec![0xfc];
        bytes.extend_from_slice(&((1u32 << 20) + 1).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes, 1 << 20, "v").is_err());
    }

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let value = (7u64, "seven".to_owned(), vec![1u8, 2, 3]);
        let mut bytes = encode(&value);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes, MIN_LIMIT, "t").unwrap(), value);
        bytes.push(0);
        assert!(
            decode::<(u64, String, Vec<u8>)>(&bytes, MIN_LIMIT, "t")
                .unwrap_err()
                .reason
                .contains("trailing")
        );
    }
}
