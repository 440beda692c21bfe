//! Zone affinity with proportional spillover.
//!
//! A caller in zone L keeps all its traffic in L while L's share of healthy
//! capacity covers L's share of callers; when it does not, it keeps the part
//! it can serve locally and spills the rest to the zones with spare capacity,
//! in proportion to their surplus:
//!
//! ```text
//!   u_z  share of healthy capacity in zone z      (sums to 1)
//!   c_z  share of callers in zone z               (sums to 1)
//!   local share   = min(1, u_L / c_L)
//!   spill to z!=L = (1 - local share) * s_z / sum(s),  s_z = max(0, u_z - c_z)
//! ```
//!
//! If every caller follows this rule, each zone receives exactly its share of
//! capacity (the deficit of the short zones equals the surplus of the others),
//! and the local share falls continuously as a zone degrades: no cliff where
//! a zone at 49% health suddenly sends everything away. This is the rule
//! Envoy applies when it knows the "local cluster"; here the caller
//! distribution is given (eds-server knows every client's zone) or assumed to
//! follow the zones' full (healthy or not) capacity, the deployment's intended
//! spread. The module computes shares only; choosing within a zone is the
//! pickers' job.

use crate::error::ConfigError;

/// Capacity of one zone.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ZoneCapacity {
    /// Sum of effective weights of endpoints that may take traffic now.
    pub healthy: f64,
    /// Sum of weights of all the zone's endpoints, healthy or not: the
    /// intended spread, used as the caller distribution when none is given.
    pub total: f64,
}

/// Share of a caller's traffic to send to each zone, aligned with `zones`.
///
/// `local` is the caller's zone index (`None` or out of range: shares follow
/// capacity alone). `callers`, when given, is the distribution of callers
/// over the same zones (any non-negative scale). The result sums to 1, or is
/// all zeros when no zone has healthy capacity.
pub fn spill_shares(
    local: Option<usize>,
    zones: &[ZoneCapacity],
    callers: Option<&[f64]>,
) -> Result<Vec<f64>, ConfigError> {
    for z in zones {
        for (name, v) in [
            ("zone healthy capacity", z.healthy),
            ("zone total capacity", z.total),
        ] {
            ConfigError::check(name, "a finite number >= 0", v, 0.0, f64::MAX)?;
        }
    }
    if let Some(c) = callers {
        if c.len() != zones.len() {
            return Err(ConfigError::OutOfRange {
                name: "caller distribution length",
                expected: "one entry per zone",
                value: c.len() as f64,
            });
        }
        for &v in c {
            ConfigError::check("caller share", "a finite number >= 0", v, 0.0, f64::MAX)?;
        }
    }
    let mut shares = vec![0.0; zones.len()];
    let healthy: f64 = zones.iter().map(|z| z.healthy).sum();
    if healthy <= 0.0 {
        return Ok(shares);
    }
    let u: Vec<f64> = zones.iter().map(|z| z.healthy / healthy).collect();
    let c: Vec<f64> = {
        let raw: Vec<f64> = match callers {
            Some(c) => c.to_vec(),
            None => zones.iter().map(|z| z.total.max(z.healthy)).collect(),
        };
        let sum: f64 = raw.iter().sum();
        if sum > 0.0 {
            raw.iter().map(|x| x / sum).collect()
        } else {
            u.clone()
        }
    };
    let Some(l) = local.filter(|&l| l < zones.len()) else {
        return Ok(u);
    };
    if c[l] <= u[l] {
        shares[l] = 1.0;
        return Ok(shares);
    }
    let keep = u[l] / c[l];
    shares[l] = keep;
    let residual = 1.0 - keep;
    let surplus = |z: usize| if z == l { 0.0 } else { (u[z] - c[z]).max(0.0) };
    let total_surplus: f64 = (0..zones.len()).map(surplus).sum();
    if total_surplus > 0.0 {
        for (z, share) in shares.iter_mut().enumerate() {
            *share += residual * surplus(z) / total_surplus;
        }
    } else {
        // Only reachable through rounding: spread by capacity instead.
        let others: f64 = (0..zones.len()).filter(|&z| z != l).map(|z| u[z]).sum();
        for z in (0..zones.len()).filter(|&z| z != l) {
            shares[z] += if others > 0.0 {
                residual * u[z] / others
            } else {
                0.0
            };
        }
        if others <= 0.0 {
            shares[l] = 1.0;
        }
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cap(healthy: f64, total: f64) -> ZoneCapacity {
        ZoneCapacity { healthy, total }
    }

    #[test]
    fn stays_local_while_capacity_suffices() {
        let zones = [cap(10.0, 10.0), cap(10.0, 10.0), cap(10.0, 10.0)];
        assert_eq!(
            spill_shares(Some(1), &zones, None).unwrap(),
            vec![0.0, 1.0, 0.0]
        );
    }

    #[test]
    fn spills_in_proportion_without_a_cliff() {
        // Zone 0 loses pods one by one: its local share falls smoothly.
        let mut last = 1.0;
        for healthy in (0..=10).rev() {
            let zones = [
                cap(f64::from(healthy), 10.0),
                cap(10.0, 10.0),
                cap(10.0, 10.0),
            ];
            let s = spill_shares(Some(0), &zones, None).unwrap();
            assert!(s[0] <= last + 1e-12);
            assert!(last - s[0] < 0.2, "a step of {} at {healthy}", last - s[0]);
            assert!(
                (s[1] - s[2]).abs() < 1e-12,
                "equal surplus gets equal spill"
            );
            last = s[0];
        }
        assert_eq!(last, 0.0);
    }

    #[test]
    fn no_capacity_and_bad_input() {
        assert_eq!(
            spill_shares(Some(0), &[cap(0.0, 5.0)], None).unwrap(),
            vec![0.0]
        );
        assert!(spill_shares(None, &[cap(f64::NAN, 1.0)], None).is_err());
        assert!(spill_shares(None, &[cap(-1.0, 1.0)], None).is_err());
        assert!(spill_shares(None, &[cap(1.0, 1.0)], Some(&[1.0, 2.0])).is_err());
        assert_eq!(
            spill_shares(Some(7), &[cap(1.0, 1.0), cap(3.0, 3.0)], None).unwrap(),
            vec![0.25, 0.75]
        );
    }

    proptest! {
        #[test]
        fn shares_sum_to_one_and_follow_capacity(
            zones in proptest::collection::vec((0.0f64..20.0, 0.0f64..20.0), 1..6),
            callers in proptest::collection::vec(0.0f64..10.0, 6),
        ) {
            let zones: Vec<ZoneCapacity> = zones.iter().map(|&(h, extra)| cap(h, h + extra)).collect();
            let callers = &callers[..zones.len()];
            let healthy: f64 = zones.iter().map(|z| z.healthy).sum();
            let caller_sum: f64 = callers.iter().sum();
            let mut received = vec![0.0; zones.len()];
            for local in 0..zones.len() {
                let s = spill_shares(Some(local), &zones, Some(callers)).unwrap();
                let sum: f64 = s.iter().sum();
                if healthy > 0.0 {
                    prop_assert!((sum - 1.0).abs() < 1e-9, "sum {sum}");
                } else {
                    prop_assert_eq!(sum, 0.0);
                }
                for (z, &x) in s.iter().enumerate() {
                    prop_assert!(x >= 0.0);
                    if zones[z].healthy == 0.0 {
                        prop_assert!(x < 1e-12, "zone {z} without capacity got {x}");
                    }
                    received[z] += x * callers[local];
                }
            }
            // When every caller follows the rule, each zone receives its share of capacity.
            if healthy > 1e-6 && caller_sum > 1e-6 {
                for z in 0..zones.len() {
                    let want = zones[z].healthy / healthy;
                    let got = received[z] / caller_sum;
                    prop_assert!((want - got).abs() < 1e-6, "zone {z}: want {want}, got {got}");
                }
            }
        }
    }
}
