//! Helpers for the model tests (feature `testing`): deterministic parameter values, the same
//! arithmetic as `fixture_values` in tools/gen_fixtures.py, so fixtures need not ship weights
//! or inputs; and a small variant of every family.

use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// One small variant of every family, with an input size it takes (a multiple of its
/// patch and window sizes), for tests that build every family.
pub const SMALL_FAMILIES: [(&str, usize); 7] = [
    ("convnext_atto", 64),
    ("resnet18", 64),
    ("deit_tiny_patch16_224", 32),
    ("swin_tiny_patch4_window7_224", 56),
    ("pvt_v2_b0", 64),
    ("caformer_s18", 64),
    ("CSWin_64_12211_tiny_224", 64),
];

/// Deterministic test values shared with tools/gen_fixtures.py (`fill`): the same integer
/// arithmetic on both sides, so parity fixtures need not ship weights or inputs.
/// u_i = ((i · 2654435761 + fnv1a32(name)) mod 2³²) / 2³², mapped by the tensor's role.
pub fn fixture_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193)) as u64;
    let n: usize = shape.iter().product();
    let u = |i: usize| ((i as u64).wrapping_mul(2_654_435_761).wrapping_add(h) & 0xffff_ffff) as f64 / 4_294_967_296.0;
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    (0..n)
        .map(|i| {
            let u = u(i);
            let v = if name == "__input__" {
                (u - 0.5) * 4.0
            } else if name.ends_with("running_var") {
                0.5 + u
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                0.2 * (u - 0.5)
            } else if name.ends_with("gamma") {
                0.5 + 0.5 * u
            } else if shape.len() == 1 {
                0.8 + 0.4 * u
            } else {
                // Uniform with variance 2 / fan_in keeps activations O(1) through deep nets.
                (u - 0.5) * (24.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

/// Sets every parameter and buffer of `ps` to `fixture_values`.
pub fn fill_for_fixture(ps: &ParamStore) -> Result<()> {
    for (name, var) in ps.all() {
        let v = fixture_values(&name, var.dims());
        var.set(&Tensor::from_vec(v, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
