//! The OCI (cgroup v1 flavoured) to cgroup v2 value conversions, in one place.
//!
//! The OCI runtime spec describes resources in v1 terms (`cpu.shares`,
//! `blkio.weight`, memory+swap). On cgroup v2 they must be converted; these
//! functions follow runc (the `opencontainers/cgroups` module, `utils.go`) so a
//! container gets the same values under virtkit as under runc.

use crate::error::{Error, Result};

/// Smallest v1 `cpu.shares` the kernel accepts (`MIN_SHARES`).
pub const CPU_SHARES_MIN: u64 = 2;
/// Largest v1 `cpu.shares` the kernel accepts (`MAX_SHARES`, 1 << 18).
pub const CPU_SHARES_MAX: u64 = 262_144;
/// Largest v2 `cpu.weight`.
pub const CPU_WEIGHT_MAX: u64 = 10_000;

/// Converts v1 `cpu.shares` to v2 `cpu.weight` the way runc ≥ 1.3.2 does
/// (`ConvertCPUSharesToCgroupV2Value` in `opencontainers/cgroups` utils.go,
/// introduced by opencontainers/runc#4785 after kubernetes/kubernetes#131216):
/// a quadratic in log2(shares) whose curve maps 2 → 1, 1024 (the v1 default)
/// → 100 (the v2 default) and 262144 → 10000:
///
/// ```text
/// l = log2(shares)
/// weight = ceil(10 ^ ((l² + 125·l) / 612 − 7/34))
/// ```
///
/// 0 means "unset" and stays 0; shares ≤ 2 give 1; shares ≥ 262144 give 10000.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= CPU_SHARES_MIN {
        return 1;
    }
    if shares >= CPU_SHARES_MAX {
        return CPU_WEIGHT_MAX;
    }
    #[allow(clippy::cast_precision_loss)]
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    let w = 10f64.powf(exponent).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let w = w as u64;
    w.clamp(1, CPU_WEIGHT_MAX)
}

/// The classic linear shares → weight conversion used by runc before 1.3.2
/// (and by crun and youki for years): `1 + ((shares − 2) × 9999) / 262142`,
/// mapping [2, 262144] linearly onto [1, 10000]. It maps the v1 default 1024
/// to 39, not to the v2 default 100, which is why runc replaced it. Kept for
/// callers that must reproduce old runc; out-of-range inputs are clamped.
pub fn cpu_shares_to_weight_linear(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(CPU_SHARES_MIN, CPU_SHARES_MAX);
    1 + ((s - 2) * 9999) / 262_142
}

/// Converts v1 `blkio.weight` ([10, 1000]) to v2 `io.weight` ([1, 10000])
/// linearly, as runc's `ConvertBlkIOToIOWeightValue`:
/// `1 + (weight − 10) × 9999 / 990`. 0 means unset and stays 0; values outside
/// [10, 1000] are clamped.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// Converts the OCI `memory.swap` (a memory + swap limit, v1's
/// `memory.memsw.limit_in_bytes`) to the v2 `memory.swap.max` value (swap
/// alone), following runc's `ConvertMemorySwapToCgroupV2Value`.
///
/// -1 means unlimited and 0 means unset, in and out:
/// - memory −1 and swap 0: −1 (both unlimited, as v1 would do);
/// - swap −1 or 0: returned as is;
/// - memory −1 (unlimited) and a swap value: the swap value as is;
/// - memory 0 (unset) and a swap value: an error (nothing to subtract);
/// - otherwise swap must be ≥ memory, and the result is swap − memory;
///   note that swap == memory gives 0, which here means "no swap": a caller
///   must write `memory.swap.max = 0` when the input swap was positive.
pub fn memory_swap_to_v2(swap: i64, memory: i64) -> Result<i64> {
    let invalid = |reason: String| Error::InvalidResource {
        field: "memory.swap",
        reason,
    };
    match (memory, swap) {
        (-1, 0) => Ok(-1),
        (_, -1) | (_, 0) => Ok(swap),
        (-1, _) => Ok(swap),
        (0, _) => Err(invalid(
            "a swap limit needs a memory limit (OCI swap is memory + swap)".into(),
        )),
        (m, _) if m < 0 => Err(invalid(format!("invalid memory limit {m}"))),
        (m, s) if s < m => Err(invalid(format!(
            "memory + swap limit {s} is below the memory limit {m}"
        ))),
        (m, s) => Ok(s - m),
    }
}

/// Formats a limit where a negative value means unlimited: "max" on v2.
pub fn limit_to_v2(value: i64) -> String {
    if value < 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// Builds the v2 `cpu.max` value from an OCI quota and period (µs).
///
/// 0 means unset for both, as in runc:
/// - neither set: `None` (leave the file alone);
/// - quota unset or negative: "max" (unlimited);
/// - period set: `"QUOTA PERIOD"`; unset: `"QUOTA"` alone, which keeps the
///   current period (the kernel parses the period as optional).
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let period = period.filter(|p| *p != 0);
    let quota = quota.filter(|q| *q != 0);
    if quota.is_none() && period.is_none() {
        return None;
    }
    let q = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    Some(match period {
        Some(p) => format!("{q} {p}"),
        None => q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed from runc's formula
    /// `ceil(10^((l*l + 125*l)/612 - 7/34))`, l = log2(shares)
    /// (opencontainers/cgroups utils.go ConvertCPUSharesToCgroupV2Value, as
    /// also mirrored in kubernetes test/e2e/common/node/framework cgroups
    /// helpers), evaluated independently in Python's math module.
    #[test]
    fn shares_to_weight_log_quadratic() {
        let cases = [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (10, 4),
            (100, 17),
            (128, 21),
            (256, 35),
            (512, 59),
            (1000, 99),
            (1024, 100),
            (2048, 174),
            (4096, 303),
            (10_000, 627),
            (100_000, 4340),
            (262_143, 10_000),
            (262_144, 10_000),
            (300_000, 10_000),
        ];
        for (shares, weight) in cases {
            assert_eq!(cpu_shares_to_weight(shares), weight, "shares {shares}");
        }
    }

    #[test]
    fn shares_to_weight_is_monotonic_and_in_range() {
        let mut prev = 1;
        for s in 2..=CPU_SHARES_MAX {
            let w = cpu_shares_to_weight(s);
            assert!((1..=CPU_WEIGHT_MAX).contains(&w));
            assert!(w >= prev, "shares {s}: {w} < {prev}");
            prev = w;
        }
    }

    /// `1 + ((shares-2)*9999)/262142`, runc < 1.3.2.
    #[test]
    fn shares_to_weight_linear() {
        let cases = [
            (0, 0),
            (2, 1),
            (100, 4),
            (512, 20),
            (1024, 39),
            (4096, 157),
            (100_000, 3815),
            (262_144, 10_000),
            (1, 1),
            (300_000, 10_000),
        ];
        for (shares, weight) in cases {
            assert_eq!(
                cpu_shares_to_weight_linear(shares),
                weight,
                "shares {shares}"
            );
        }
    }

    /// `1 + (w - 10) * 9999 / 990` (runc ConvertBlkIOToIOWeightValue).
    #[test]
    fn blkio_to_io_weight() {
        for (w, expect) in [(0, 0), (10, 1), (100, 910), (500, 4950), (1000, 10_000)] {
            assert_eq!(blkio_weight_to_io_weight(w), expect, "weight {w}");
        }
        assert_eq!(blkio_weight_to_io_weight(5), 1);
        assert_eq!(blkio_weight_to_io_weight(5000), 10_000);
    }

    #[test]
    fn memory_swap_semantics() {
        let mib = 1 << 20;
        assert_eq!(memory_swap_to_v2(0, -1).unwrap(), -1);
        assert_eq!(memory_swap_to_v2(-1, 100 * mib).unwrap(), -1);
        assert_eq!(memory_swap_to_v2(0, 100 * mib).unwrap(), 0);
        assert_eq!(memory_swap_to_v2(300 * mib, -1).unwrap(), 300 * mib);
        assert_eq!(memory_swap_to_v2(300 * mib, 100 * mib).unwrap(), 200 * mib);
        assert_eq!(memory_swap_to_v2(100 * mib, 100 * mib).unwrap(), 0);
        assert!(memory_swap_to_v2(100 * mib, 0).is_err());
        assert!(memory_swap_to_v2(100 * mib, -5).is_err());
        let e = memory_swap_to_v2(50 * mib, 100 * mib).unwrap_err();
        assert!(e.to_string().contains("below the memory limit"), "{e}");
    }

    #[test]
    fn cpu_max_strings() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(
            cpu_max(Some(20_000), Some(100_000)).unwrap(),
            "20000 100000"
        );
        assert_eq!(cpu_max(Some(-1), Some(100_000)).unwrap(), "max 100000");
        assert_eq!(cpu_max(None, Some(50_000)).unwrap(), "max 50000");
        assert_eq!(cpu_max(Some(30_000), None).unwrap(), "30000");
        assert_eq!(cpu_max(Some(0), Some(0)), None);
        assert_eq!(cpu_max(Some(0), Some(20_000)).unwrap(), "max 20000");
        assert_eq!(limit_to_v2(-1), "max");
        assert_eq!(limit_to_v2(4096), "4096");
    }
}
