//! `--controllers`: which controllers run, with upstream's syntax and names.
//!
//! `*` turns on every controller that is on by default, `foo` turns `foo` on, `-foo` turns it
//! off; the first explicit mention of a controller wins (`IsControllerEnabled` in
//! k8s.io/controller-manager). Names are upstream's canonical ones
//! (`deployment-controller`) or their historical aliases (`deployment`).

/// One known controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// The canonical name (`serviceaccount-controller`).
    pub name: &'static str,
    /// Older names still accepted (`serviceaccount`).
    pub aliases: &'static [&'static str],
    /// Only runs when named explicitly.
    pub disabled_by_default: bool,
}

/// A name in `--controllers` that no controller answers to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not in the list of known controllers")]
pub struct UnknownController(pub String);

/// The canonical name for `name` (itself or the controller it is an alias of).
fn canonical<'a>(known: &'a [Known], name: &str) -> Option<&'a Known> {
    known
        .iter()
        .find(|k| k.name == name || k.aliases.contains(&name))
}

/// Checks every name in `flags` and rewrites aliases to canonical names (keeping `-`).
pub fn normalize(known: &[Known], flags: &[String]) -> Result<Vec<String>, Vec<UnknownController>> {
    let mut out = Vec::with_capacity(flags.len());
    let mut errors = Vec::new();
    for flag in flags {
        if flag == "*" {
            out.push(flag.clone());
            continue;
        }
        let (prefix, name) = match flag.strip_prefix('-') {
            Some(n) => ("-", n),
            None => ("", flag.as_str()),
        };
        match canonical(known, name) {
            Some(k) => out.push(format!("{prefix}{}", k.name)),
            None => errors.push(UnknownController(name.to_string())),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Whether `controller` runs under the normalized `flags`.
pub fn is_enabled(controller: &Known, flags: &[String]) -> bool {
    let mut star = false;
    for f in flags {
        if f == controller.name {
            return true;
        }
        if f.strip_prefix('-') == Some(controller.name) {
            return false;
        }
        if f == "*" {
            star = true;
        }
    }
    star && !controller.disabled_by_default
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[Known] = &[
        Known {
            name: "deployment-controller",
            aliases: &["deployment"],
            disabled_by_default: false,
        },
        Known {
            name: "replicaset-controller",
            aliases: &["replicaset"],
            disabled_by_default: false,
        },
        Known {
            name: "bootstrap-signer-controller",
            aliases: &["bootstrapsigner"],
            disabled_by_default: true,
        },
    ];

    fn flags(s: &[&str]) -> Vec<String> {
        normalize(KNOWN, &s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn enabled(s: &[&str]) -> Vec<&'static str> {
        let f = flags(s);
        KNOWN
            .iter()
            .filter(|k| is_enabled(k, &f))
            .map(|k| k.name)
            .collect()
    }

    #[test]
    fn star_enables_defaults_only() {
        assert_eq!(
            enabled(&["*"]),
            vec!["deployment-controller", "replicaset-controller"]
        );
    }

    #[test]
    fn explicit_names_and_aliases() {
        assert_eq!(enabled(&["deployment"]), vec!["deployment-controller"]);
        assert_eq!(
            enabled(&["*", "bootstrapsigner"]),
            vec![
                "deployment-controller",
                "replicaset-controller",
                "bootstrap-signer-controller"
            ]
        );
        assert_eq!(
            enabled(&["*", "-replicaset"]),
            vec!["deployment-controller"]
        );
        assert!(enabled(&[]).is_empty());
    }

    #[test]
    fn first_mention_wins() {
        assert_eq!(
            enabled(&["-deployment", "deployment", "*"]),
            vec!["replicaset-controller"]
        );
        assert_eq!(
            enabled(&["deployment", "-deployment"]),
            vec!["deployment-controller"]
        );
    }

    #[test]
    fn unknown_names_are_refused_with_upstreams_message() {
        let err = normalize(
            KNOWN,
            &["*".into(), "-red-controller".into(), "blue".into()],
        )
        .unwrap_err();
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![
                "\"red-controller\" is not in the list of known controllers",
                "\"blue\" is not in the list of known controllers"
            ]
        );
    }
}
