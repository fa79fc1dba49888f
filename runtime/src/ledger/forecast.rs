//! Cost forecasting from a daily cost series: Holt's linear method — an
//! exponentially weighted level (alpha) plus an exponentially smoothed
//! linear trend (beta) — and a hold-out backtest.
//!
//! Cost: O(history days); no I/O. Floats are used only inside; callers get
//! integer micro-units.

/// Weight of the newest day in the level.
pub const ALPHA: f64 = 0.3;
/// Weight of the newest level change in the trend.
pub const BETA: f64 = 0.1;
/// The method's name as reported in [`super::Forecast::method`].
pub const METHOD: &str = "holt-linear: ewma level (alpha=0.3) + smoothed linear trend (beta=0.1)";
/// Days held out by the backtest.
pub const BACKTEST_DAYS: usize = 7;
/// Training days the backtest needs before the hold-out.
pub const MIN_TRAIN_DAYS: usize = 7;

/// Project `days` days after `history` (one value per consecutive day,
/// missing days already filled with 0). Never negative; empty history
/// projects zeros.
pub fn project(history: &[u64], days: usize) -> Vec<u64> {
    let Some((&first, rest)) = history.split_first() else {
        return vec![0; days];
    };
    let mut level = first as f64;
    // Initial trend: the mean daily change over the first week (or less).
    let init = rest.len().min(6);
    let mut trend = if init == 0 {
        0.0
    } else {
        (rest[init - 1] as f64 - level) / init as f64
    };
    for &y in rest {
        let prev = level;
        level = ALPHA * y as f64 + (1.0 - ALPHA) * (level + trend);
        trend = BETA * (level - prev) + (1.0 - BETA) * trend;
    }
    (1..=days)
        .map(|h| to_micros(level + h as f64 * trend))
        .collect()
}

/// Mean absolute percentage error (percent) of fitting on all but the last
/// [`BACKTEST_DAYS`] days and projecting those; days whose actual cost is 0
/// are skipped. `None` with fewer than 14 days or no non-zero held-out day.
pub fn backtest_mape(history: &[u64]) -> Option<f64> {
    if history.len() < MIN_TRAIN_DAYS + BACKTEST_DAYS {
        return None;
    }
    let (train, test) = history.split_at(history.len() - BACKTEST_DAYS);
    let predicted = project(train, BACKTEST_DAYS);
    let errors: Vec<f64> = test
        .iter()
        .zip(&predicted)
        .filter(|(a, _)| **a > 0)
        .map(|(&a, &p)| (a as f64 - p as f64).abs() / a as f64)
        .collect();
    if errors.is_empty() {
        return None;
    }
    Some(100.0 * errors.iter().sum::<f64>() / errors.len() as f64)
}

fn to_micros(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        // `as` saturates at u64::MAX.
        x.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_forecast_follows_a_line_exactly() {
        let history: Vec<u64> = (0..30).map(|d| 1_000_000 + 50_000 * d).collect();
        let p = project(&history, 5);
        let want: Vec<u64> = (30..35).map(|d| 1_000_000 + 50_000 * d).collect();
        for (p, w) in p.iter().zip(&want) {
            assert!(p.abs_diff(*w) <= 1, "{p} vs {w}");
        }
        assert!(backtest_mape(&history).expect("mape") < 0.01);
    }

    #[test]
    fn ledger_forecast_edges() {
        assert_eq!(project(&[], 3), vec![0, 0, 0]);
        assert_eq!(project(&[500], 2), vec![500, 500]);
        // A falling line never goes negative.
        let falling: Vec<u64> = (0..10).rev().map(|d| d * 100).collect();
        assert!(project(&falling, 30).iter().all(|&x| x < 1000));
        assert_eq!(backtest_mape(&[1; 13]), None);
        assert_eq!(backtest_mape(&[0; 20]), None);
        assert_eq!(backtest_mape(&[1000; 20]), Some(0.0));
    }
}
