//! What a native handler saw and answered for one request, for drift monitoring: the top-1
//! class with its probability, and cheap summaries of the input.

/// One request's observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The top-1 class index and its probability, for handlers that classify.
    pub top1: Option<(usize, f32)>,
    /// Input summaries by name (`mean`, `std`, `zero_share`, `frames`, `width`...).
    pub input: Vec<(&'static str, f64)>,
}

/// What [`summarize`] records.
pub const TENSOR_SUMMARIES: [&str; 3] = ["mean", "std", "zero_share"];

/// Mean, standard deviation and share of zeros of a tensor's values, in one pass (f64
/// sums: tens of thousands of f32 values would lose digits in f32).
pub fn summarize(values: &[f32], into: &mut Vec<(&'static str, f64)>) {
    let n = values.len().max(1) as f64;
    let (mut sum, mut squares, mut zeros) = (0f64, 0f64, 0usize);
    for &v in values {
        let v = f64::from(v);
        sum += v;
        squares += v * v;
        zeros += usize::from(v == 0.0);
    }
    let mean = sum / n;
    let std = (squares / n - mean * mean).max(0.0).sqrt();
    into.extend([
        ("mean", mean),
        ("std", std),
        ("zero_share", zeros as f64 / n),
    ]);
}

/// The mean of each channel of a `[channels, ...]` tensor, named `channel_<i>_mean`.
pub fn channel_means(values: &[f32], channels: usize, into: &mut Vec<(&'static str, f64)>) {
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
        into.push((NAMES[c], sum / per.max(1) as f64));
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
        let mut s = Vec::new();
        summarize(&[1.0, 3.0, 0.0, 0.0], &mut s);
        assert_eq!(
            s,
            vec![
                ("mean", 1.0),
                ("std", 1.224744871391589),
                ("zero_share", 0.5)
            ]
        );
        let mut c = Vec::new();
        channel_means(&[1.0, 2.0, 3.0, 5.0, 0.0, 1.0], 3, &mut c);
        assert_eq!(
            c,
            vec![
                ("channel_0_mean", 1.5),
                ("channel_1_mean", 4.0),
                ("channel_2_mean", 0.5)
            ]
        );
        assert_eq!(top1(&[0.1, 0.7, 0.2]), Some((1, 0.7)));
        assert_eq!(top1(&[0.5, 0.5]), Some((0, 0.5)));
    }
}
