//! Closed-form queueing results the simulator is checked against.
//!
//! These are textbook formulas for idealised systems (Poisson arrivals,
//! exponential service, infinitely many servers for the supermarket model);
//! they are not estimates of any real deployment, only the yardstick that
//! shows the simulator's queues and the shipped pickers behave as theory
//! says they must.

/// Mean time in system, in mean service times, of the supermarket model:
/// `n -> infinity` FIFO servers of rate 1, Poisson arrivals of rate
/// `lambda * n`, each arrival joining the shortest of `d` queues sampled
/// uniformly at random.
///
/// ```text
///   T_d(lambda) = sum_{i >= 1} lambda^((d^i - d) / (d - 1))
/// ```
///
/// M. Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
/// IEEE Transactions on Parallel and Distributed Systems 12(10), 2001
/// (the same limit was found by Vvedenskaya, Dobrushin and Karpelevich,
/// 1996). The model samples its `d` queues independently; lb-core's P2C
/// samples two distinct ones above [`crate::pick::SCAN_ALL_UP_TO`]
/// candidates (which can only help and makes no difference as `n` grows)
/// and scans all of them at or below it, where this model does not apply. For `d = 2` the exponents are `2^i - 2`:
/// `T_2(0.9) = 1 + 0.9^2 + 0.9^6 + 0.9^14 + 0.9^30 + 0.9^62 + ... = 2.6141`,
/// against `10` for random assignment. For `d = 1` the exponents are `i - 1`
/// and the sum is M/M/1's `1 / (1 - lambda)`.
///
/// `None` when `lambda` is not in `[0, 1)` or `d` is 0.
pub fn supermarket_mean_time(lambda: f64, d: u32) -> Option<f64> {
    if !(0.0..1.0).contains(&lambda) || d == 0 {
        return None;
    }
    if d == 1 {
        return mm1_mean_time(lambda);
    }
    let d = f64::from(d);
    let mut sum = 0.0;
    // The exponent grows like d^i, so a handful of terms reach f64 precision.
    for i in 1..64 {
        let exponent = (d.powi(i) - d) / (d - 1.0);
        let term = lambda.powf(exponent);
        sum += term;
        if term < 1e-17 * sum {
            break;
        }
    }
    Some(sum)
}

/// Mean time in system of an M/M/1 queue at utilisation `rho`, in mean
/// service times: `1 / (1 - rho)`. Random assignment splits a Poisson stream
/// into independent Poisson streams, so under random picks every backend is
/// an M/M/1 queue. `None` when `rho` is not in `[0, 1)`.
pub fn mm1_mean_time(rho: f64) -> Option<f64> {
    (0.0..1.0).contains(&rho).then(|| 1.0 / (1.0 - rho))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let t = supermarket_mean_time(0.9, 2).unwrap();
        // 1 + 0.81 + 0.531441 + 0.2287679 + 0.0423912 + 0.0014556 + 0.0000017
        assert!((t - 2.614_058).abs() < 1e-5, "{t}");
        assert!((mm1_mean_time(0.9).unwrap() - 10.0).abs() < 1e-12);
        assert_eq!(supermarket_mean_time(0.9, 1), mm1_mean_time(0.9));
        assert_eq!(supermarket_mean_time(0.0, 2), Some(1.0));
        assert!(supermarket_mean_time(1.0, 2).is_none());
        assert!(supermarket_mean_time(f64::NAN, 2).is_none());
        assert!(supermarket_mean_time(0.5, 0).is_none());
        // More choices help, with diminishing returns.
        let t3 = supermarket_mean_time(0.9, 3).unwrap();
        assert!(t3 < t && t - t3 < 10.0 - t);
    }
}
