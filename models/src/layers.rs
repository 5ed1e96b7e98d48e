//! Parameter-holding layers with timm's names and initialisation; their `forward` is
//! written once against [`Ops`].

use et_ops::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The drop-path rate of block `i` of `total`: stochastic depth grows linearly with the
/// block index over the whole network, from 0 to `rate` (timm's `linspace(0, rate, total)`).
pub fn drop_path_rate(rate: f64, i: usize, total: usize) -> f64 {
    if total > 1 {
        rate * i as f64 / (total - 1) as f64
    } else {
        0.0
    }
}

/// timm's `trunc_normal_(std=.02)` for conv and linear weights.
pub const WEIGHT_INIT: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

pub struct Conv2d {
    /// (out, in / groups, k, k), or (out, in) for [`Conv2d::pointwise_from_linear`].
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub geom: ConvGeom,
}

impl Conv2d {
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize, geom: ConvGeom, bias: bool) -> Result<Self> {
        let weight = vb.get_with_hints((c_out, c_in / geom.groups, kernel, kernel), "weight", WEIGHT_INIT)?;
        let bias = if bias { Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Conv2d { weight, bias, geom })
    }

    /// A 1×1 convolution whose weight is stored as a linear layer's (out, in), as in
    /// ConvNeXt blocks without `conv_mlp`: same numbers, timm's names and shapes.
    pub fn pointwise_from_linear(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        // The parameter itself, not a 4-D view of it: a view is a tensor computed from the
        // parameter, whose gradient candle's graph would have to carry back every step.
        let weight = vb.get_with_hints((c_out, c_in), "weight", WEIGHT_INIT)?;
        let bias = Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?);
        Ok(Conv2d { weight, bias, geom: ConvGeom { stride: 1, padding: 0, groups: 1 } })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        if self.weight.rank() == 2 {
            return o.pointwise_linear(x, &self.weight, self.bias.as_ref());
        }
        o.conv2d(x, &self.weight, self.bias.as_ref(), self.geom)
    }

    /// The convolution of tokens (N, H·W, C) laid out as the NCHW map `like`, as tokens
    /// ([`Ops::conv2d_tokens`]).
    pub fn forward_tokens<O: Ops>(&self, o: &O, x: &O::T, like: &O::T) -> Result<O::T> {
        let w = match self.weight.dims() {
            &[out, inp] => self.weight.reshape((out, inp, 1, 1))?,
            _ => self.weight.clone(),
        };
        o.conv2d_tokens(x, like, &w, self.bias.as_ref(), self.geom)
    }
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get_with_hints((c_out, c_in), "weight", WEIGHT_INIT)?;
        let bias = if bias { Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.linear(x, &self.weight, self.bias.as_ref())
    }
}

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias, eps })
    }

    /// Without a bias (MetaFormer's `LayerNormNoBias`): only `weight` is a parameter; a
    /// constant zero bias keeps one LayerNorm op.
    pub fn no_bias(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = Tensor::zeros(dim, weight.dtype(), weight.device())?;
        Ok(LayerNorm { weight, bias, eps })
    }

    /// Over the channels of an NCHW tensor (timm's `LayerNorm2d`).
    pub fn forward_channels<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.layer_norm_channels(x, &self.weight, &self.bias, self.eps)
    }

    /// Over the last dimension (`nn.LayerNorm`).
    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// BatchNorm2d (timm / PyTorch names: weight, bias, running_mean, running_var).
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Self::with_init(vb, dim, 1.0)
    }

    /// `weight_init` 0 gives timm's `zero_init_last` for the last norm of a residual block.
    pub fn with_init(vb: VarBuilder, dim: usize, weight_init: f64) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: vb.get_with_hints(dim, "weight", Init::Const(weight_init))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            running_mean: vb.get_with_hints(dim, "running_mean", Init::Const(0.0))?,
            running_var: vb.get_with_hints(dim, "running_var", Init::Const(1.0))?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.batch_norm(x, &self.weight, &self.bias, &self.running_mean, &self.running_var, self.eps, self.momentum)
    }

    /// relu(forward(x)), which the CPU kernels fuse.
    pub fn forward_relu<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.batch_norm_relu(x, &self.weight, &self.bias, &self.running_mean, &self.running_var, self.eps, self.momentum)
    }
}
