//! Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//!
//! The Langevin noise of atom `i` at step `n` is a pure function of (seed, n, i): no generator
//! state to carry between steps, so a restarted run draws exactly the numbers the uninterrupted
//! one would have, and the GPU kernels draw the same numbers as this CPU code.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four 32-bit words from a 128-bit counter and a 64-bit key.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// Maps a 32-bit integer to (0, 1]: never 0, so that ln(u) is finite.
fn open_unit(x: u32) -> f64 {
    (f64::from(x) + 1.0) / 4_294_967_296.0
}

/// Four independent standard normal numbers for (seed, step, index, stream), by Box–Muller.
pub fn gaussian4(seed: u64, step: u64, index: u32, stream: u32) -> [f64; 4] {
    let x = philox4x32_10(
        [step as u32, (step >> 32) as u32, index, stream],
        [seed as u32, (seed >> 32) as u32],
    );
    let mut out = [0.0; 4];
    for pair in 0..2 {
        let radius = (-2.0 * open_unit(x[2 * pair]).ln()).sqrt();
        let angle = std::f64::consts::TAU * open_unit(x[2 * pair + 1]);
        out[2 * pair] = radius * angle.cos();
        out[2 * pair + 1] = radius * angle.sin();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds).
    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn gaussians_have_unit_variance_and_no_correlation_between_steps() {
        let n = 200_000u64;
        let (mut sum, mut sum2, mut cross) = (0.0, 0.0, 0.0);
        for step in 0..n {
            let a = gaussian4(7, step, 3, 0);
            let b = gaussian4(7, step + 1, 3, 0);
            sum += a[0] + a[1] + a[2] + a[3];
            sum2 += a.iter().map(|x| x * x).sum::<f64>();
            cross += a[0] * b[0];
        }
        let m = (4 * n) as f64;
        assert!((sum / m).abs() < 0.01);
        assert!((sum2 / m - 1.0).abs() < 0.01);
        assert!((cross / n as f64).abs() < 0.01);
    }
}
