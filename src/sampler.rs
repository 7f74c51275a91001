//! Sampling by bytes as a Poisson process.
//!
//! Each thread counts down `bytes_until_sample`; the allocation that takes it to zero or below is
//! sampled and a fresh exponential interval with mean `R` is drawn. Because the exponential is
//! memoryless, an allocation of `s` bytes is sampled with probability `1 − e^(−s/R)` whatever
//! came before it, so weighting each sample by the inverse of that probability
//! ([`unbias_factor`]) gives unbiased estimates of bytes and objects: the scheme Go's runtime and
//! jemalloc use.
//!
//! This module holds the configuration (rate, seed, and a generation that every change bumps)
//! and the maths; it knows nothing of threads. Each thread's countdown and generator live in
//! [`thread_state`](crate::thread_state), which reads the configuration from here and applies a
//! new generation at its next sampling point.

use std::sync::atomic::{AtomicU64, Ordering};

/// 512 KiB: Go's and jemalloc's default mean interval, about one sample per 512 KiB allocated.
pub const DEFAULT_SAMPLE_RATE_BYTES: u64 = 512 * 1024;

/// The finest mean interval at which sampled blocks are promoted to a 4 KiB boundary (see
/// [`filter`](crate::filter)): a promoted block of `s` bytes takes up to 4 KiB, and about one
/// block in `R / s` is sampled, so promotion costs at most `4 KiB / R` of the small blocks' live
/// bytes: 0.8 % at the default 512 KiB, 3.1 % here. Finer rates (a leak check's 1 KiB, tests'
/// every-allocation) sample too many blocks to promote them; their frees then pay the bitmap.
pub(crate) const PROMOTE_MIN_RATE: u64 = 128 * 1024;

/// Whether a block sampled at mean interval `rate_bytes` is promoted.
#[inline]
pub(crate) fn promotes(rate_bytes: u64) -> bool {
    rate_bytes >= PROMOTE_MIN_RATE
}

/// While sampling is off a thread still looks at the rate once per this many bytes, so that
/// turning sampling on reaches every thread without a shared load on every allocation.
pub(crate) const OFF_RECHECK_BYTES: i64 = 16 << 20;

/// Mean bytes between samples; 0 = off.
static SAMPLE_RATE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_SAMPLE_RATE_BYTES);
/// Base seed of every thread's generator.
static SEED: AtomicU64 = AtomicU64::new(0x68ea_7a7c_4e5f_1d33);
/// Bumped by every configuration change; a thread that sees a new value redraws its interval.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// Hands each thread a distinct stream of the generator.
static THREAD_STREAMS: AtomicU64 = AtomicU64::new(0);

/// Stores a new mean sampling interval (0 = off) and opens a new configuration generation, which
/// every thread applies at its next sampling point. The public setter
/// ([`set_sample_rate`](crate::thread_state::set_sample_rate)) also applies it to the calling
/// thread at once: that takes the thread's state, which lives above this module.
pub(crate) fn configure_rate(bytes: u64) {
    SAMPLE_RATE_BYTES.store(bytes, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The current mean sampling interval in bytes (0 = off).
pub fn sample_rate() -> u64 {
    SAMPLE_RATE_BYTES.load(Ordering::Relaxed)
}

/// Stores a new base seed, restarts the stream numbering and opens a new configuration
/// generation (see [`configure_rate`]; the public setter is
/// [`reseed_sampler`](crate::thread_state::reseed_sampler)).
pub(crate) fn configure_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
    THREAD_STREAMS.store(0, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The configuration generation, read only on the sampling slow path.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A fresh generator state for a thread: a distinct splitmix64 stream of the base seed.
pub(crate) fn new_thread_rng() -> u64 {
    let stream = THREAD_STREAMS.fetch_add(1, Ordering::Relaxed);
    let state = splitmix64(SEED.load(Ordering::Relaxed) ^ splitmix64(stream));
    // xorshift must never hold zero.
    state | 1
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// xorshift64*: fast, and statistically ample for drawing intervals.
#[inline]
fn next_u64(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Draws the bytes until the next sample: exponential with mean `rate_bytes`, at least 1.
/// With sampling off, returns the recheck distance instead.
pub(crate) fn draw_interval(rng: &mut u64, rate_bytes: u64) -> i64 {
    if rate_bytes == 0 {
        return OFF_RECHECK_BYTES;
    }
    // Uniform in (0, 1]: never zero, so the logarithm is finite.
    let uniform = ((next_u64(rng) >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let interval = -uniform.ln() * rate_bytes as f64;
    // `as` saturates on overflow; keep far from i64::MAX so the countdown cannot wrap.
    (interval as i64).clamp(1, i64::MAX / 4)
}

/// The inverse of the probability that an allocation of `size_bytes` was sampled at mean
/// `rate_bytes`: `1 / (1 − e^(−s/R))`. A sample stands for this many objects, and for
/// `size × factor` bytes.
///
/// ```
/// // A 4 KiB block at the default rate is sampled about once in 128.5 times.
/// let f = heapwatch::unbias_factor(4096, 512 * 1024);
/// assert!((f - 128.5).abs() < 0.1);
/// // Blocks far larger than the rate are (almost) always sampled.
/// assert!((heapwatch::unbias_factor(64 << 20, 512 * 1024) - 1.0).abs() < 1e-9);
/// ```
pub fn unbias_factor(size_bytes: u64, rate_bytes: u64) -> f64 {
    if rate_bytes == 0 || size_bytes == 0 {
        return 1.0;
    }
    let probability = -(-(size_bytes as f64) / rate_bytes as f64).exp_m1();
    if probability <= 0.0 {
        return 1.0;
    }
    1.0 / probability
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_have_the_requested_mean() {
        let mut rng = 12345u64;
        let n = 200_000;
        let rate = 512 * 1024;
        let sum: f64 = (0..n).map(|_| draw_interval(&mut rng, rate) as f64).sum();
        let mean = sum / n as f64;
        // Standard error of the mean of an exponential is rate/sqrt(n) ≈ 0.22 %; allow 5 of them.
        assert!((mean / rate as f64 - 1.0).abs() < 0.011, "mean {mean}");
    }

    #[test]
    fn off_rate_rechecks_later() {
        let mut rng = 1;
        assert_eq!(draw_interval(&mut rng, 0), OFF_RECHECK_BYTES);
    }

    #[test]
    fn rate_one_samples_every_allocation() {
        // Any allocation of at least a byte crosses an interval drawn at mean 1 byte most of
        // the time, and the factor tends to 1 for sizes far above the rate.
        assert!((unbias_factor(100, 1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn unbias_factor_matches_small_size_limit() {
        // For s ≪ R, 1/(1-e^(-s/R)) ≈ R/s + 1/2.
        let f = unbias_factor(16, 512 * 1024);
        assert!((f - (32768.0 + 0.5)).abs() < 0.01, "{f}");
    }
}
