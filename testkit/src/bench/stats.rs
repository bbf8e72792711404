//! Statistics of samples: percentiles of a sorted list, and a latency histogram.

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A log-linear histogram of non-negative integers (here microseconds): exact below 128,
/// then 64 buckets per power of two (under 1.6 % error). Cheap to record and to merge.
#[derive(Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    pub total: u64,
    pub max: u64,
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < 128 {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros();
        let sub = (value >> (exponent - 6)) as usize & 63;
        128 + (exponent as usize - 7) * 64 + sub
    }

    fn lower_bound(index: usize) -> u64 {
        if index < 128 {
            return index as u64;
        }
        let k = index - 128;
        (64 + (k % 64) as u64) << (k / 64 + 1)
    }

    pub fn record(&mut self, value: u64) {
        let index = Self::index(value);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The upper edge of the bucket holding the p-th percentile (never above the max).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = (((p / 100.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (Self::lower_bound(index + 1) - 1).min(self.max);
            }
        }
        self.max
    }
}
