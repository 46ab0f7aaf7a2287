//! The latency histogram every client records into.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A latency histogram with about 1.5 % resolution, in microseconds, shared by every client.
pub(crate) struct Hist {
    buckets: Vec<AtomicU64>,
}

impl Hist {
    const LINEAR: u64 = 128;
    const SUB: u64 = 64;

    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Hist { buckets: (0..2560).map(|_| AtomicU64::new(0)).collect() }
    }

    /// The bucket of value `v`.
    pub(crate) fn index(v: u64) -> usize {
        if v < Self::LINEAR {
            return v as usize;
        }
        let msb = 63 - u64::from(v.leading_zeros());
        let shift = msb - 6;
        let i = Self::LINEAR + (msb - 7) * Self::SUB + ((v >> shift) & (Self::SUB - 1));
        (i as usize).min(2559)
    }

    /// The lowest value of bucket `i`.
    pub(crate) fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < Self::LINEAR {
            return i;
        }
        let k = (i - Self::LINEAR) / Self::SUB;
        let m = (i - Self::LINEAR) % Self::SUB;
        (Self::SUB + m) << (k + 1)
    }

    /// Counts one value.
    pub(crate) fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
    }

    /// Empties every bucket.
    pub(crate) fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
    }

    /// A snapshot of every bucket's count.
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The lowest value of the bucket holding the `p`-th quantile of `counts` (0 when empty).
    pub(crate) fn percentile(counts: &[u64], p: f64) -> u64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(counts.len() - 1)
    }
}
