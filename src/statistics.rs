//! Robust statistics for memory series: the Theil–Sen slope (the median of pairwise slopes)
//! and the Mann–Kendall test for a monotonic trend. Both ignore the size of outliers (they use
//! signs and medians), which is what a heap series with spikes needs: one spike or one
//! garbage-collection-like drop does not swing a slope or a verdict. Below both the detector
//! (floor trends) and the watch (the working set's time to the limit).

/// Theil–Sen slope of `points` (x, y): the median of the slopes between every pair with
/// distinct x. `None` with fewer than two distinct x.
pub(crate) fn theil_sen_slope(points: &[(f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, &(x1, y1)) in points.iter().enumerate() {
        for &(x2, y2) in &points[i + 1..] {
            if x2 != x1 {
                slopes.push((y2 - y1) / (x2 - x1));
            }
        }
    }
    median(&mut slopes)
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Seconds until `current` reaches `limit` at `slope_per_second`; `None` when not rising.
pub(crate) fn seconds_to_limit(current: f64, limit: f64, slope_per_second: f64) -> Option<f64> {
    (slope_per_second > 0.0).then(|| ((limit - current) / slope_per_second).max(0.0))
}

/// The result of a Mann–Kendall test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannKendall {
    /// The statistic S: concordant minus discordant pairs.
    pub s: f64,
    /// The normal approximation's z score (continuity-corrected, ties accounted for).
    pub z: f64,
    /// One-sided p-value for an increasing trend.
    pub p_increasing: f64,
}

/// Mann–Kendall test of `values` in time order. `None` with fewer than 4 values.
///
/// ```
/// use heapwatch::detect::mann_kendall;
/// let rising: Vec<f64> = (0..20).map(|i| i as f64 + if i % 2 == 0 { 0.5 } else { 0.0 }).collect();
/// assert!(mann_kendall(&rising).unwrap().p_increasing < 0.001);
/// let flat = [3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
/// assert!(mann_kendall(&flat).unwrap().p_increasing > 0.1);
/// ```
pub fn mann_kendall(values: &[f64]) -> Option<MannKendall> {
    let n = values.len();
    if n < 4 {
        return None;
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += match values[j].partial_cmp(&values[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    // Variance with the correction for tied groups.
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && sorted[j] == sorted[i] {
            j += 1;
        }
        let t = (j - i) as f64;
        tie_term += t * (t - 1.0) * (2.0 * t + 5.0);
        i = j;
    }
    let nf = n as f64;
    let variance = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - tie_term) / 18.0;
    let s = s as f64;
    let z = if variance <= 0.0 {
        0.0
    } else if s > 0.0 {
        (s - 1.0) / variance.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / variance.sqrt()
    } else {
        0.0
    };
    Some(MannKendall {
        s,
        z,
        p_increasing: normal_upper_tail(z),
    })
}

/// P(Z > z) for a standard normal Z.
pub(crate) fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_to_outliers() {
        let mut points: Vec<(f64, f64)> = (0..21).map(|x| (x as f64, 2.0 * x as f64)).collect();
        points[10].1 = 1e9; // one spike
        points[15].1 = -1e9; // one drop
        assert_eq!(theil_sen_slope(&points), Some(2.0));
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(theil_sen_slope(&[]), None);
        assert_eq!(theil_sen_slope(&[(1.0, 1.0)]), None);
        assert_eq!(theil_sen_slope(&[(1.0, 1.0), (1.0, 5.0)]), None);
        assert_eq!(seconds_to_limit(50.0, 100.0, 0.0), None);
        assert_eq!(seconds_to_limit(50.0, 100.0, 5.0), Some(10.0));
        assert_eq!(seconds_to_limit(150.0, 100.0, 5.0), Some(0.0));
    }

    #[test]
    fn normal_tail_matches_tables() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_upper_tail(3.090_232) - 0.001).abs() < 1e-6);
        assert!((normal_upper_tail(-1.644_854) - 0.95).abs() < 1e-6);
    }

    #[test]
    fn mann_kendall_statistic_by_hand() {
        // Pairs: (1,3)+ (1,2)+ (3,2)- → S = 1.
        let mk = mann_kendall(&[1.0, 3.0, 2.0, 4.0]).unwrap();
        // (1,3)+ (1,2)+ (1,4)+ (3,2)- (3,4)+ (2,4)+ → S = 4.
        assert_eq!(mk.s, 4.0);
        let falling: Vec<f64> = (0..30).map(|i| -(i as f64)).collect();
        assert!(mann_kendall(&falling).unwrap().p_increasing > 0.999);
        let ties = [5.0; 10];
        assert_eq!(mann_kendall(&ties).unwrap().z, 0.0);
    }
}
