//! Bounded mutation fuzzing for what latchkey parses itself (tests only). Each target feeds
//! its parser mutations of a valid input — bit flips, truncations, splices, random bytes —
//! and fails, printing the seed and the input, if the parser panics. The normal suite runs
//! `LATCHKEY_FUZZ_ITERATIONS` (default 2,000) per target; a long run is
//! `LATCHKEY_FUZZ_ITERATIONS=1000000 cargo test --lib fuzz_` (docs/operations.md). This is
//! random, not coverage-guided: cargo-fuzz needs a nightly toolchain this project does not
//! assume.

/// A small deterministic generator (xorshift64*), seeded per target and run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn iterations() -> usize {
    std::env::var("LATCHKEY_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn seed() -> u64 {
    std::env::var("LATCHKEY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1a7c_11e7)
}

/// One mutation of `valid`.
pub(crate) fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(rng.below(out.len() + 1)),
            2 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            3 => {
                let at = rng.below(out.len() + 1);
                let n = rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
            }
            4 if out.len() > 1 => {
                let a = rng.below(out.len());
                let b = rng.below(out.len());
                let (lo, hi) = (a.min(b), a.max(b));
                out.drain(lo..hi);
            }
            _ => {
                // Interesting values where a length or a varint may sit.
                if !out.is_empty() {
                    let i = rng.below(out.len());
                    out[i] = [0x00, 0xff, 0x7f, 0x80, b'"', b'{', b'\\'][rng.below(7)];
                }
            }
        }
    }
    out
}

/// Runs `target` on mutations of each of `valid` inputs; any panic fails with the input.
pub(crate) fn run(name: &str, valid: &[Vec<u8>], target: impl Fn(&[u8])) {
    let seed = seed();
    let mut rng = Rng::new(
        seed ^ name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
    );
    for i in 0..iterations() {
        let base = &valid[rng.below(valid.len())];
        let input = mutate(&mut rng, base);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        assert!(
            outcome.is_ok(),
            "fuzz target {name} panicked at iteration {i} (LATCHKEY_FUZZ_SEED={seed}) on input {}",
            hex::encode(&input)
        );
    }
}
