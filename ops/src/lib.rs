//! One model definition, several back-ends.
//!
//! Models are written once against [`Ops`]: et-kernels' `CandleOps` runs them in candle
//! (with gradients, in train or eval mode), et-export's graph builder implements the same
//! trait to emit ONNX nodes, and [`flops::FlopCounter`] runs them on shapes alone to count
//! multiply-accumulates. Parameters are always candle tensors; only activations change type.

pub mod flops;

use candle_core::{Result, Tensor};

/// Geometry of a 2-D convolution (dilation 1, square kernel, symmetric padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// [`Ops::pointwise_linear`] as a plain 1×1 [`Ops::conv2d`] on a (out, in, 1, 1) view of
/// the weight: the trait's default, and a back-end's fallback where it has no kernel.
pub fn pointwise_linear_as_conv<O: Ops + ?Sized>(o: &O, x: &O::T, w: &Tensor, b: Option<&Tensor>) -> Result<O::T> {
    let (out, inp) = w.dims2()?;
    o.conv2d(x, &w.reshape((out, inp, 1, 1))?, b, ConvGeom { stride: 1, padding: 0, groups: 1 })
}

pub trait Ops {
    /// An activation: a candle tensor, or the name of an ONNX value.
    type T: Clone;

    /// NCHW convolution; `w` is (out, in/groups, k, k) as in PyTorch.
    fn conv2d(&self, x: &Self::T, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Self::T>;
    /// `x @ w^T + b` over the last dimension; `w` is (out, in) as in PyTorch.
    fn linear(&self, x: &Self::T, w: &Tensor, b: Option<&Tensor>) -> Result<Self::T>;
    /// 1×1 convolution of NCHW `x` with a linear layer's (out, in) weight (ConvNeXt's MLP
    /// without `conv_mlp`). Back-ends with a tape override it so that the gradient reaches the
    /// stored parameter itself, not a reshaped view of it that candle's graph must carry back.
    fn pointwise_linear(&self, x: &Self::T, w: &Tensor, b: Option<&Tensor>) -> Result<Self::T> {
        pointwise_linear_as_conv(self, x, w, b)
    }
    /// LayerNorm over dimension 1 of an NCHW tensor (timm's `LayerNorm2d`).
    fn layer_norm_channels(&self, x: &Self::T, w: &Tensor, b: &Tensor, eps: f64) -> Result<Self::T>;
    /// LayerNorm over the last dimension.
    fn layer_norm(&self, x: &Self::T, w: &Tensor, b: &Tensor, eps: f64) -> Result<Self::T>;
    /// GELU, exact (erf) form as in PyTorch's default.
    fn gelu(&self, x: &Self::T) -> Result<Self::T>;
    fn relu(&self, x: &Self::T) -> Result<Self::T>;
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// relu(a + b) for `a` and `b` of one shape (a residual connection and its ReLU); a
    /// back-end may fuse the two.
    fn add_relu(&self, a: &Self::T, b: &Self::T) -> Result<Self::T> {
        self.relu(&self.add(a, b)?)
    }
    /// Multiplies NCHW `x` by a per-channel parameter of shape (C).
    fn scale_channels(&self, x: &Self::T, gamma: &Tensor) -> Result<Self::T>;
    /// Global average pooling of NCHW to (N, C, 1, 1).
    fn global_avg_pool(&self, x: &Self::T) -> Result<Self::T>;
    /// (N, C, H, W) -> (N, C*H*W).
    fn flatten(&self, x: &Self::T) -> Result<Self::T>;
    /// Stochastic depth on a residual branch: identity outside training.
    fn drop_path(&self, x: &Self::T, rate: f64) -> Result<Self::T>;
    /// BatchNorm over the channels of NCHW `x`. Inference uses the running statistics;
    /// training uses the batch's and reports updated running statistics (PyTorch's
    /// momentum rule, unbiased variance) through the implementation, never in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm(&self, x: &Self::T, w: &Tensor, b: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64, momentum: f64) -> Result<Self::T>;
    /// [`Ops::batch_norm`] then [`Ops::relu`]; a back-end may fuse the two.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_relu(&self, x: &Self::T, w: &Tensor, b: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64, momentum: f64) -> Result<Self::T> {
        self.relu(&self.batch_norm(x, w, b, running_mean, running_var, eps, momentum)?)
    }
    /// Max pooling with a square window, stride and symmetric padding.
    fn max_pool2d(&self, x: &Self::T, kernel: usize, stride: usize, padding: usize) -> Result<Self::T>;
    /// (H, W) of the model's NCHW input. Graph recorders know it only for the graph input
    /// (the export resolution).
    fn input_hw(&self, x: &Self::T) -> Result<(usize, usize)>;
    /// NCHW map → (N, H·W, C) tokens.
    fn to_tokens(&self, x: &Self::T) -> Result<Self::T>;
    /// Prepends a learned token (1, 1, C) to every sequence: (N, L, C) → (N, 1 + L, C).
    fn prepend_token(&self, x: &Self::T, token: &Tensor) -> Result<Self::T>;
    /// Adds a parameter broadcast over the batch, e.g. a position embedding (1, L, C).
    fn add_param(&self, x: &Self::T, p: &Tensor) -> Result<Self::T>;
    /// Multi-head self-attention core on packed projections: qkv (N, L, 3·heads·head_dim) →
    /// softmax(q·kᵀ/√head_dim + bias)·v with heads merged back, (N, L, heads·head_dim).
    /// `bias` is (G, heads, L, L) and sequence n gets group n mod G (see [`Ops::sdpa`]).
    fn attention(&self, qkv: &Self::T, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Self::T>;
    /// Scaled dot-product attention on separate projections: q (N, Lq, heads·head_dim), k and
    /// v (N, Lk, heads·head_dim) → (N, Lq, heads·head_dim). `bias` (G, heads, Lq, Lk), derived from
    /// parameters, is added to the scores of sequence n as group n mod G: with sequences
    /// ordered (image, window), G windows per image get their own bias (Swin's relative
    /// position bias plus shifted-window mask); G = 1 broadcasts.
    fn sdpa(&self, q: &Self::T, k: &Self::T, v: &Self::T, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Self::T>;
    /// Token `index` of every sequence: (N, L, C) → (N, C).
    fn token(&self, x: &Self::T, index: usize) -> Result<Self::T>;
    /// Reshape to (M, rest…), M inferred: the leading dimension absorbs the batch, so graphs
    /// keep a dynamic batch (window partitions fold windows into it).
    fn reshape(&self, x: &Self::T, rest: &[usize]) -> Result<Self::T>;
    /// Reorders dimensions (`perm[i]` is the input dimension that becomes dimension i).
    fn permute(&self, x: &Self::T, perm: &[usize]) -> Result<Self::T>;
    /// Cyclic shift along `dim` as `torch.roll`: element i moves to (i + shift) mod size.
    fn roll(&self, x: &Self::T, shift: isize, dim: usize) -> Result<Self::T>;
    /// Appends `pads[d]` zeros at the end of every dimension d (`pads` has one entry per dimension).
    fn pad_end(&self, x: &Self::T, pads: &[usize]) -> Result<Self::T>;
    /// `len` elements from `start` along `dim`.
    fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize) -> Result<Self::T>;
    /// Consecutive pieces of `x` along `dim`, of the given lengths (a fused qkv into q, k
    /// and v). Back-ends with a tape override it: the pieces' gradients then meet in one
    /// buffer instead of one zero-padded copy of `x` per piece.
    fn split(&self, x: &Self::T, dim: usize, lens: &[usize]) -> Result<Vec<Self::T>> {
        let mut start = 0;
        lens.iter()
            .map(|&len| {
                let piece = self.narrow(x, dim, start, len);
                start += len;
                piece
            })
            .collect()
    }
    /// Concatenation along `dim`.
    fn concat(&self, xs: &[&Self::T], dim: usize) -> Result<Self::T>;
    /// Inverse of [`Ops::to_tokens`]: (N, H·W, C) → (N, C, H, W) with H and W taken from the
    /// NCHW value `like` (at run time in graphs, so they keep a dynamic size).
    fn tokens_to_map(&self, x: &Self::T, like: &Self::T) -> Result<Self::T>;
    /// Multiplies by a parameter broadcast from the right (numpy rules), e.g. a (C) scale
    /// on (N, L, C) tokens or a (1) scalar.
    fn mul_param(&self, x: &Self::T, p: &Tensor) -> Result<Self::T>;
    /// relu(x)² (Primer's squared ReLU; StarReLU is s·relu(x)² + b).
    fn squared_relu(&self, x: &Self::T) -> Result<Self::T>;
    /// StarReLU, s·relu(x)² + b with scalar parameters s and b (one element each).
    fn star_relu(&self, x: &Self::T, scale: &Tensor, bias: &Tensor) -> Result<Self::T> {
        self.add_param(&self.mul_param(&self.squared_relu(x)?, scale)?, bias)
    }
    /// Swin's shifted-window partition: (N, h, w, C) rolled by −shift on both spatial axes
    /// (`torch.roll`), zero-padded at the end to multiples of `ws` and cut into ws × ws
    /// windows, (N·windows, ws², C). This is [`window_partition_composed`]; a back-end may
    /// gather the windows in one pass instead.
    fn window_partition(&self, x: &Self::T, ws: usize, shift: usize, hwc: (usize, usize, usize)) -> Result<Self::T> {
        window_partition_composed(self, x, ws, shift, hwc)
    }
    /// The inverse of [`Ops::window_partition`]: (N·windows, ws², C) → (N, h, w, C). This is
    /// [`window_reverse_composed`].
    fn window_reverse(&self, y: &Self::T, ws: usize, shift: usize, hwc: (usize, usize, usize)) -> Result<Self::T> {
        window_reverse_composed(self, y, ws, shift, hwc)
    }
    /// Convolution of tokens (N, H·W, C) laid out as the NCHW map `like`, back to tokens.
    /// This is [`conv2d_tokens_via_map`]; a back-end may instead stay in the token layout
    /// (the CPU kernels do for depthwise stride-1 convolutions).
    fn conv2d_tokens(&self, x: &Self::T, like: &Self::T, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Self::T> {
        conv2d_tokens_via_map(self, x, like, w, b, g)
    }
}

/// The definition of [`Ops::window_partition`]: two rolls, a pad, and a permutation of the
/// (N, windows down, ws, windows across, ws, C) view.
pub fn window_partition_composed<O: Ops + ?Sized>(o: &O, x: &O::T, ws: usize, shift: usize, (h, w, c): (usize, usize, usize)) -> Result<O::T> {
    let s = shift as isize;
    let y = if s > 0 { o.roll(&o.roll(x, -s, 1)?, -s, 2)? } else { x.clone() };
    let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let y = o.pad_end(&y, &[0, hp - h, wp - w, 0])?;
    o.reshape(&o.permute(&o.reshape(&y, &[hp / ws, ws, wp / ws, ws, c])?, &[0, 1, 3, 2, 4, 5])?, &[ws * ws, c])
}

/// The definition of [`Ops::window_reverse`]: [`window_partition_composed`] backwards.
pub fn window_reverse_composed<O: Ops + ?Sized>(o: &O, y: &O::T, ws: usize, shift: usize, (h, w, c): (usize, usize, usize)) -> Result<O::T> {
    let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let mut y = o.reshape(&o.permute(&o.reshape(y, &[hp / ws, wp / ws, ws, ws, c])?, &[0, 1, 3, 2, 4, 5])?, &[hp, wp, c])?;
    if hp > h {
        y = o.narrow(&y, 1, 0, h)?;
    }
    if wp > w {
        y = o.narrow(&y, 2, 0, w)?;
    }
    if shift > 0 {
        let s = shift as isize;
        y = o.roll(&o.roll(&y, s, 1)?, s, 2)?;
    }
    Ok(y)
}

/// The definition of [`Ops::conv2d_tokens`]: to the map, [`Ops::conv2d`], back to tokens.
pub fn conv2d_tokens_via_map<O: Ops + ?Sized>(o: &O, x: &O::T, like: &O::T, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<O::T> {
    o.to_tokens(&o.conv2d(&o.tokens_to_map(x, like)?, w, b, g)?)
}
