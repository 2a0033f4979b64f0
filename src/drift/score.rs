//! Drift scores: the population stability index of binned values and of label shares, and
//! the Jensen-Shannon divergence of label distributions; references built from observations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Shares below this count as this much, so that an empty bin scores finitely (the usual
/// PSI smoothing).
const FLOOR: f64 = 1e-4;

/// What a window is compared with: label shares and, per input summary, the reference's
/// bins (`edges` between them, as quantiles of the reference) and their shares. The format
/// of `drift-reference.json` in an archive and of `PUT .../drift/reference`'s answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Requests the reference was built from.
    #[serde(default)]
    pub requests: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, f64>,
    #[serde(default)]
    pub inputs: BTreeMap<String, Binned>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Binned {
    /// Ascending bin edges: a value v falls in the bin of the edges at or below it.
    pub edges: Vec<f64>,
    /// One share per bin (`edges.len() + 1`), summing to 1.
    pub shares: Vec<f64>,
}

impl Reference {
    /// A reference from its JSON, checked.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let r: Self = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        r.validate().map(|_| r)
    }

    /// Checks a reference from a file or a request.
    pub fn validate(&self) -> Result<(), String> {
        let share = |s: &f64| s.is_finite() && (0.0..=1.0).contains(s);
        if !self.labels.values().all(share) {
            return Err("label shares must be numbers between 0 and 1".into());
        }
        for (name, b) in &self.inputs {
            if b.shares.len() != b.edges.len() + 1 || !b.shares.iter().all(share) {
                return Err(format!(
                    "input {name:?}: one share between 0 and 1 per bin (edges + 1) is needed"
                ));
            }
            if !b.edges.iter().all(|e| e.is_finite()) || !b.edges.is_sorted() {
                return Err(format!(
                    "input {name:?}: edges must be finite and ascending"
                ));
            }
        }
        Ok(())
    }
}

impl Binned {
    /// Bins from reference values: edges at the `bins` quantiles (equal ones merged).
    pub fn from_values(mut values: Vec<f64>, bins: usize) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..bins.max(1))
            .filter_map(|i| values.get(i * values.len() / bins))
            .copied()
            .collect();
        edges.dedup();
        // No edge at the minimum: its bin below would stay empty in the reference.
        if edges.first() == values.first() {
            edges.remove(0);
        }
        let shares = shares(&edges, &values);
        Self { edges, shares }
    }

    /// The stability index of `values` against these bins.
    pub fn psi(&self, values: &[f64]) -> f64 {
        psi(&self.shares, &shares(&self.edges, values))
    }
}

/// Shares of `values` in the bins between `edges`.
fn shares(edges: &[f64], values: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; edges.len() + 1];
    for v in values {
        counts[edges.partition_point(|e| e <= v)] += 1;
    }
    let n = values.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

/// Population stability index: Σ (actual − expected) · ln(actual / expected).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(FLOOR), a.max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Jensen-Shannon divergence in bits (0 for equal distributions, 1 for disjoint ones).
/// The inputs are counts or shares; each is normalized.
pub fn js(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp <= 0.0 || sq <= 0.0 {
        return 0.0;
    }
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            let m = (a + b) / 2.0;
            (kl(a, m) + kl(b, m)) / 2.0
        })
        .sum::<f64>()
        .max(0.0)
}

/// Two label distributions over the union of their labels, in one order.
pub fn aligned<K: Ord + Clone>(p: &BTreeMap<K, f64>, q: &BTreeMap<K, f64>) -> (Vec<f64>, Vec<f64>) {
    let keys: std::collections::BTreeSet<&K> = p.keys().chain(q.keys()).collect();
    keys.into_iter()
        .map(|k| {
            (
                p.get(k).copied().unwrap_or(0.0),
                q.get(k).copied().unwrap_or(0.0),
            )
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_distributions_score_zero_and_disjoint_ones_high() {
        assert_eq!(js(&[1.0, 1.0], &[2.0, 2.0]), 0.0);
        assert!((js(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!(psi(&[0.5, 0.5], &[0.5, 0.5]).abs() < 1e-12);
        // The textbook example: 10 % of the mass moved between two bins.
        let moved = psi(&[0.5, 0.5], &[0.6, 0.4]);
        assert!((moved - 0.1 * (1.5f64).ln()).abs() < 1e-12, "{moved}");
    }

    #[test]
    fn reference_bins_are_quantiles_and_a_shift_raises_the_index() {
        let values: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let b = Binned::from_values(values.clone(), 10);
        assert_eq!(b.edges.len(), 9);
        assert!(
            b.shares.iter().all(|s| (s - 0.1).abs() < 1e-9),
            "{:?}",
            b.shares
        );
        assert!(b.psi(&values) < 1e-9);
        let shifted: Vec<f64> = values.iter().map(|v| v + 0.3).collect();
        assert!(b.psi(&shifted) > 1.0, "{}", b.psi(&shifted));
        // A constant reference has one bin: values past it move no share out of it.
        let flat = Binned::from_values(vec![0.0; 10], 10);
        assert_eq!((flat.edges.len(), flat.shares.clone()), (0, vec![1.0]));
    }

    #[test]
    fn references_are_checked() {
        let bad: Reference = serde_json::from_str(
            r#"{"inputs": {"mean": {"edges": [1, 0], "shares": [0.2, 0.3, 0.5]}}}"#,
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("ascending"));
        let bad: Reference = serde_json::from_str(r#"{"labels": {"cat": 2}}"#).unwrap();
        assert!(bad.validate().is_err());
    }
}
