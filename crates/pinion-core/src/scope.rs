//! What a token may do. Scopes are ordered: `admin` implies `promote`
//! implies `report` implies `read`, so a check is one comparison.

use crate::{Kind, ParseError, quote};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// List pins, resolve, read the catalog.
    Read,
    /// Also report what instances run (provisioners, instances).
    Report,
    /// Also move pins.
    Promote,
    /// Also change the catalog.
    Admin,
}

impl Scope {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        match input {
            "read" => Ok(Scope::Read),
            "report" => Ok(Scope::Report),
            "promote" => Ok(Scope::Promote),
            "admin" => Ok(Scope::Admin),
            _ => Err(ParseError::new(
                Kind::Scope,
                format!(
                    "{} must be `read`, `report`, `promote` or `admin`",
                    quote(input)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Report => "report",
            Scope::Promote => "promote",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` demands.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Scope {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, ParseError> {
        Self::parse(input)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_implies_the_ones_before_it() {
        let ordered = [Scope::Read, Scope::Report, Scope::Promote, Scope::Admin];
        for (i, held) in ordered.iter().enumerate() {
            for (j, needed) in ordered.iter().enumerate() {
                assert_eq!(held.allows(*needed), i >= j, "{held} for {needed}");
            }
        }
    }

    #[test]
    fn parses_only_the_four_names() {
        for scope in [Scope::Read, Scope::Report, Scope::Promote, Scope::Admin] {
            assert_eq!(Scope::parse(scope.as_str()).unwrap(), scope);
        }
        for bad in ["", "Admin", "write", " read", "read\n"] {
            assert!(Scope::parse(bad).is_err());
        }
    }
}
