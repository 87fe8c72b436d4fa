//! Exactly-once apply of agent batches over at-least-once delivery (DESIGN §3.1).
//!
//! Per (agent, incarnation) the state machine keeps a contiguous watermark (every seq
//! at or below it was applied or will never come) plus a bitmap of applied seqs just
//! above it, as wide as the agent's in-flight window. A batch also says the lowest seq
//! still in the agent's spool, so the watermark moves past batches the spool dropped
//! when it was full instead of waiting for them forever.
//!
//! Pure and deterministic: it is part of the replicated state and of checkpoints.

use serde::{Deserialize, Serialize};

/// How many seqs above the watermark can be tracked: the agent's in-flight window
/// must not be wider. A multiple of 64.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: apply it.
    Apply,
    /// Applied before (or below the watermark): acknowledge without applying.
    Duplicate,
    /// Further ahead of the watermark than the window: the agent must retry later,
    /// once earlier batches have landed.
    AheadOfWindow,
}

/// The applied set of one agent incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    /// Every seq <= watermark is settled. 0 means none (seqs start at 1).
    watermark: u64,
    /// Bit i of word w: seq watermark + 1 + 64w + i was applied.
    bits: Vec<u64>,
    /// The highest seq settled (applied, or given up by the agent's spool), for
    /// `HelloOk`: a rewound spool must not reuse any seq at or below it.
    highest: u64,
}

impl Default for SeqWindow {
    fn default() -> Self {
        SeqWindow {
            watermark: 0,
            bits: vec![0; WORDS],
            highest: 0,
        }
    }
}

impl SeqWindow {
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The highest seq settled, if any.
    pub fn highest_applied(&self) -> Option<u64> {
        (self.highest > 0).then_some(self.highest)
    }

    /// Decides about batch `seq`, whose sender's spool holds nothing below
    /// `lowest_seq`, and records it as applied when the verdict is [`Verdict::Apply`].
    pub fn admit(&mut self, seq: u64, lowest_seq: u64) -> Verdict {
        // Seqs below the spool's lowest will never be sent again: settle them.
        if lowest_seq > self.watermark + 1 {
            self.advance_to(lowest_seq.min(seq) - 1);
        }
        if seq <= self.watermark {
            return Verdict::Duplicate;
        }
        let offset = seq - self.watermark - 1;
        if offset >= WINDOW {
            return Verdict::AheadOfWindow;
        }
        let (w, b) = ((offset / 64) as usize, offset % 64);
        if self.bits[w] & (1 << b) != 0 {
            return Verdict::Duplicate;
        }
        self.bits[w] |= 1 << b;
        self.highest = self.highest.max(seq);
        self.settle();
        Verdict::Apply
    }

    /// Moves the watermark up to `to`, shifting the bitmap; bits that fall below are
    /// settled either way.
    fn advance_to(&mut self, to: u64) {
        if to <= self.watermark {
            return;
        }
        let shift = to - self.watermark;
        self.watermark = to;
        self.highest = self.highest.max(to);
        if shift >= WINDOW {
            self.bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        self.shift_bits(shift);
        self.settle();
    }

    /// Absorbs the contiguous run of applied seqs just above the watermark.
    fn settle(&mut self) {
        let run = if self.bits[0] == u64::MAX {
            let full = self.bits.iter().take_while(|w| **w == u64::MAX).count() as u64;
            let rest = self
                .bits
                .get(full as usize)
                .map_or(0, |w| w.trailing_ones() as u64);
            full * 64 + rest
        } else {
            self.bits[0].trailing_ones() as u64
        };
        if run > 0 {
            self.watermark += run;
            self.shift_bits(run);
        }
    }

    fn shift_bits(&mut self, shift: u64) {
        let (words, bits) = ((shift / 64) as usize, shift % 64);
        for i in 0..WORDS {
            let lo = self.bits.get(i + words).copied().unwrap_or(0);
            let hi = self.bits.get(i + words + 1).copied().unwrap_or(0);
            self.bits[i] = if bits == 0 {
                lo
            } else {
                (lo >> bits) | (hi << (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_batches_apply_once() {
        let mut w = SeqWindow::default();
        for seq in 1..=200 {
            assert_eq!(w.admit(seq, 1), Verdict::Apply);
            assert_eq!(w.admit(seq, 1), Verdict::Duplicate);
        }
        assert_eq!(w.watermark(), 200);
        assert_eq!(w.highest_applied(), Some(200));
    }

    #[test]
    fn out_of_order_within_the_window_is_tracked_by_bits() {
        let mut w = SeqWindow::default();
        assert_eq!(w.admit(3, 1), Verdict::Apply);
        assert_eq!(w.admit(2, 1), Verdict::Apply);
        assert_eq!(w.watermark(), 0);
        assert_eq!(w.admit(3, 1), Verdict::Duplicate);
        assert_eq!(w.admit(1, 1), Verdict::Apply);
        assert_eq!(w.watermark(), 3);
        assert_eq!(w.highest_applied(), Some(3));
    }

    #[test]
    fn a_spool_that_dropped_batches_moves_the_watermark() {
        let mut w = SeqWindow::default();
        assert_eq!(w.admit(1, 1), Verdict::Apply);
        // Seqs 2..=9 were dropped by the agent's full spool; it says so with lowest_seq.
        assert_eq!(w.admit(10, 10), Verdict::Apply);
        assert_eq!(w.watermark(), 10);
        assert_eq!(w.admit(5, 5), Verdict::Duplicate, "below the watermark");
    }

    #[test]
    fn a_batch_beyond_the_window_must_wait() {
        let mut w = SeqWindow::default();
        assert_eq!(w.admit(WINDOW + 1, 1), Verdict::AheadOfWindow);
        assert_eq!(w.admit(WINDOW, 1), Verdict::Apply);
        assert_eq!(w.highest_applied(), Some(WINDOW));
    }

    proptest! {
        /// Against a plain set: whatever the order, duplication and spool drops, each
        /// seq is applied at most once, and every seq the agent kept is applied
        /// exactly once when it finally arrives.
        #[test]
        fn matches_a_set_model(ops in prop::collection::vec((1u64..300, 0u64..40), 1..400)) {
            let mut w = SeqWindow::default();
            let mut applied = BTreeSet::new();
            let mut lowest = 1u64;
            for (seq, bump) in ops {
                // The agent's spool only ever moves its lowest seq forward.
                lowest = lowest.max(seq.saturating_sub(bump)).min(seq);
                match w.admit(seq, lowest) {
                    Verdict::Apply => prop_assert!(applied.insert(seq), "seq {} applied twice", seq),
                    Verdict::Duplicate => prop_assert!(applied.contains(&seq) || seq < lowest || seq <= w.watermark()),
                    Verdict::AheadOfWindow => prop_assert!(seq > w.watermark() + WINDOW),
                }
                prop_assert!(w.bits.len() == WORDS);
            }
        }
    }
}
