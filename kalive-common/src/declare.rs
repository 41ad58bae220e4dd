//! The two macros that declare kalive's vocabulary once: [`numbered!`] for a
//! `u8` the programs write and the name users read, and [`kinds!`] for record
//! kinds, which add a payload.

/// A `#[repr(u8)]` enum whose variants each have a number (what the kernel side
/// writes) and a name (what users read): `from_u8`, `name`, `ALL`, and with the
/// `event` feature serde by name.
macro_rules! numbered {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $num, )*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The variant numbered `value`, if there is one.
            #[must_use]
            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $( $num => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// What users read.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }

        #[cfg(feature = "event")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        #[cfg(feature = "event")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name() == name)
                    .ok_or_else(|| {
                        serde::de::Error::unknown_variant(&name, &[$($text),*])
                    })
            }
        }
    };
}

/// The record kinds: [`numbered!`] for `Kind`, and with the `event` feature the
/// payload enum `event::What`, one variant per kind with the fields only that
/// kind has, serialised with the kind's name as `"event"`. A kind declared here
/// is in both, so a decoder or writer that leaves one out does not compile.
macro_rules! kinds {
    (
        $(#[$meta:meta])*
        pub enum Kind {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $num:literal => $text:literal { $($field:ident : $ty:ty),* $(,)? },
            )*
        }
    ) => {
        numbered! {
            $(#[$meta])*
            pub enum Kind {
                $( $(#[$vmeta])* $variant = $num => $text, )*
            }
        }

        #[cfg(feature = "event")]
        pub mod what {
            use crate::{Kind, event::{AckSeen, Cause, Errno, RetryLimit, TcpState}};

            /// What happened: the kind, as `"event"`, and the fields only it has.
            #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(tag = "event")]
            pub enum What {
                $(
                    $(#[$vmeta])*
                    #[serde(rename = $text)]
                    $variant { $($field: $ty),* },
                )*
            }

            impl What {
                /// The kind this is.
                #[must_use]
                pub const fn kind(&self) -> Kind {
                    match self {
                        $( Self::$variant { .. } => Kind::$variant, )*
                    }
                }
            }
        }
    };
}
