//! The producer contract for partitioning: every event of one image lands in one partition.
//!
//! partition = murmur3 x86_32 (seed 0) of the UTF-8 decimal id, read as unsigned, modulo the
//! partition count. Producers in any language must compute the same value; the vectors in the
//! tests below are the reference (Python: `mmh3.hash(str(id).encode(), 0, signed=False) % n`).

use std::io::Cursor;
use std::num::NonZeroU32;

use crate::image::ImageId;

/// The unsigned murmur3 x86_32 hash (seed 0) of `key`.
pub fn murmur3_32(key: &[u8]) -> u32 {
    #[allow(clippy::expect_used)] // the crate reads through `io::Read`; a byte slice never fails
    murmur3::murmur3_32(&mut Cursor::new(key), 0).expect("reading from a byte slice cannot fail")
}

/// The partition (0-based) that `key` belongs to among `partitions` partitions. A topic has
/// at least one partition; the type says so, so there is no zero to divide by.
pub fn partition_for_key(key: &[u8], partitions: NonZeroU32) -> i32 {
    // Kafka caps partitions per topic far below i32::MAX, and the value is < partitions.
    i32::try_from(murmur3_32(key) % partitions).unwrap_or(i32::MAX)
}

/// The partition of image `id` among `partitions` partitions.
pub fn partition_for(id: ImageId, partitions: NonZeroU32) -> i32 {
    partition_for_key(id.key().as_bytes(), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX: NonZeroU32 = NonZeroU32::new(6).unwrap();
    const ONE: NonZeroU32 = NonZeroU32::MIN;

    #[test]
    fn reference_vectors() {
        // Computed independently with Python's mmh3 (seed 0, unsigned).
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"42"), 3_159_925_814);
        assert_eq!(partition_for(ImageId::new(42).unwrap(), SIX), 2);
        assert_eq!(murmur3_32(b"hello"), 613_153_351);
        assert_eq!(murmur3_32(b"1"), 2_484_513_939);
        assert_eq!(murmur3_32(b"2153"), 1_153_171_884);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for id in 1..2_000i64 {
            let id = ImageId::new(id).unwrap();
            let p = partition_for(id, SIX);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_for(id, SIX));
            assert_eq!(partition_for(id, ONE), 0);
        }
    }

    #[test]
    fn partitions_are_roughly_balanced() {
        let mut counts = [0u32; 6];
        for id in 1..=60_000i64 {
            counts[partition_for(ImageId::new(id).unwrap(), SIX) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "unbalanced: {counts:?}");
        }
    }
}
