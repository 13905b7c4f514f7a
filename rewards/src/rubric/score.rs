//! The rubric score of Eq. 1 and HealthBench's own per-example score.

/// R_task of Eq. 1 over `(points, met)` pairs: (sum_i w_i a_i - sum_{w_i<0} w_i) / sum_i |w_i|, in [0, 1].
/// Meeting every positive item and no negative one gives 1; the reverse gives 0. None when the rubric is empty
/// (or every weight is 0): there is nothing to score against.
pub fn rubric_score(items: impl IntoIterator<Item = (i32, bool)>) -> Option<f64> {
    let (mut met_sum, mut neg_sum, mut abs_sum) = (0i64, 0i64, 0i64);
    for (w, a) in items {
        let w = w as i64;
        if a {
            met_sum += w;
        }
        if w < 0 {
            neg_sum += w;
        }
        abs_sum += w.abs();
    }
    (abs_sum > 0).then(|| (met_sum - neg_sum) as f64 / abs_sum as f64)
}

/// HealthBench's per-example score (not Eq. 1): points of met criteria over the positive points, clipped to
/// [0, 1]. None when there are no positive points.
pub fn healthbench_score(items: impl IntoIterator<Item = (i32, bool)>) -> Option<f64> {
    let (mut met_sum, mut pos_sum) = (0i64, 0i64);
    for (w, a) in items {
        if a {
            met_sum += w as i64;
        }
        if w > 0 {
            pos_sum += w as i64;
        }
    }
    (pos_sum > 0).then(|| (met_sum as f64 / pos_sum as f64).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq1_by_hand_with_negative_weights() {
        // w = [5, 3, -7, -2]; sum |w| = 17; sum_{w<0} w = -9.
        // Met: 5 and -7 -> (5 - 7 + 9) / 17 = 7/17.
        let r = rubric_score([(5, true), (3, false), (-7, true), (-2, false)]).unwrap();
        assert!((r - 7.0 / 17.0).abs() < 1e-12);
        assert_eq!(
            rubric_score([(5, true), (3, true), (-7, false), (-2, false)]),
            Some(1.0)
        );
        assert_eq!(
            rubric_score([(5, false), (3, false), (-7, true), (-2, true)]),
            Some(0.0)
        );
        // Only negative items, none met: perfect.
        assert_eq!(rubric_score([(-4, false)]), Some(1.0));
        assert_eq!(rubric_score([]), None);
    }

    #[test]
    fn healthbench_formula_differs_from_eq1() {
        // (5 - 7) / 8 clipped to 0; Eq. 1 would give (5 - 7 + 9) / 17.
        assert_eq!(
            healthbench_score([(5, true), (3, false), (-7, true), (-2, false)]),
            Some(0.0)
        );
        assert_eq!(
            healthbench_score([(5, true), (3, false), (-2, false)]),
            Some(5.0 / 8.0)
        );
        assert_eq!(healthbench_score([(-2, true)]), None);
    }
}
