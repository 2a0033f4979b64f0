//! What a native handler saw and answered for one request, for drift monitoring: the top-1
//! class with its probability, and cheap summaries of the input. An observation lives inline
//! (no heap allocation): the drift window keeps a thousand of them, and small long-lived
//! allocations among the request buffers would keep the allocator from returning memory.

use arrayvec::ArrayVec;

/// The most input summaries one observation carries.
pub const MAX_INPUTS: usize = 8;

/// Input summaries by name (`mean`, `std`, `zero_share`, `frames`, `width`...).
pub type Inputs = ArrayVec<(&'static str, f64), MAX_INPUTS>;

/// One request's observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The top-1 class index and its probability, for handlers that classify.
    pub top1: Option<(usize, f32)>,
    pub input: Inputs,
}

/// What [`summarize`] records.
pub const TENSOR_SUMMARIES: [&str; 3] = ["mean", "std", "zero_share"];

/// Mean, standard deviation and share of zeros of a tensor's values. Blocks of 64 values
/// are summed in f32 lanes the compiler vectorizes, the blocks' sums in f64 (tens of
/// thousands of f32 values summed one by one in f32 would lose digits).
pub fn summarize(values: &[f32], into: &mut Inputs) {
    const LANES: usize = 32;
    let (mut sum, mut squares, mut zeros) = (0f64, 0f64, 0usize);
    let mut blocks = values.chunks_exact(64);
    for block in &mut blocks {
        let (mut s, mut q, mut z) = ([0f32; LANES], [0f32; LANES], [0u32; LANES]);
        for lane in block.chunks_exact(LANES) {
            let lane: &[f32; LANES] = lane.try_into().expect("LANES values");
            for i in 0..LANES {
                s[i] += lane[i];
                q[i] += lane[i] * lane[i];
                z[i] += u32::from(lane[i] == 0.0);
            }
        }
        sum += s.iter().map(|&v| f64::from(v)).sum::<f64>();
        squares += q.iter().map(|&v| f64::from(v)).sum::<f64>();
        zeros += z.iter().sum::<u32>() as usize;
    }
    for &v in blocks.remainder() {
        sum += f64::from(v);
        squares += f64::from(v) * f64::from(v);
        zeros += usize::from(v == 0.0);
    }
    let n = values.len().max(1) as f64;
    let mean = sum / n;
    let std = (squares / n - mean * mean).max(0.0).sqrt();
    let [m, s, z] = TENSOR_SUMMARIES;
    for item in [(m, mean), (s, std), (z, zeros as f64 / n)] {
        let _ = into.try_push(item);
    }
}

/// The mean of each channel of a `[channels, ...]` tensor, named `channel_<i>_mean`.
pub fn channel_means(values: &[f32], channels: usize, into: &mut Inputs) {
    const NAMES: [&str; 4] = [
        "channel_0_mean",
        "channel_1_mean",
        "channel_2_mean",
        "channel_3_mean",
    ];
    if channels == 0 || channels > NAMES.len() || !values.len().is_multiple_of(channels) {
        return;
    }
    let per = values.len() / channels;
    for (c, plane) in values.chunks(per.max(1)).enumerate() {
        let sum: f64 = plane.iter().map(|&v| f64::from(v)).sum();
        let _ = into.try_push((NAMES[c], sum / per.max(1) as f64));
    }
}

/// The top-1 class of a probability row: the first of equal maxima, as the answer ranks them.
pub fn top1(probs: &[f32]) -> Option<(usize, f32)> {
    probs
        .iter()
        .copied()
        .enumerate()
        .fold(None, |best, (c, p)| match best {
            Some((_, b)) if p <= b => best,
            _ => Some((c, p)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_a_padded_tensor() {
        let mut s = Inputs::new();
        summarize(&[1.0, 3.0, 0.0, 0.0], &mut s);
        assert_eq!(
            s.as_slice(),
            [
                ("mean", 1.0),
                ("std", 1.224744871391589),
                ("zero_share", 0.5)
            ]
        );
        // Blocks and remainder agree with a plain f64 pass.
        let values: Vec<f32> = (0..1000)
            .map(|i| {
                if i % 7 == 0 {
                    0.0
                } else {
                    (i as f32 * 0.37).sin()
                }
            })
            .collect();
        let mut s = Inputs::new();
        summarize(&values, &mut s);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            (s[0].1 - mean).abs() < 1e-6 && (s[1].1 - var.sqrt()).abs() < 1e-6,
            "{s:?}"
        );
        assert_eq!(s[2].1, 143.0 / 1000.0);
        let mut c = Inputs::new();
        channel_means(&[1.0, 2.0, 3.0, 5.0, 0.0, 1.0], 3, &mut c);
        assert_eq!(
            c.as_slice(),
            [
                ("channel_0_mean", 1.5),
                ("channel_1_mean", 4.0),
                ("channel_2_mean", 0.5)
            ]
        );
        assert_eq!(top1(&[0.1, 0.7, 0.2]), Some((1, 0.7)));
        assert_eq!(top1(&[0.5, 0.5]), Some((0, 0.5)));
    }
}
