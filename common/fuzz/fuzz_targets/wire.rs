//! Arbitrary bytes into the frame decoder and the message decoder: no input may panic,
//! allocate more than 16 MiB at once, or decode to a message that does not survive a
//! second round trip.

#![no_main]

use argus_common::wire::{
    FrameDecoder, FrameLimits, Message, WireError, decode_message, encode_message,
};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};

/// No single allocation may exceed this; inputs are at most a few KiB, so anything near
/// it means a length from the input was trusted.
const MAX_ALLOCATION: usize = 16 * 1024 * 1024;

struct Capped;

// SAFETY: forwards to the system allocator unchanged after the size check.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // abort, not panic: a panic would allocate, and libFuzzer reports SIGABRT as a crash.
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Whatever decodes must encode and decode again to the same message (values by bits).
fn check_round_trip(msg: &Message) {
    let body = encode_message(msg);
    let again = decode_message(&body).expect("a decoded message must decode again");
    assert_eq!(
        encode_message(&again),
        body,
        "round trip changed the message"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_message(data) {
        check_round_trip(&msg);
    }

    // The same bytes as a stream, in pieces whose size the first byte picks, through a
    // decoder with a small limit so oversized prefixes are hit often.
    let piece = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut decoder = FrameDecoder::new(FrameLimits::new(2048));
    for mut chunk in data.chunks(piece) {
        while !chunk.is_empty() {
            match decoder.decode(&mut chunk) {
                // The stream cannot be trusted past an oversized prefix; neither can we go on.
                Err(WireError::FrameTooLarge { .. }) => return,
                Ok(Some(msg)) => {
                    assert!(msg.validate().is_ok());
                    check_round_trip(&msg);
                }
                Ok(None) | Err(_) => {}
            }
        }
    }
    let _ = decoder.finish();
});
