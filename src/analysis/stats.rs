//! The statistics behind the analysis: a Poisson rate test, false-discovery control over many
//! places, an exact interval for a ratio of two rates, and profile similarity. Distributions come
//! from `statrs`; what is built here is only how they are combined.

use statrs::distribution::{Beta, ContinuousCDF, DiscreteCDF, Poisson};

/// P(X ≥ k) for X ~ Poisson(λ): how surprising `k` requests are where `λ` were expected.
pub fn poisson_at_least(k: u64, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    match Poisson::new(lambda) {
        // sf(x) is P(X > x).
        Ok(p) => p.sf(k - 1).clamp(0.0, 1.0),
        Err(_) => 0.0,
    }
}

/// P(X ≥ n) for X ~ Binomial(total, p). For a place's count in the window against its own
/// history: given the `total` requests in the window and the `k` windows before it, the window's
/// share is binomial with p = 1/(1+k) when nothing changed — an exact test that counts the
/// history's own noise, which taking its mean as a known rate would not.
pub fn binomial_at_least(n: u64, total: u64, p: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    if n > total || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // P(X ≥ n) = I_p(n, total − n + 1), the regularized incomplete beta function.
    match Beta::new(n as f64, (total - n + 1) as f64) {
        Ok(b) => b.cdf(p).clamp(0.0, 1.0),
        Err(_) => 0.0,
    }
}

/// Benjamini–Hochberg adjusted p-values (q-values), in the input's order: a place is a hotspot
/// at false-discovery rate α when its q-value is at most α. Controls the share of false hotspots
/// among those reported, which is what an operator acting on a list cares about.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let v = (p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(v);
        q[i] = running;
    }
    q
}

/// A ratio of two rates with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateRatio {
    /// after / before, per unit of time.
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
}

/// The ratio of the rate after to the rate before (`after` events in `t_after`, `before` in
/// `t_before`), with an exact interval at `level` (e.g. 0.95): conditional on the total, the
/// after count is binomial with p = t_a·ρ / (t_b + t_a·ρ), so a Clopper–Pearson interval for p
/// maps to one for ρ. Exact for small counts, where the usual log-normal interval is not.
/// `None` when nothing was seen before (no rate to compare with) or a time is not positive.
pub fn rate_ratio(
    before: u64,
    t_before: f64,
    after: u64,
    t_after: f64,
    level: f64,
) -> Option<RateRatio> {
    if before == 0 || t_before <= 0.0 || t_after <= 0.0 {
        return None;
    }
    let n = before + after;
    let alpha = 1.0 - level;
    let (x, n_f) = (after as f64, n as f64);
    let p_low = if after == 0 {
        0.0
    } else {
        Beta::new(x, n_f - x + 1.0).ok()?.inverse_cdf(alpha / 2.0)
    };
    // after < n always, since before > 0.
    let p_high = Beta::new(x + 1.0, n_f - x)
        .ok()?
        .inverse_cdf(1.0 - alpha / 2.0);
    let to_ratio = |p: f64| p / (1.0 - p) * t_before / t_after;
    Some(RateRatio {
        ratio: (after as f64 / t_after) / (before as f64 / t_before),
        low: to_ratio(p_low),
        high: to_ratio(p_high),
    })
}

/// Cosine similarity of two count profiles (1: the same mix, 0: nothing in common).
pub fn cosine(a: &[u64], b: &[u64]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// The median of counts (the mean of the middle two for an even number); 0 for none.
pub fn median(xs: &[u64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] + v[m]) as f64 / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tail_matches_hand_computed_values() {
        // P(X ≥ 1 | 1) = 1 − e^-1.
        assert!((poisson_at_least(1, 1.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // P(X ≥ 3 | 0.5) = 1 − e^-0.5 (1 + 0.5 + 0.125).
        let want = 1.0 - (-0.5f64).exp() * 1.625;
        assert!((poisson_at_least(3, 0.5) - want).abs() < 1e-12);
        assert_eq!(poisson_at_least(0, 3.0), 1.0);
        assert_eq!(poisson_at_least(2, 0.0), 0.0);
        assert!(poisson_at_least(40, 5.0) < 1e-15);
    }

    #[test]
    fn the_binomial_tail_is_exact() {
        // 8 or more of 10 at a half: (45 + 10 + 1) / 1024.
        assert!((binomial_at_least(8, 10, 0.5) - 56.0 / 1024.0).abs() < 1e-12);
        // 3 or more of 3 at 0.25: 1/64.
        assert!((binomial_at_least(3, 3, 0.25) - 1.0 / 64.0).abs() < 1e-12);
        assert_eq!(binomial_at_least(0, 5, 0.3), 1.0);
        assert_eq!(binomial_at_least(6, 5, 0.3), 0.0);
    }

    #[test]
    fn benjamini_hochberg_matches_the_textbook_example() {
        let p = [0.01, 0.04, 0.03, 0.005];
        let q = benjamini_hochberg(&p);
        // Sorted 0.005 0.01 0.03 0.04 → ×4/rank: 0.02 0.02 0.04 0.04, monotone from the top.
        let want = [0.02, 0.04, 0.04, 0.02];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        assert!(benjamini_hochberg(&[]).is_empty());
    }

    #[test]
    fn a_rate_ratio_interval_holds_its_estimate_and_narrows_with_counts() {
        let small = rate_ratio(50, 60.0, 9, 60.0, 0.95).unwrap();
        assert!((small.ratio - 0.18).abs() < 1e-12);
        assert!(small.low < 0.18 && 0.18 < small.high);
        let large = rate_ratio(5000, 60.0, 900, 60.0, 0.95).unwrap();
        assert!(large.high - large.low < (small.high - small.low) / 5.0);
        // Different lengths of time: the rate, not the count, is compared.
        let r = rate_ratio(100, 100.0, 50, 25.0, 0.95).unwrap();
        assert!((r.ratio - 2.0).abs() < 1e-12 && r.low < 2.0 && r.high > 2.0);
        // Nothing after: the ratio is 0, the interval starts at 0.
        let z = rate_ratio(30, 10.0, 0, 10.0, 0.95).unwrap();
        assert_eq!((z.ratio, z.low), (0.0, 0.0));
        assert!(z.high > 0.0 && z.high < 0.2);
        assert!(rate_ratio(0, 10.0, 5, 10.0, 0.95).is_none());
    }

    #[test]
    fn the_exact_interval_covers_the_truth_as_often_as_it_says() {
        // 400 draws of a known ratio (0.18) from a seeded Poisson: about 95 % of the intervals
        // hold it (binomial bounds on 400 trials at 95 %: 370 to 390 or so, and exact intervals
        // are conservative, so more).
        let mut rng = crate::rng::Rng::new(7);
        let mut draw = |lambda: f64| {
            // Knuth's method, fine for these means.
            let l = (-lambda).exp();
            let (mut k, mut p) = (0u64, 1.0);
            loop {
                p *= rng.unit();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        };
        let mut covered = 0;
        for _ in 0..400 {
            let before = draw(40.0);
            let after = draw(40.0 * 0.18);
            if let Some(r) = rate_ratio(before, 1.0, after, 1.0, 0.95) {
                covered += usize::from(r.low <= 0.18 && 0.18 <= r.high);
            }
        }
        assert!(covered >= 370, "{covered} of 400");
    }

    #[test]
    fn cosine_and_median() {
        assert!((cosine(&[4, 1, 0], &[8, 2, 0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1, 0], &[0, 1]), 0.0);
        assert_eq!(cosine(&[0, 0], &[1, 1]), 0.0);
        assert_eq!(median(&[5, 1, 3]), 3.0);
        assert_eq!(median(&[4, 1, 3, 10]), 3.5);
        assert_eq!(median(&[]), 0.0);
    }
}
