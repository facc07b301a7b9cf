//! Benchmarks: ferrokube's component and its upstream peer against the same kind of fresh
//! control plane, in the same run, one result line per figure with the ratio
//! ferrokube / upstream.

pub mod controller_manager;
pub mod ingress;
pub mod kubelet;
pub mod scheduler;

use std::fmt;

/// Whose component a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The upstream Go binary, built by `hack/provision.sh`.
    Upstream,
    /// Ours.
    Ferrokube,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Upstream => "upstream",
            Self::Ferrokube => "ferrokube",
        })
    }
}

/// The middle value of `v` (the upper one of the two middles for an even count; 0 when
/// empty). Sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One measured figure for both peers.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What was measured (`create 5000 pods, qps 20/30`).
    pub what: String,
    /// The unit (`s`, `MiB`, `cpu-s`).
    pub unit: &'static str,
    /// Upstream's value.
    pub upstream: f64,
    /// Ours.
    pub ferrokube: f64,
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratio = if self.upstream > 0.0 {
            format!("{:.2}", self.ferrokube / self.upstream)
        } else {
            "n/a".into()
        };
        write!(
            f,
            "{}: ferrokube {:.2} {u}, upstream {:.2} {u}, ratio ferrokube/upstream {ratio}",
            self.what,
            self.ferrokube,
            self.upstream,
            u = self.unit
        )
    }
}

/// Both peers' rate against the machine's own ceiling for the same work (for example raw
/// `pods/binding` writes per second), as ours over the ceiling.
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// What was measured.
    pub what: String,
    /// The peers' unit (`pods/s`).
    pub unit: &'static str,
    /// Upstream's rate.
    pub upstream: f64,
    /// Ours.
    pub ferrokube: f64,
    /// The ceiling, in the same unit.
    pub ceiling: f64,
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratio = if self.ceiling > 0.0 {
            format!("{:.2}", self.ferrokube / self.ceiling)
        } else {
            "n/a".into()
        };
        write!(
            f,
            "{}: ferrokube {:.2} {u}, upstream {:.2} {u}, ceiling {:.2} {u}, ratio ferrokube/ceiling {ratio}",
            self.what,
            self.ferrokube,
            self.upstream,
            self.ceiling,
            u = self.unit
        )
    }
}
