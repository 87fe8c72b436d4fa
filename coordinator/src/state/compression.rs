//! zstd over log entries and checkpoints.
//!
//! Both are already compact (chunk-coded samples, interned labels), but what they hold
//! repeats across items: series ids and timestamps of neighbouring items, chunk
//! headers, label strings. zstd at its fastest level takes a third off a remote-write
//! entry and a fifth off a checkpoint, and both count in bytes per stored sample (the
//! log at its steady-state size, the checkpoint beside the store). Level 1 compresses
//! at hundreds of MB/s, a few percent of what producing the bytes costs.
//!
//! Decompression is bounded by the frame's declared content size, checked against the
//! caller's limit before anything is allocated, so a corrupt or hostile frame cannot
//! make a node allocate more than the limit.

/// zstd's fastest regular level: most of the gain at a fraction of level 3's cost.
const LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressionError {
    #[error("compressed data is not a zstd frame with a declared size")]
    NoContentSize,
    #[error("compressed data declares {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: usize },
    #[error("compressed data does not decompress: {0}")]
    Corrupt(String),
}

/// `bytes` as one zstd frame that declares its content size; `None` if zstd fails
/// (it can only fail to allocate its context), for the caller to keep the bytes as
/// they are.
pub fn compress(bytes: &[u8]) -> Option<Vec<u8>> {
    zstd::bulk::compress(bytes, LEVEL).ok()
}

/// The content of one zstd frame of at most `limit` bytes.
pub fn decompress(bytes: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(size)) => size,
        _ => return Err(CompressionError::NoContentSize),
    };
    if size > limit as u64 {
        return Err(CompressionError::TooLarge { size, limit });
    }
    let out = zstd::bulk::decompress(bytes, size as usize)
        .map_err(|e| CompressionError::Corrupt(e.to_string()))?;
    if out.len() as u64 != size {
        return Err(CompressionError::Corrupt(format!(
            "{} bytes where the frame declares {size}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_declaring_more_than_the_limit_is_refused_before_allocating() {
        let big = vec![7u8; 1 << 20];
        let frame = compress(&big).unwrap();
        assert!(frame.len() < 1024, "{} bytes", frame.len());
        assert_eq!(
            decompress(&frame, 1000),
            Err(CompressionError::TooLarge {
                size: 1 << 20,
                limit: 1000
            })
        );
        assert_eq!(decompress(&frame, 1 << 20).unwrap(), big);
    }

    #[test]
    fn garbage_and_truncated_frames_are_errors() {
        assert_eq!(
            decompress(b"not zstd at all", 1 << 20),
            Err(CompressionError::NoContentSize)
        );
        let frame = compress(
            &(0..10_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let cut = &frame[..frame.len() / 2];
        assert!(decompress(cut, 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert_eq!(decompress(&compress(&bytes).unwrap(), 4096).unwrap(), bytes);
        }

        #[test]
        fn never_panics_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decompress(&bytes, 1 << 16);
        }
    }
}
