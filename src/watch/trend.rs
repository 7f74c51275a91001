//! The trend of a series: a robust slope (Theil–Sen, the median of pairwise slopes), so one
//! spike or one garbage-collection-like drop does not swing the prediction of the time to the
//! limit.

/// Theil–Sen slope of `points` (x, y): the median of the slopes between every pair with
/// distinct x. `None` with fewer than two distinct x.
///
/// ```
/// let points: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
/// assert_eq!(heapwatch::watch::theil_sen_slope(&points), Some(3.0));
/// ```
pub fn theil_sen_slope(points: &[(f64, f64)]) -> Option<f64> {
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
pub fn seconds_to_limit(current: f64, limit: f64, slope_per_second: f64) -> Option<f64> {
    (slope_per_second > 0.0).then(|| ((limit - current) / slope_per_second).max(0.0))
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
}
