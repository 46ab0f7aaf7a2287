//! The one seeded generator of the randomized tests (the simulation, the delivery and scenario
//! tests): xorshift64*, small, fast and reproducible from a printed seed.

/// A small deterministic generator (xorshift64*), so that randomized tests are reproducible.
///
/// The state must not be zero; [`Rng::seeded`] turns any seed (zero included) into a good state.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for any seed: the seed is scrambled (splitmix64) so that nearby seeds give
    /// unrelated sequences and zero is not a fixed point.
    #[must_use]
    pub fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index in `0..n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with this probability in percent.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with this probability in parts per million.
    pub fn chance_per_million(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn seeded_generators_are_reproducible_and_zero_is_a_valid_seed() {
        let (mut a, mut b) = (Rng::seeded(0), Rng::seeded(0));
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next()).collect::<Vec<_>>());
        assert!(xs.iter().any(|&x| x != 0));
        assert_ne!(Rng::seeded(1).next(), Rng::seeded(2).next());
    }
}
