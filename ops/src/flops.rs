//! Counting multiply-accumulates by running a model's `forward` on shapes only (the
//! convention of fvcore and the papers' "FLOPs": one MAC per multiply-add of convolutions,
//! linear layers and attention matmuls; element-wise ops and norms are not counted) — and,
//! on the way, the activations a forward pass produces: the largest single one (with an
//! attention's score matrix) and their sum, from which memory needs are estimated.

use crate::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use std::cell::Cell;

pub type Shape = Vec<usize>;

#[derive(Default)]
pub struct FlopCounter {
    macs: Cell<u64>,
    /// Elements of the largest activation (or attention score matrix) seen.
    largest: Cell<u64>,
    /// Elements of all activations produced.
    total: Cell<u64>,
}

impl FlopCounter {
    pub fn new() -> Self {
        FlopCounter::default()
    }

    pub fn macs(&self) -> u64 {
        self.macs.get()
    }

    /// Elements of the largest activation of the pass.
    pub fn largest_activation(&self) -> u64 {
        self.largest.get()
    }

    /// Elements of all activations of the pass (what a backward pass keeps, roughly).
    pub fn total_activations(&self) -> u64 {
        self.total.get()
    }

    fn add(&self, n: usize) {
        self.macs.set(self.macs.get() + n as u64);
    }

    /// Records an activation of `n` elements that lives at once with the op's output.
    fn scratch(&self, n: usize) {
        self.largest.set(self.largest.get().max(n as u64));
        self.total.set(self.total.get().saturating_add(n as u64));
    }

    /// Records an op's output.
    fn out(&self, s: Shape) -> Result<Shape> {
        self.scratch(s.iter().product());
        Ok(s)
    }
}

fn dims4(x: &Shape) -> Result<(usize, usize, usize, usize)> {
    match x.as_slice() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        _ => candle_core::bail!("flop counter: expected an NCHW shape, got {x:?}"),
    }
}

fn conv_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad).saturating_sub(k) / stride + 1
}

impl Ops for FlopCounter {
    type T = Shape;

    fn conv2d(&self, x: &Shape, w: &Tensor, _b: Option<&Tensor>, g: ConvGeom) -> Result<Shape> {
        let (n, _, h, wd) = dims4(x)?;
        let (c_out, c_per_group, kh, kw) = w.dims4()?;
        let (ho, wo) = (conv_out(h, kh, g.stride, g.padding), conv_out(wd, kw, g.stride, g.padding));
        self.add(n * c_out * ho * wo * c_per_group * kh * kw);
        self.out(vec![n, c_out, ho, wo])
    }

    fn linear(&self, x: &Shape, w: &Tensor, _b: Option<&Tensor>) -> Result<Shape> {
        let (out, inp) = w.dims2()?;
        let mut y = x.clone();
        let last = y.len() - 1;
        y[last] = out;
        self.add(y.iter().product::<usize>() * inp);
        self.out(y)
    }

    fn layer_norm_channels(&self, x: &Shape, _w: &Tensor, _b: &Tensor, _eps: f64) -> Result<Shape> {
        self.out(x.clone())
    }

    fn layer_norm(&self, x: &Shape, _w: &Tensor, _b: &Tensor, _eps: f64) -> Result<Shape> {
        self.out(x.clone())
    }

    fn gelu(&self, x: &Shape) -> Result<Shape> {
        self.out(x.clone())
    }

    fn relu(&self, x: &Shape) -> Result<Shape> {
        self.out(x.clone())
    }

    fn add(&self, a: &Shape, _b: &Shape) -> Result<Shape> {
        self.out(a.clone())
    }

    fn scale_channels(&self, x: &Shape, _gamma: &Tensor) -> Result<Shape> {
        self.out(x.clone())
    }

    fn global_avg_pool(&self, x: &Shape) -> Result<Shape> {
        let (n, c, _, _) = dims4(x)?;
        self.out(vec![n, c, 1, 1])
    }

    fn flatten(&self, x: &Shape) -> Result<Shape> {
        self.out(vec![x[0], x[1..].iter().product()])
    }

    fn drop_path(&self, x: &Shape, _rate: f64) -> Result<Shape> {
        self.out(x.clone())
    }

    fn batch_norm(&self, x: &Shape, _w: &Tensor, _b: &Tensor, _m: &Tensor, _v: &Tensor, _eps: f64, _momentum: f64) -> Result<Shape> {
        self.out(x.clone())
    }

    fn max_pool2d(&self, x: &Shape, kernel: usize, stride: usize, padding: usize) -> Result<Shape> {
        let (n, c, h, w) = dims4(x)?;
        self.out(vec![n, c, conv_out(h, kernel, stride, padding), conv_out(w, kernel, stride, padding)])
    }

    fn input_hw(&self, x: &Shape) -> Result<(usize, usize)> {
        let (_, _, h, w) = dims4(x)?;
        Ok((h, w))
    }

    fn to_tokens(&self, x: &Shape) -> Result<Shape> {
        let (n, c, h, w) = dims4(x)?;
        self.out(vec![n, h * w, c])
    }

    fn prepend_token(&self, x: &Shape, _token: &Tensor) -> Result<Shape> {
        self.out(vec![x[0], x[1] + 1, x[2]])
    }

    fn add_param(&self, x: &Shape, _p: &Tensor) -> Result<Shape> {
        self.out(x.clone())
    }

    fn attention(&self, qkv: &Shape, heads: usize, head_dim: usize, _bias: Option<&Tensor>) -> Result<Shape> {
        let (n, l) = (qkv[0], qkv[1]);
        // q·kᵀ and p·v: two (L × L × head_dim) products per head; scores and probabilities.
        self.add(2 * n * heads * l * l * head_dim);
        self.scratch(2 * n * heads * l * l);
        self.out(vec![n, l, heads * head_dim])
    }

    fn sdpa(&self, q: &Shape, k: &Shape, _v: &Shape, _heads: usize, _head_dim: usize, _bias: Option<&Tensor>) -> Result<Shape> {
        // q·kᵀ and p·v: two (Lq × Lk × channels) products; scores and probabilities (heads
        // not known here: counted as one).
        self.add(2 * q[0] * q[1] * k[1] * q[2]);
        self.scratch(2 * q[0] * q[1] * k[1]);
        self.out(q.clone())
    }

    fn token(&self, x: &Shape, _index: usize) -> Result<Shape> {
        self.out(vec![x[0], x[2]])
    }

    fn reshape(&self, x: &Shape, rest: &[usize]) -> Result<Shape> {
        let inner: usize = rest.iter().product();
        let total: usize = x.iter().product();
        if inner == 0 || total % inner != 0 {
            candle_core::bail!("flop counter: cannot reshape {x:?} to (-1, {rest:?})")
        }
        Ok(std::iter::once(total / inner).chain(rest.iter().copied()).collect())
    }

    fn permute(&self, x: &Shape, perm: &[usize]) -> Result<Shape> {
        self.out(perm.iter().map(|&p| x[p]).collect())
    }

    fn roll(&self, x: &Shape, _shift: isize, _dim: usize) -> Result<Shape> {
        self.out(x.clone())
    }

    fn pad_end(&self, x: &Shape, pads: &[usize]) -> Result<Shape> {
        self.out(x.iter().zip(pads).map(|(s, p)| s + p).collect())
    }

    fn narrow(&self, x: &Shape, dim: usize, _start: usize, len: usize) -> Result<Shape> {
        let mut y = x.clone();
        y[dim] = len;
        self.out(y)
    }

    fn concat(&self, xs: &[&Shape], dim: usize) -> Result<Shape> {
        let mut y = xs[0].clone();
        y[dim] = xs.iter().map(|x| x[dim]).sum();
        self.out(y)
    }

    fn tokens_to_map(&self, x: &Shape, like: &Shape) -> Result<Shape> {
        self.out(vec![x[0], x[2], like[2], like[3]])
    }

    fn mul_param(&self, x: &Shape, _p: &Tensor) -> Result<Shape> {
        self.out(x.clone())
    }

    fn squared_relu(&self, x: &Shape) -> Result<Shape> {
        self.out(x.clone())
    }
}
