//! The decoder's memory bound (DESIGN §3.4), measured with a counting allocator.
//!
//! The bound checked is the one `wire`'s module docs state: the heap held at any moment
//! while decoding a body of `len` bytes stays below `1.5 × decode_budget(len) + 1 MiB`.
//! The budget (8 bytes per input byte plus 256 KiB) is charged for every reservation;
//! the half on top is the old buffer of a `Vec` that moves to a doubled one, and the
//! 1 MiB is serde's first reservation for a sequence, made just before it is charged.
//! Each input below is built to push one type's wire-to-heap ratio to its worst.
//!
//! Counters are per thread, so tests in this binary may run in parallel.

use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef};
use argus_common::wire::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grow(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrink(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - bytes as isize));
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are
// updated, and they are const-initialised thread locals that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as if the old block and the new one briefly coexist, which they do
        // whenever realloc has to move.
        grow(new_size);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            shrink(new_size);
        } else {
            shrink(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most heap it held above where it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (out, peak.max(0) as usize)
}

const MIB: usize = 1024 * 1024;

fn bound(len: usize) -> usize {
    decode_budget(len) * 3 / 2 + MIB
}

/// Decodes `body`, asserting the bound, and returns the outcome for further checks.
fn decode_within_bound(what: &str, body: &[u8]) -> Result<Message, WireError> {
    let (result, peak) = peak_of(|| decode_message(body));
    let limit = bound(body.len());
    eprintln!(
        "{what}: {} input bytes, peak {peak} bytes ({:.1}x), limit {limit}, {}",
        body.len(),
        peak as f64 / body.len().max(1) as f64,
        match &result {
            Ok(m) => format!("decoded {}", m.kind_name()),
            Err(e) => e.to_string(),
        }
    );
    assert!(
        peak <= limit,
        "{what}: peak {peak} over the bound {limit} for {} input bytes",
        body.len()
    );
    result
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A body that starts like `prefix`, announces `count` elements, and then holds `fill`
/// bytes of zeros, each zero being the smallest possible element (an empty string or
/// list, a zero number).
fn adversarial(prefix: &[u8], count: u64, fill: usize) -> Vec<u8> {
    let mut body = prefix.to_vec();
    varint(count, &mut body);
    body.resize(body.len() + fill, 0);
    body
}

// Field prefixes up to the first list of each shape.
const HELLO_CAPS: &[u8] = &[0, 1, 1, 0, 0, 0, 0]; // versions, "", incarnation, "", ""
const SERIES_DEFS: &[u8] = &[4];
const ONE_DEF_LABELS: &[u8] = &[4, 1, 0, 0]; // one def: ref 0, name "", then its labels
const BATCH_GROUPS: &[u8] = &[5, 0, 0, 0];
const ONE_GROUP_POINTS: &[u8] = &[5, 0, 0, 0, 1, 0]; // one group at t=0, then its points
const ACK_REFUSED: &[u8] = &[6, 0, 0];
const CSR: &[u8] = &[14];

#[test]
fn dense_tiny_elements_stay_within_the_bound() {
    let cases: [(&str, &[u8]); 7] = [
        ("Hello.capabilities of empty strings", HELLO_CAPS),
        ("SeriesDefs of empty defs", SERIES_DEFS),
        ("labels of empty pairs", ONE_DEF_LABELS),
        ("Batch of empty groups", BATCH_GROUPS),
        ("points of zeros", ONE_GROUP_POINTS),
        ("Ack.refused pairs", ACK_REFUSED),
        ("csr bytes", CSR),
    ];
    for (what, prefix) in cases {
        for fill in [1000, 64 * 1024, MIB, DEFAULT_MAX_FRAME - 16] {
            // Exactly as many elements as the zeros could hold, as many as fit in the
            // input claimed, and far more than the input could hold.
            for count in [fill as u64, fill as u64 / 2, u64::MAX >> 1] {
                let body = adversarial(prefix, count, fill);
                let _ = decode_within_bound(&format!("{what} ({fill}, {count})"), &body);
            }
        }
    }
}

#[test]
fn a_frame_of_empty_strings_is_refused_for_its_budget() {
    let body = adversarial(HELLO_CAPS, MIB as u64, MIB);
    let err = decode_within_bound("capabilities", &body).expect_err("refused");
    assert!(
        matches!(err, WireError::DecodeBudget { len, .. } if len == body.len()),
        "{err}"
    );
}

#[test]
fn small_messages_are_never_refused_for_their_budget() {
    // The densest shapes there are, just under 16 KiB, with as many elements as the
    // zeros make (an empty def is 6 zero bytes, a pair 2, ...): the constant part of the
    // budget covers them, so whatever is wrong with them is reported as what it is.
    let shapes: [(&[u8], usize); 5] = [
        (HELLO_CAPS, 1),
        (SERIES_DEFS, 6),
        (ONE_DEF_LABELS, 2),
        (BATCH_GROUPS, 2),
        (ACK_REFUSED, 2),
    ];
    for (prefix, element) in shapes {
        let count = (16 * 1024 - 16) / element;
        let body = adversarial(prefix, count as u64, count * element);
        let result = decode_within_bound("small", &body);
        assert!(
            !matches!(result, Err(WireError::DecodeBudget { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn announced_lengths_alone_reserve_nothing() {
    // Every list announcing u64::MAX elements but carrying none.
    for prefix in [
        HELLO_CAPS,
        SERIES_DEFS,
        ONE_DEF_LABELS,
        BATCH_GROUPS,
        ONE_GROUP_POINTS,
        ACK_REFUSED,
        CSR,
    ] {
        let body = adversarial(prefix, u64::MAX, 0);
        let (result, peak) = peak_of(|| decode_message(&body));
        assert!(result.is_err());
        assert!(peak < 1024, "{peak} bytes for a {}-byte body", body.len());
    }
}

#[test]
fn frame_readers_allocate_only_for_bytes_that_arrived() {
    let mut header = &u32::MAX.to_be_bytes()[..];
    let mut decoder = FrameDecoder::default();
    let (result, peak) = peak_of(|| decoder.decode(&mut header));
    assert!(matches!(result, Err(WireError::FrameTooLarge { .. })));
    assert_eq!(
        peak, 0,
        "an oversized prefix must be refused before any allocation"
    );

    // A 4 MiB frame is allowed, but only 10 of its bytes ever arrive.
    let mut input: Vec<u8> = (DEFAULT_MAX_FRAME as u32).to_be_bytes().to_vec();
    input.extend_from_slice(&[0; 10]);
    let mut decoder = FrameDecoder::default();
    let mut rest = &input[..];
    let (result, peak) = peak_of(|| decoder.decode(&mut rest));
    assert!(matches!(result, Ok(None)));
    assert!(peak < 1024, "{peak} bytes buffered for 10 received");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut stream = &input[..];
    let (result, peak) =
        peak_of(|| runtime.block_on(read_frame(&mut stream, &FrameLimits::default())));
    assert!(matches!(result, Err(WireError::Truncated { .. })));
    // read_frame reserves at most 16 KiB ahead of what arrived.
    assert!(peak < 20 * 1024, "{peak} bytes allocated for 10 received");
}

#[test]
fn real_traffic_fits_the_budget() {
    // A full frame of samples, the largest message an agent sends.
    let groups: Vec<PointGroup> = (0..350)
        .map(|t| PointGroup {
            timestamp_ms: 1_700_000_000_000 + t * 15_000,
            points: (0..1000u64).map(|r| (r, r as f64 * 1.5)).collect(),
        })
        .collect();
    let batch: Message = Batch {
        incarnation: 9,
        seq: 100,
        lowest_seq: 90,
        groups,
    }
    .into();
    let body = encode_message(&batch);
    assert!(body.len() <= DEFAULT_MAX_FRAME);
    decode_within_bound("full batch", &body).expect("a real batch decodes");

    // Series definitions as the host collector makes them: short values, few labels.
    let defs: Vec<SeriesDef> = (0..MAX_SERIES_DEFS as u64)
        .map(|r| SeriesDef {
            series_ref: r,
            name: "node_cpu_seconds_total".into(),
            labels: Labels::from_pairs([("cpu", (r % 64).to_string()), ("mode", "idle".into())]),
            kind: MetricType::Counter,
            unit: "seconds".into(),
            help: "Seconds the CPUs spent in each mode.".into(),
        })
        .collect();
    let body = encode_message(&SeriesDefs { defs }.into());
    assert!(body.len() <= DEFAULT_MAX_FRAME);
    decode_within_bound("series defs", &body).expect("real series defs decode");

    // The same with no help or unit and one one-character label: the densest defs an
    // honest agent could send still decode.
    let defs: Vec<SeriesDef> = (0..MAX_SERIES_DEFS as u64)
        .map(|r| SeriesDef {
            series_ref: r,
            name: "node_load1".into(),
            labels: Labels::from_pairs([("i", "0")]),
            kind: MetricType::Gauge,
            unit: String::new(),
            help: String::new(),
        })
        .collect();
    let body = encode_message(&SeriesDefs { defs }.into());
    decode_within_bound("dense series defs", &body).expect("dense series defs decode");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_stay_within_the_bound(body in vec(any::<u8>(), 0..65536)) {
        let _ = decode_within_bound("random", &body);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_stay_within_the_bound(
        prefix in prop::sample::select(vec![HELLO_CAPS, SERIES_DEFS, ONE_DEF_LABELS, BATCH_GROUPS, ONE_GROUP_POINTS, ACK_REFUSED, CSR]),
        count in any::<u64>(),
        tail in vec(any::<u8>(), 0..65536),
    ) {
        let mut body = adversarial(prefix, count, 0);
        body.extend_from_slice(&tail);
        let _ = decode_within_bound("prefixed random", &body);
    }
}
