//! Feature gates: the alpha behaviours of newer Kubernetes versions the server can take on,
//! off by default as on the real kube-apiserver, and the `--feature-gates` flag's syntax.
//!
//! The server follows Kubernetes 1.33 ([`crate::KUBERNETES_VERSION`]); a gate turns on one
//! behaviour of a later version exactly as that version serves it behind the same gate name.

use std::fmt;

/// The gates the server knows, by their Kubernetes names, in the order `--help` lists them.
pub const KNOWN: [&str; 1] = ["ShardedListAndWatch"];

/// Which feature gates are on (all off by default, as on the real server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureGates {
    /// `ShardedListAndWatch` (Kubernetes 1.36 alpha, KEP-5866): list and watch honour the
    /// `shardSelector` parameter and lists echo it in `metadata.shardInfo` (see
    /// [`crate::shard`]). Off: the parameter is ignored like any unknown one.
    pub sharded_list_and_watch: bool,
}

impl FeatureGates {
    /// Parse the value of `--feature-gates`, as component-base reads it: comma-separated
    /// `Name=bool` pairs (Go's `strconv.ParseBool` values), spaces around them ignored.
    /// An unknown name or a value that is not a bool is an error with the real wording.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut gates = FeatureGates::default();
        for part in spec.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("missing bool value for {part}"));
            };
            let (name, value) = (name.trim(), value.trim());
            let on = go_parse_bool(value).ok_or_else(|| {
                format!(
                    "invalid value of {name}={value}, err: strconv.ParseBool: parsing {}: invalid syntax",
                    crate::rbac::go_quote(value)
                )
            })?;
            match name {
                "ShardedListAndWatch" => gates.sharded_list_and_watch = on,
                // The real server knows every gate of its version; this one knows only those
                // it implements, and says which (silently accepting one would pretend it works).
                _ => {
                    return Err(format!(
                        "unrecognized feature gate: {name} (this server implements: {})",
                        KNOWN.join(", ")
                    ));
                }
            }
        }
        Ok(gates)
    }
}

impl fmt::Display for FeatureGates {
    /// The enabled gates as `--feature-gates` takes them (empty when none is on).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sharded_list_and_watch {
            f.write_str("ShardedListAndWatch=true")?;
        }
        Ok(())
    }
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag_as_component_base_does() {
        assert_eq!(FeatureGates::parse("").unwrap(), FeatureGates::default());
        assert!(
            FeatureGates::parse("ShardedListAndWatch=true")
                .unwrap()
                .sharded_list_and_watch
        );
        assert!(
            FeatureGates::parse(" ShardedListAndWatch = T ,")
                .unwrap()
                .sharded_list_and_watch
        );
        assert!(
            !FeatureGates::parse("ShardedListAndWatch=false")
                .unwrap()
                .sharded_list_and_watch
        );
        assert_eq!(
            FeatureGates::parse("ShardedListAndWatch=yes").unwrap_err(),
            "invalid value of ShardedListAndWatch=yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        assert_eq!(
            FeatureGates::parse("ShardedListAndWatch").unwrap_err(),
            "missing bool value for ShardedListAndWatch"
        );
        assert!(
            FeatureGates::parse("WatchList=true")
                .unwrap_err()
                .starts_with("unrecognized feature gate: WatchList")
        );
    }
}
