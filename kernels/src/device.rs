//! Where a model runs and in which precision: `--device cpu|cuda[:N]` and
//! `--precision f32|bf16`, parsed once for every binary.

use candle_core::{DType, Device};
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("unknown device '{0}': use cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("this build has no CUDA support: rebuild with `cargo build --release --features et-train/cuda,et-eval/cuda` (see docs/gpu.md), or use --device cpu")]
    NotCompiled,
    #[error("cannot open CUDA device {ordinal}: {reason}")]
    Unavailable { ordinal: usize, reason: String },
    #[error("unknown precision '{0}': use f32 or bf16")]
    UnknownPrecision(String),
    #[error("--precision bf16 needs --device cuda (candle's CPU matmul has no bf16): use --precision f32 on the CPU")]
    Bf16OnCpu,
}

/// Whether `precision` can run on `device`.
pub fn check_precision(device: DeviceSpec, precision: Precision) -> Result<(), DeviceError> {
    match (device, precision) {
        (DeviceSpec::Cpu, Precision::Bf16) => Err(DeviceError::Bf16OnCpu),
        _ => Ok(()),
    }
}

/// A parsed `--device` value (not yet opened, so it can sit in configs and be compared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(DeviceError::Unknown(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; without the `cuda` feature asking for CUDA is a clear error.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NotCompiled),
            DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
                ordinal,
                reason: e.to_string().lines().next().unwrap_or_default().to_string(),
            }),
        }
    }
}

/// Compute precision. Master weights, optimiser state and the loss stay f32 in every mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 activations and matmuls/convolutions; parameters are cast per step (the cast has
    /// a gradient, so the f32 masters receive it).
    Bf16,
}

impl FromStr for Precision {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(DeviceError::UnknownPrecision(s.to_string())),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// Both are stored as their command-line spelling (`"cuda:0"`, `"bf16"`) in run configs.
macro_rules! serde_as_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_str!(DeviceSpec);
serde_as_str!(Precision);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_precisions() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("CUDA:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!(matches!("cuda:x".parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))));
        assert!(matches!("tpu".parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))));
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert!("f16".parse::<Precision>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0).open().unwrap_err();
            assert_eq!(e, DeviceError::NotCompiled);
            assert!(e.to_string().contains("--features et-train/cuda"));
        }
    }
}
