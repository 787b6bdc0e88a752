//! A small deterministic random source (SplitMix64) for think times, article popularity and
//! flood queries. The load needs spread, not secrecy, and a fixed seed makes runs repeatable.

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut r = Rng(seed ^ 0x2545_F491_4F6C_DD1D);
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for load generation and never divides by zero.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Exponentially distributed with the given mean (the gaps of a Poisson process).
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Zipf popularity over `n` items (exponent 1): a few articles and queries get most of the
/// traffic, as on a real news site.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Popularity over `n` items, `n` at least 1.
    pub fn new(n: usize) -> Self {
        let mut cumulative = Vec::with_capacity(n.max(1));
        let mut sum = 0.0;
        for i in 0..n.max(1) {
            sum += 1.0 / (i as f64 + 1.0);
            cumulative.push(sum);
        }
        Zipf { cumulative }
    }

    /// An index in `0..n`, item 0 the most popular.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_zipf_prefers_the_head() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            assert!(r.below(10) < 10);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
        let z = Zipf::new(100);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut r)] += 1;
        }
        assert!(counts[0] > counts[9] * 5, "{} vs {}", counts[0], counts[9]);
        assert!(counts[99] > 0);
    }

    #[test]
    fn exp_has_the_asked_mean() {
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean = (0..n).map(|_| r.exp(4.0)).sum::<f64>() / f64::from(n);
        assert!((mean - 4.0).abs() < 0.1, "{mean}");
    }
}
