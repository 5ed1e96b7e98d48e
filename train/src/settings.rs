//! One definition per setting. [`settings!`] declares a group of settings once — name, type,
//! default, help — and derives from it both the resolved struct (saved in `config.json`,
//! checkpoints and `metrics.jsonl`) and a *layer*: the same fields as options, which is what
//! the command line parses into and what a preset is. Resolving a run is
//! `defaults < preset < command line`: each layer sets only the fields it has.
//!
//! A field is `value T = default` or `optional T` (no value unless set); `[...]` passes
//! extra `#[arg(...)]` attributes to clap.

/// How a default value reads in `--help` (`[default: ...]`); `None` shows none (flags).
pub trait ShowDefault {
    fn show(&self) -> Option<String>;
}

macro_rules! show_by_display {
    ($($t:ty),*) => {
        $(impl ShowDefault for $t {
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        })*
    };
}
show_by_display!(f64, usize, u64, String, et_kernels::device::DeviceSpec, et_kernels::device::Precision, crate::optim::OptimizerKind, et_data::stage_crop::LowFreq);

impl ShowDefault for std::path::PathBuf {
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl ShowDefault for bool {
    fn show(&self) -> Option<String> {
        None
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __setting_type {
    (value $t:ty) => { $t };
    (optional $t:ty) => { Option<$t> };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __setting_default {
    (value = $d:expr) => { $d };
    (optional) => { None };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __layer_apply {
    ($dst:expr, $v:expr, value) => { $dst = $v };
    ($dst:expr, $v:expr, optional) => { $dst = Some($v) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __help_default {
    ($v:expr, value) => { $crate::settings::ShowDefault::show(&$v) };
    ($v:expr, optional) => { None::<String> };
}

/// Declares a group of settings: `pub struct Name / NameLayer, heading = "..." { fields }`
/// (see the module documentation). A flag is `value bool = false` with
/// `[num_args = 0, default_missing_value = "true"]`.
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident / $layer:ident, heading = $heading:literal {
            $(
                $(#[doc = $doc:literal])*
                $([$($arg:tt)*])?
                $field:ident : $kind:ident $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: $crate::__setting_type!($kind $ty),)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $crate::__setting_default!($kind $(= $default)?),)* }
            }
        }

        /// The settings of the group that one source (a preset, the command line) gives.
        #[derive(Clone, Debug, Default, PartialEq, clap::Args)]
        #[command(next_help_heading = $heading)]
        pub struct $layer {
            $(
                $(#[doc = $doc])*
                #[arg(long $(, $($arg)*)?)]
                pub $field: Option<$ty>,
            )*
        }

        impl $layer {
            /// Writes the fields this layer has into `s`.
            pub fn apply_to(&self, s: &mut $name) {
                $(if let Some(v) = &self.$field {
                    $crate::__layer_apply!(s.$field, v.clone(), $kind);
                })*
            }

            /// The names of the fields this layer has (for messages).
            pub fn given(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $(if self.$field.is_some() {
                    v.push(stringify!($field));
                })*
                v
            }

            /// (argument id, default as `--help` shows it) for the fields that have one.
            pub fn help_defaults() -> Vec<(&'static str, String)> {
                let d = $name::default();
                let mut v = Vec::new();
                $(if let Some(text) = $crate::__help_default!(d.$field, $kind) {
                    v.push((stringify!($field), text));
                })*
                v
            }
        }
    };
}
