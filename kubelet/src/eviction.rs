//! Hard eviction thresholds (`--eviction-hard`, KubeletConfiguration `evictionHard`): when
//! a signal falls below its threshold the node reports the matching pressure condition
//! (MemoryPressure, DiskPressure), and the threshold is kept out of allocatable.
//!
//! Upstream's defaults are `memory.available<100Mi` and `nodefs.available<10%` (plus
//! `imagefs.available<15%` and `nodefs.inodesFree<5%`, signals this kubelet does not
//! evaluate yet). As upstream documents, giving any threshold replaces the whole set:
//! signals left out are 0 (never crossed). Local clusters (kind's own configuration) use
//! this to switch disk-based thresholds off on developer machines.

use std::collections::BTreeMap;

/// A threshold: an absolute amount, or a share of the capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Bytes.
    Bytes(u64),
    /// Percent of the capacity (0-100).
    Percent(f64),
}

impl Threshold {
    /// The threshold in bytes for a resource of `capacity` bytes.
    pub fn bytes_of(&self, capacity: u64) -> u64 {
        match *self {
            Self::Bytes(b) => b,
            // Percent is validated to 0..=100, so the product fits.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Self::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if let Some(p) = value.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{value:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{value:?} is not between 0% and 100%"));
            }
            return Ok(Self::Percent(p));
        }
        let milli = crate::runtime::parse_quantity_milli(value)
            .filter(|m| *m >= 0)
            .ok_or_else(|| format!("{value:?} is not a quantity (like 100Mi) or a percentage"))?;
        Ok(Self::Bytes(u64::try_from(milli / 1000).unwrap_or(u64::MAX)))
    }

    fn is_zero(&self) -> bool {
        match *self {
            Self::Bytes(b) => b == 0,
            Self::Percent(p) => p == 0.0,
        }
    }
}

/// The hard eviction thresholds this kubelet evaluates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvictionHard {
    /// `memory.available`.
    pub memory_available: Threshold,
    /// `nodefs.available` (the file system of the root dir).
    pub nodefs_available: Threshold,
}

impl Default for EvictionHard {
    fn default() -> Self {
        Self {
            memory_available: Threshold::Bytes(100 * 1024 * 1024),
            nodefs_available: Threshold::Percent(10.0),
        }
    }
}

/// Signals upstream knows that this kubelet does not evaluate: accepted only as 0 (off).
const UNEVALUATED: &[&str] = &[
    "imagefs.available",
    "imagefs.inodesFree",
    "nodefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
];

impl EvictionHard {
    /// Parses the flag form, `memory.available<100Mi,nodefs.available<10%`.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = pair
                .split_once('<')
                .ok_or_else(|| format!("{pair:?} is not <signal><<value>"))?;
            map.insert(signal.trim().to_string(), value.trim().to_string());
        }
        Self::from_map(&map)
    }

    /// The KubeletConfiguration form: signal → value. Signals left out are 0.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut t = Self {
            memory_available: Threshold::Bytes(0),
            nodefs_available: Threshold::Bytes(0),
        };
        for (signal, value) in map {
            let threshold = Threshold::parse(value).map_err(|e| format!("{signal}: {e}"))?;
            match signal.as_str() {
                "memory.available" => t.memory_available = threshold,
                "nodefs.available" => t.nodefs_available = threshold,
                s if UNEVALUATED.contains(&s) => {
                    if !threshold.is_zero() {
                        return Err(format!(
                            "{s}: this kubelet does not evaluate that signal yet; only 0 (off) is accepted"
                        ));
                    }
                }
                other => return Err(format!("unknown eviction signal {other:?}")),
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_form_and_defaults() {
        let t = EvictionHard::parse_flag("memory.available<200Mi, nodefs.available<5%").unwrap();
        assert_eq!(t.memory_available, Threshold::Bytes(200 * 1024 * 1024));
        assert_eq!(t.nodefs_available, Threshold::Percent(5.0));
        // Left out: off, as upstream.
        let t = EvictionHard::parse_flag("nodefs.available<0%,imagefs.available<0%").unwrap();
        assert_eq!(t.memory_available.bytes_of(1 << 30), 0);
        assert_eq!(t.nodefs_available.bytes_of(1 << 30), 0);
        let d = EvictionHard::default();
        assert_eq!(d.nodefs_available.bytes_of(1000), 100);
        assert_eq!(d.memory_available.bytes_of(0), 100 * 1024 * 1024);
    }

    #[test]
    fn bad_input_is_named() {
        for (input, want) in [
            ("memory.available=1Gi", "is not"),
            ("disk.free<1Gi", "unknown eviction signal"),
            ("nodefs.available<120%", "between 0% and 100%"),
            ("memory.available<lots", "not a quantity"),
            ("imagefs.available<15%", "does not evaluate"),
        ] {
            let e = EvictionHard::parse_flag(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }
}
