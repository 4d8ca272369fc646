/// Defines a `Copy` enum over a wire integer with one catch-all variant for
/// values without a name, plus lossless `From` conversions both ways.
///
/// Modelled on smoltcp's `enum_with_unknown!`: converting a number that has a
/// named variant always yields that variant, so the catch-all never holds a
/// named value when produced by this crate.
macro_rules! enum_with_unknown {
    (
        $(#[$enum_attr:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:literal ),+ $(,)?
        }
        $(#[$unknown_attr:meta])*
        unknown $unknown:ident
    ) => {
        $(#[$enum_attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_attr])* $variant, )+
            $(#[$unknown_attr])*
            $unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::$unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::$unknown(other) => other,
                }
            }
        }
    };
}
