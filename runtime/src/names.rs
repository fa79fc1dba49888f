//! Typed names: enums whose every value has one stable kebab-case name that
//! scripts, journals, metric labels and the JSON API rely on
//! ([`FailureClass`](crate::FailureClass), [`CapsuleKind`](crate::capsule::CapsuleKind),
//! [`RunPhase`](crate::dag::status::RunPhase), [`NodeStatus`](crate::dag::status::NodeStatus)).
//!
//! [`named_enum!`] writes each one's boilerplate from one table — the list
//! of values (`ALL`), their names (`NAMES`, `name()`), `Display`, `FromStr`
//! with an error naming the accepted values, and comparison with a `&str`
//! — so a value's name is written once, next to the value. The serde form
//! stays serde's derive (`rename_all = "kebab-case"`, which also gives the
//! OpenAPI schema); each enum's test checks that it equals `name()`. A
//! declarative macro rather than `strum`: ten lines, no dependency, and the
//! parse error says what would have been accepted.

/// Whether `s` is a plain id — 1 to 64 ASCII letters, digits, `-` or `_` —
/// as tenants and run ids must be (safe in keys, paths, URLs and
/// Temporal's visibility queries without quoting).
pub fn is_plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A name that is none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`: expected one of {}", accepted.join(", "))]
pub struct UnknownName {
    /// What was being named, e.g. `failure class`.
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// Every name accepted.
    pub accepted: &'static [&'static str],
}

/// Declare an enum of named values:
///
/// ```ignore
/// named_enum! {
///     /// What it is.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
///     #[serde(rename_all = "kebab-case")]
///     pub enum Colour: "colour" {
///         /// Red.
///         Red = "red",
///         /// Dark blue.
///         DarkBlue = "dark-blue",
///     }
/// }
/// ```
///
/// gives `Colour::ALL`, `Colour::NAMES`, `Colour::name()`, `Display`,
/// `FromStr` (error: [`UnknownName`]) and `PartialEq<&str>`. The enum must
/// derive `Clone` and `Copy`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Name:ident : $what:literal {
            $( $(#[$vmeta:meta])* $Variant:ident = $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $Name {
            $( $(#[$vmeta])* $Variant, )+
        }

        impl $Name {
            /// Every value, in declaration order.
            pub const ALL: [Self; { [$($name),+].len() }] = [$(Self::$Variant),+];

            /// Every value's name, in declaration order.
            pub const NAMES: [&'static str; { [$($name),+].len() }] = [$($name),+];

            /// The stable kebab-case name (the serde form). Free: a static string.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$Variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $Name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.name())
            }
        }

        impl ::std::str::FromStr for $Name {
            type Err = $crate::names::UnknownName;

            /// The value named `name` (as [`Self::name`] prints it).
            fn from_str(name: &str) -> Result<Self, Self::Err> {
                match name {
                    $($name => Ok(Self::$Variant),)+
                    _ => Err($crate::names::UnknownName {
                        what: $what,
                        name: name.to_owned(),
                        accepted: &Self::NAMES,
                    }),
                }
            }
        }

        impl PartialEq<&str> for $Name {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }
    };
}

pub(crate) use named_enum;

/// Test helper: for every value of `all`, the serde form is the name, the
/// name parses back to the value, `Display` prints it, and an unknown name
/// is refused naming every accepted one.
#[cfg(test)]
pub(crate) fn assert_names<T>(all: &[T], names: &[&str])
where
    T: Copy
        + PartialEq
        + std::fmt::Debug
        + std::fmt::Display
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::str::FromStr<Err = UnknownName>,
{
    assert_eq!(all.len(), names.len());
    let mut seen = std::collections::BTreeSet::new();
    for (value, name) in all.iter().zip(names) {
        assert!(seen.insert(*name), "{name} named twice");
        let json = serde_json::to_string(value).expect("serialize");
        assert_eq!(json, format!("\"{name}\""), "serde form of {value:?}");
        assert_eq!(value.to_string(), *name);
        assert_eq!(name.parse::<T>().ok(), Some(*value));
        assert_eq!(serde_json::from_str::<T>(&json).ok(), Some(*value));
    }
    let e = "no-such-name"
        .parse::<T>()
        .expect_err("an unknown name is refused");
    assert_eq!(e.accepted, names);
    let text = e.to_string();
    assert!(text.contains("`no-such-name`"), "{text}");
    for name in names {
        assert!(text.contains(name), "{text} names {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::is_plain_id;

    #[test]
    fn plain_ids_are_short_and_hold_nothing_to_quote() {
        for ok in ["acme", "a", "team-1_b", &"x".repeat(64)] {
            assert!(is_plain_id(ok), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "a.b", "a'b", "a b", "é", "a/b", "a%27"] {
            assert!(!is_plain_id(bad), "{bad}");
        }
    }
}
