use super::depthwise::depthwise_conv2d;
use super::depthwise_nhwc::depthwise_conv2d_tokens;
use super::gelu::gelu;
use super::layer_norm::layer_norm;
use super::max_pool::max_pool2d;
use super::pointwise::pointwise_conv;
use super::scale::scale_channels;
use super::tape::{self, Recording, Tape};
use super::{portable, ConvGeom, Ops};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, TensorId, Var, D};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Runs models in candle. Every op here has a working gradient (no `*_no_bwd` paths, see
/// docs/kernels.md); `train` switches stochastic depth on. f32/f64 tensors on the CPU go through the
/// hand-written kernels of this module; f32/bf16 CUDA tensors through our CUDA kernels where
/// an op has one (kernels/cuda); everything else through [`portable`] compositions of candle ops.
pub struct CandleOps {
    pub train: bool,
    /// Whether f32/f64 CPU tensors use the hand-written kernels, and f32/bf16 CUDA tensors
    /// our CUDA kernels (tests switch it off to check the portable path against them).
    kernels: bool,
    rng: Cell<u64>,
    /// New running statistics computed in training mode, keyed by the buffer tensor's id;
    /// the trainer writes them into the buffers after the step (`ParamStore::apply`).
    updates: RefCell<Vec<(TensorId, Tensor)>>,
    /// Records the backward outside candle's graph ([`CandleOps::taped`]).
    tape: Option<Rc<Tape>>,
    /// Parameters enter ops detached from candle's graph ([`CandleOps::inference`]).
    detach: bool,
    /// Under a tape: the recorded output and the leaf variable the loss is computed from.
    head: RefCell<Option<(Tensor, Tensor)>>,
}

impl CandleOps {
    pub fn eval() -> Self {
        CandleOps { train: false, kernels: true, rng: Cell::new(0), updates: RefCell::new(Vec::new()), tape: None, head: RefCell::new(None), detach: false }
    }

    /// Eval mode for predictions only: parameters enter every op detached from candle's
    /// graph, so a forward pass does not keep each activation alive for a backward pass that
    /// never comes (a 1024-px ConvNeXt-atto image held 3 GB that way, 0.9 GB without).
    /// Gradients with respect to the input still flow.
    pub fn inference() -> Self {
        CandleOps { detach: true, ..CandleOps::eval() }
    }

    /// Training mode; `seed` drives drop-path masks (reseed per step for reproducibility).
    pub fn train(seed: u64) -> Self {
        CandleOps { train: true, kernels: true, rng: Cell::new(seed), updates: RefCell::new(Vec::new()), tape: None, head: RefCell::new(None), detach: false }
    }

    /// Records gradients on our own tape instead of candle's graph (see `ops/tape.rs`):
    /// the same gradients without candle's zero-filled buffer and copy per tensor. For the
    /// CPU kernels only (f32/f64 on the CPU): other inputs are an error. Compute the loss from
    /// [`CandleOps::loss_input`] of the model's output and take gradients with
    /// [`CandleOps::backward`].
    pub fn taped(mut self) -> Self {
        // Eval mode records nothing: no gradients are taken there.
        if self.train {
            self.tape = Some(Rc::new(Tape::default()));
        }
        self
    }

    /// Training mode for a step whose activations are `dtype` on `device`: on a tape where
    /// the CPU kernels run (f32/f64 on the CPU) unless `ET_CANDLE_AUTOGRAD=1` asks for
    /// candle's graph (the same gradients, slower: `assert_tape_matches_graph`).
    pub fn training(seed: u64, device: &candle_core::Device, dtype: DType) -> Self {
        let graph = std::env::var("ET_CANDLE_AUTOGRAD").is_ok_and(|v| !v.is_empty() && v != "0");
        let ops = CandleOps::train(seed);
        if !graph && device.is_cpu() && matches!(dtype, DType::F32 | DType::F64) {
            ops.taped()
        } else {
            ops
        }
    }

    /// The model output as the loss should take it: under a tape, a leaf variable whose
    /// gradient [`CandleOps::backward`] carries back through the tape; otherwise `y` itself.
    pub fn loss_input(&self, y: &Tensor) -> Result<Tensor> {
        if self.tape.is_none() {
            return Ok(y.clone());
        }
        let leaf = Var::from_tensor(y)?.into_inner();
        *self.head.borrow_mut() = Some((y.clone(), leaf.clone()));
        Ok(leaf)
    }

    /// Gradients of the scalar `loss` with respect to every parameter.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut store = loss.backward()?;
        let Some(tape) = &self.tape else { return Ok(store) };
        let Some((y, leaf)) = self.head.borrow_mut().take() else {
            candle_core::bail!("a taped backward needs the loss computed from CandleOps::loss_input")
        };
        let Some(g) = store.get(&leaf) else { candle_core::bail!("the loss does not depend on the model output") };
        let g = g.clone();
        tape.backward(&y, g, &mut store)?;
        Ok(store)
    }

    /// Makes this op's tape (if any) the one kernels record on, for one method call.
    #[track_caller]
    fn rec(&self, x: &Tensor) -> Result<Recording> {
        let span = super::profile::span(std::panic::Location::caller(), x.dims());
        if self.tape.is_some() && !self.kernels_for(x) {
            candle_core::bail!("a taped training step runs the CPU kernels only (f32/f64 on the CPU), not {:?} on {:?}", x.dtype(), x.device())
        }
        Ok(Recording::start(self.tape.as_ref(), span))
    }

    /// The same, always on the portable compositions (what CPU bf16 and the CUDA ops without
    /// a kernel of ours run).
    pub fn portable(mut self) -> Self {
        self.kernels = false;
        self
    }

    /// A parameter as an op takes it: detached from candle's graph for inference.
    fn p<'a>(&self, t: &'a Tensor) -> Cow<'a, Tensor> {
        if self.detach {
            Cow::Owned(t.detach())
        } else {
            Cow::Borrowed(t)
        }
    }

    fn po<'a>(&self, t: Option<&'a Tensor>) -> Option<Cow<'a, Tensor>> {
        t.map(|t| self.p(t))
    }

    fn kernels_for(&self, x: &Tensor) -> bool {
        self.kernels && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// Records PyTorch's momentum update of the running statistics from a training batch's
    /// mean and biased variance over `count` values per channel.
    fn record_running_stats(&self, (running_mean, running_var): (&Tensor, &Tensor), mean: Tensor, var: Tensor, count: f64, momentum: f64) -> Result<()> {
        let rdt = running_mean.dtype();
        let unbiased = (var.to_dtype(rdt)? * (count / (count - 1.0).max(1.0)))?;
        let new_mean = ((running_mean * (1.0 - momentum))? + (mean.to_dtype(rdt)? * momentum)?)?;
        let new_var = ((running_var * (1.0 - momentum))? + (unbiased * momentum)?)?;
        let mut u = self.updates.borrow_mut();
        u.push((running_mean.id(), new_mean));
        u.push((running_var.id(), new_var));
        Ok(())
    }

    /// Ops with a CUDA kernel of ours (kernels/cuda/): the depthwise convolution, LayerNorm
    /// (both layouts), the attention softmax and GELU.
    fn cuda_kernels_for(&self, x: &Tensor) -> bool {
        self.kernels && x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::BF16)
    }

    fn attend_path(&self, q: &Tensor) -> AttendPath {
        if self.kernels_for(q) {
            AttendPath::Kernels
        } else if self.cuda_kernels_for(q) {
            AttendPath::OwnSoftmax
        } else {
            AttendPath::Portable
        }
    }

    /// Buffer updates (BatchNorm running statistics) recorded by a training forward pass.
    pub fn take_buffer_updates(&self) -> Vec<(TensorId, Tensor)> {
        self.updates.take()
    }

    fn uniform(&self) -> f64 {
        // SplitMix64: a fresh, cheap stream per CandleOps.
        let s = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether weight `w` (out, in/groups, k, k) on `c_in` channels is a depthwise convolution
/// (one square filter per channel), which the depthwise kernels run.
fn is_depthwise(c_in: usize, w: &Tensor, g: ConvGeom) -> Result<bool> {
    let (c_out, c_per_group, kh, kw) = w.dims4()?;
    Ok(g.groups > 1 && g.groups == c_in && g.groups == c_out && c_per_group == 1 && kh == kw)
}

fn bias_or_zeros(b: Option<&Tensor>, c: usize, x: &Tensor) -> Result<Tensor> {
    match b {
        Some(b) => Ok(b.clone()),
        None => Tensor::zeros(c, x.dtype(), x.device()),
    }
}

/// candle's conv2d backward derives the transposed conv's output padding from the height
/// only, so when the stride leaves a different remainder in height and width the input
/// gradient has the wrong shape (an error). Padding explicitly and dropping the rows and
/// columns the convolution never reads gives the same output with zero remainders.
fn trim_for_backward(x: &Tensor, k: usize, g: ConvGeom) -> Result<(Tensor, usize)> {
    let (_, _, h, w) = x.dims4()?;
    let rem = |n: usize| (n + 2 * g.padding).checked_sub(k).map(|v| v % g.stride).unwrap_or(0);
    if g.stride == 1 || (rem(h) == 0 && rem(w) == 0) {
        return Ok((x.clone(), g.padding));
    }
    let p = g.padding;
    let x = if p > 0 { x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)? } else { x.clone() };
    let x = x.narrow(2, 0, h + 2 * p - rem(h))?.narrow(3, 0, w + 2 * p - rem(w))?;
    Ok((x, 0))
}

impl Ops for CandleOps {
    type T = Tensor;

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Tensor> {
        let (w, b) = (self.p(w), self.po(b));
        let (w, b) = (&*w, b.as_deref());
        let (_, c_in, _, _) = x.dims4()?;
        let (c_out, _, kh, kw) = w.dims4()?;
        let _r = self.rec(x)?;
        if is_depthwise(c_in, w, g)? && (self.kernels_for(x) || self.cuda_kernels_for(x)) {
            return depthwise_conv2d(x, w, &bias_or_zeros(b, c_out, x)?, g.stride, g.padding);
        }
        if !self.kernels_for(x) {
            let (x, padding) = trim_for_backward(x, kh, g)?;
            return portable::conv2d(&x, w, b, g.stride, padding, g.groups);
        }
        if kh == 1 && kw == 1 && g.stride == 1 && g.padding == 0 && g.groups == 1 {
            return pointwise_conv(x, w, &bias_or_zeros(b, c_out, x)?);
        }
        // Everything else dense, patchify stems (kernel = stride) included.
        if kh == kw && g.groups == 1 {
            return super::conv::conv2d(x, w, &bias_or_zeros(b, c_out, x)?, g.stride, g.padding);
        }
        let inputs: Vec<&Tensor> = [x, w].into_iter().chain(b).collect();
        tape::composite(&inputs, |t| {
            let (x, padding) = trim_for_backward(&t[0], kh, g)?;
            let y = x.conv2d(&t[1], padding, g.stride, 1, g.groups)?;
            match t.get(2) {
                Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
                None => Ok(y),
            }
        })
    }

    fn pointwise_linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if !self.kernels_for(x) {
            return et_ops::pointwise_linear_as_conv(self, x, w, b);
        }
        let (w, b) = (self.p(w), self.po(b));
        let (w, b) = (&*w, b.as_deref());
        let _r = self.rec(x)?;
        // pointwise_conv checks that the (out, in) weight fits x.
        pointwise_conv(x, w, &bias_or_zeros(b, w.dims2()?.0, x)?)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (w, b) = (self.p(w), self.po(b));
        let (w, b) = (&*w, b.as_deref());
        let _r = self.rec(x)?;
        if self.kernels_for(x) {
            return super::linear::linear(x, w, b);
        }
        // Leading dimensions folded into one 2-D matmul: a broadcast matmul's weight gradient
        // is a reduction over the broadcast batch, several times the matmul's cost.
        let y = match x.rank() {
            2 => x.matmul(&w.t()?)?,
            r => {
                let mut shape = x.dims().to_vec();
                shape[r - 1] = w.dim(0)?;
                x.flatten_to(r - 2)?.matmul(&w.t()?)?.reshape(shape)?
            }
        };
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn layer_norm_channels(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let (w, b) = (&*self.p(w), &*self.p(b));
        let _r = self.rec(x)?;
        if !(self.kernels_for(x) || self.cuda_kernels_for(x)) {
            return portable::layer_norm(x, w, b, 1, eps);
        }
        layer_norm(x, w, b, 1, eps)
    }

    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let (w, b) = (&*self.p(w), &*self.p(b));
        let _r = self.rec(x)?;
        if !(self.kernels_for(x) || self.cuda_kernels_for(x)) {
            return portable::layer_norm(x, w, b, x.rank() - 1, eps);
        }
        layer_norm(x, w, b, x.rank() - 1, eps)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        if !(self.kernels_for(x) || self.cuda_kernels_for(x)) {
            return x.gelu_erf();
        }
        gelu(x)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        if self.kernels_for(x) {
            return super::relu::relu(x);
        }
        x.relu()
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let _r = self.rec(a)?;
        if self.kernels_for(a) && super::add::fits(a, b) {
            return super::add::add(a, b);
        }
        tape::op([a, b], |[a, b]| a + b, |g| Ok([Some(g.clone()), Some(g.clone())]))
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.kernels_for(a) && a.shape() == b.shape() && a.dtype() == b.dtype() {
            let _r = self.rec(a)?;
            return super::relu::add_relu(a, b);
        }
        self.relu(&self.add(a, b)?)
    }

    fn scale_channels(&self, x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
        let gamma = &*self.p(gamma);
        let _r = self.rec(x)?;
        if !self.kernels_for(x) {
            return portable::scale_channels(x, gamma);
        }
        scale_channels(x, gamma)
    }

    fn global_avg_pool(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let (n, c, h, w) = x.dims4()?;
        tape::op([x], |[x]| x.reshape((n, c, h * w))?.mean_keepdim(D::Minus1)?.reshape((n, c, 1, 1)), move |g| {
            Ok([Some((g / (h * w) as f64)?.broadcast_as((n, c, h, w))?)])
        })
    }

    fn flatten(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let n = x.dim(0)?;
        tape::reshape(x, (n, x.elem_count() / n.max(1)))
    }

    fn drop_path(&self, x: &Tensor, rate: f64) -> Result<Tensor> {
        if !self.train || rate <= 0.0 {
            return Ok(x.clone());
        }
        let _r = self.rec(x)?;
        let keep = 1.0 - rate;
        let n = x.dim(0)?;
        let mask: Vec<f32> = (0..n).map(|_| if self.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
        let mut shape = vec![1usize; x.rank()];
        shape[0] = n;
        let mask = Tensor::from_vec(mask, shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        let m = mask.clone();
        tape::op([x], |[x]| x.broadcast_mul(&mask), move |g| Ok([Some(g.broadcast_mul(&m)?)]))
    }

    fn batch_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64, momentum: f64) -> Result<Tensor> {
        let (w, b, running_mean, running_var) = (&*self.p(w), &*self.p(b), &*self.p(running_mean), &*self.p(running_var));
        let _r = self.rec(x)?;
        let c = w.elem_count();
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        // Statistics in f32 for half-precision activations; running buffers keep their dtype.
        let (dt, st) = (x.dtype(), portable::stat_dtype(x.dtype()));
        let (wf, bf) = (w.to_dtype(st)?, b.to_dtype(st)?);
        if !self.train {
            // y = x·s + (b − μ·s) with s = w / √(σ² + ε): two broadcast ops on x.
            let (rm, rv) = (running_mean.to_dtype(st)?, running_var.to_dtype(st)?);
            let scale = (&wf / (rv + eps)?.sqrt()?)?;
            let shift = (&bf - (rm * &scale)?)?;
            return x.broadcast_mul(&per_channel(&scale.to_dtype(dt)?)?)?.broadcast_add(&per_channel(&shift.to_dtype(dt)?)?);
        }
        let (n, _, h, wd) = x.dims4()?;
        let count = (n * h * wd) as f64;
        let running = (running_mean, running_var);
        if self.kernels_for(x) {
            let (y, mean, var) = super::batch_norm::batch_norm_train(x, w, b, eps)?;
            self.record_running_stats(running, mean, var, count, momentum)?;
            return Ok(y);
        }
        let xf = x.to_dtype(st)?;
        let mean_c = |t: &Tensor| t.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3);
        let mean = mean_c(&xf)?;
        let xc = xf.broadcast_sub(&mean)?;
        let var = mean_c(&xc.sqr()?)?;
        let y = xc.broadcast_div(&(&var + eps)?.sqrt()?)?.broadcast_mul(&per_channel(&wf)?)?.broadcast_add(&per_channel(&bf)?)?.to_dtype(dt)?;
        self.record_running_stats(running, mean.detach().flatten_all()?, var.detach().flatten_all()?, count, momentum)?;
        Ok(y)
    }

    fn batch_norm_relu(&self, x: &Tensor, w: &Tensor, b: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64, momentum: f64) -> Result<Tensor> {
        let (w, b, running_mean, running_var) = (&*self.p(w), &*self.p(b), &*self.p(running_mean), &*self.p(running_var));
        if self.train && self.kernels_for(x) {
            let _r = self.rec(x)?;
            let (n, _, h, wd) = x.dims4()?;
            let (y, mean, var) = super::batch_norm::batch_norm_relu_train(x, w, b, eps)?;
            self.record_running_stats((running_mean, running_var), mean, var, (n * h * wd) as f64, momentum)?;
            return Ok(y);
        }
        self.relu(&self.batch_norm(x, w, b, running_mean, running_var, eps, momentum)?)
    }

    fn max_pool2d(&self, x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        let _r = self.rec(x)?;
        if !self.kernels_for(x) {
            return portable::max_pool2d(x, kernel, stride, padding);
        }
        max_pool2d(x, kernel, stride, padding)
    }

    fn input_hw(&self, x: &Tensor) -> Result<(usize, usize)> {
        let (_, _, h, w) = x.dims4()?;
        Ok((h, w))
    }

    fn to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let (n, c, h, w) = x.dims4()?;
        if self.kernels_for(x) {
            return super::transpose::transpose_last2(&tape::reshape(x, (n, c, h * w))?);
        }
        x.flatten_from(2)?.transpose(1, 2)?.contiguous()
    }

    fn prepend_token(&self, x: &Tensor, token: &Tensor) -> Result<Tensor> {
        let token = &*self.p(token);
        let _r = self.rec(x)?;
        let (n, l, c) = x.dims3()?;
        tape::op([x, token], |[x, t]| Tensor::cat(&[&t.broadcast_as((n, 1, c))?, &x], 1), move |g| {
            Ok([Some(g.narrow(1, 1, l)?), Some(g.narrow(1, 0, 1)?.sum_keepdim(0)?)])
        })
    }

    fn add_param(&self, x: &Tensor, p: &Tensor) -> Result<Tensor> {
        let p = &*self.p(p);
        let _r = self.rec(x)?;
        let ps = p.shape().clone();
        tape::op([x, p], |[x, p]| x.broadcast_add(&p), move |g| Ok([Some(g.clone()), Some(tape::sum_to(g, &ps)?)]))
    }

    fn attention(&self, qkv: &Tensor, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let bias = self.po(bias);
        let bias = bias.as_deref();
        let _r = self.rec(qkv)?;
        if self.kernels_for(qkv) {
            return super::attention_packed::attention_packed(qkv, heads, head_dim, bias);
        }
        // The portable path (CUDA, bf16) runs on candle's graph, never on a tape.
        let (n, l, _) = qkv.dims3()?;
        let qkv = qkv.reshape((n, l, 3, heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        attend(&q, &k, &v, bias, self.attend_path(&q))
    }

    fn sdpa(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let bias = self.po(bias);
        let bias = bias.as_deref();
        let _r = self.rec(q)?;
        let split = |t: &Tensor| -> Result<Tensor> {
            let (n, l, _) = t.dims3()?;
            tape::op([t], |[t]| t.reshape((n, l, heads, head_dim))?.transpose(1, 2)?.contiguous(), move |g| {
                Ok([Some(g.transpose(1, 2)?.reshape((n, l, heads * head_dim))?)])
            })
        };
        let q = split(q)?;
        let path = self.attend_path(&q);
        attend(&q, &split(k)?, &split(v)?, bias, path)
    }

    fn token(&self, x: &Tensor, index: usize) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let l = x.dim(1)?;
        if index >= l {
            candle_core::bail!("token {index} of a sequence of {l}")
        }
        tape::op([x], |[x]| x.narrow(1, index, 1)?.squeeze(1), move |g| Ok([Some(g.unsqueeze(1)?.pad_with_zeros(1, index, l - index - 1)?)]))
    }

    fn reshape(&self, x: &Tensor, rest: &[usize]) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let inner: usize = rest.iter().product();
        if inner == 0 || x.elem_count() % inner != 0 {
            candle_core::bail!("cannot reshape {:?} to (-1, {rest:?})", x.dims())
        }
        let mut shape = vec![x.elem_count() / inner];
        shape.extend_from_slice(rest);
        tape::reshape(x, shape)
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            if p < inverse.len() {
                inverse[p] = i;
            }
        }
        tape::op([x], |[x]| x.permute(perm)?.contiguous(), move |g| Ok([Some(g.permute(inverse)?)]))
    }

    fn roll(&self, x: &Tensor, shift: isize, dim: usize) -> Result<Tensor> {
        let _r = self.rec(x)?;
        tape::op([x], |[x]| x.roll(shift as i32, dim), move |g| Ok([Some(g.roll(-shift as i32, dim)?)]))
    }

    fn window_partition(&self, x: &Tensor, ws: usize, shift: usize, hwc: (usize, usize, usize)) -> Result<Tensor> {
        let _r = self.rec(x)?;
        if !self.kernels_for(x) {
            return super::window_partition_composed(self, x, ws, shift, hwc);
        }
        super::window::window_partition(x, ws, shift)
    }

    fn window_reverse(&self, y: &Tensor, ws: usize, shift: usize, (h, w, c): (usize, usize, usize)) -> Result<Tensor> {
        let _r = self.rec(y)?;
        if !self.kernels_for(y) {
            return super::window_reverse_composed(self, y, ws, shift, (h, w, c));
        }
        super::window::window_reverse(y, ws, shift, h, w)
    }

    fn pad_end(&self, x: &Tensor, pads: &[usize]) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let dims = x.dims().to_vec();
        let pad = |x: Tensor| -> Result<Tensor> {
            let mut y = x;
            for (d, &p) in pads.iter().enumerate() {
                if p > 0 {
                    y = y.pad_with_zeros(d, 0, p)?;
                }
            }
            Ok(y)
        };
        tape::op([x], |[x]| pad(x), move |g| {
            let mut t = g.clone();
            for (d, &n) in dims.iter().enumerate() {
                if t.dim(d)? != n {
                    t = t.narrow(d, 0, n)?;
                }
            }
            Ok([Some(t)])
        })
    }

    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let size = x.dim(dim)?;
        if start + len > size {
            candle_core::bail!("narrow: {start}..{} of dimension {dim} of {:?}", start + len, x.dims())
        }
        tape::op([x], |[x]| x.narrow(dim, start, len), move |g| Ok([Some(g.pad_with_zeros(dim, start, size - start - len)?)]))
    }

    fn split(&self, x: &Tensor, dim: usize, lens: &[usize]) -> Result<Vec<Tensor>> {
        let _r = self.rec(x)?;
        if lens.iter().sum::<usize>() != x.dim(dim)? {
            candle_core::bail!("split: pieces {lens:?} do not add up to dimension {dim} of {:?}", x.dims())
        }
        tape::split(x, dim, lens)
    }

    fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        let Some(first) = xs.first() else { candle_core::bail!("concat of no tensors") };
        let _r = self.rec(first)?;
        tape::cat(xs, dim)
    }

    fn tokens_to_map(&self, x: &Tensor, like: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let (n, l, c) = x.dims3()?;
        let (_, _, h, w) = like.dims4()?;
        if l != h * w {
            candle_core::bail!("tokens_to_map: {l} tokens do not fill a {h}x{w} map")
        }
        if self.kernels_for(x) {
            return tape::reshape(&super::transpose::transpose_last2(x)?, (n, c, h, w));
        }
        x.transpose(1, 2)?.reshape((n, c, h, w))
    }

    fn conv2d_tokens(&self, x: &Tensor, like: &Tensor, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Tensor> {
        let (w, b) = (self.p(w), self.po(b));
        let (w, b) = (&*w, b.as_deref());
        let _r = self.rec(x)?;
        let c = x.dim(2)?;
        if !(self.kernels_for(x) && g.stride == 1 && is_depthwise(c, w, g)?) {
            return super::conv2d_tokens_via_map(self, x, like, w, b, g);
        }
        let (_, _, h, wd) = like.dims4()?;
        depthwise_conv2d_tokens(x, (h, wd), w, &bias_or_zeros(b, c, x)?, g.padding)
    }

    fn mul_param(&self, x: &Tensor, p: &Tensor) -> Result<Tensor> {
        let p = &*self.p(p);
        let _r = self.rec(x)?;
        let last = x.dims().last().copied().unwrap_or(1);
        let per_last = p.rank() <= x.rank() && p.dims().last() == Some(&last) && p.elem_count() == last;
        if self.kernels_for(x) && per_last {
            return super::scale::scale_last(x, p);
        }
        let ps = p.shape().clone();
        tape::op_saving([x, p], |[x, p]| x.broadcast_mul(&p), move |g, s| {
            Ok([Some(g.broadcast_mul(&s[1])?), Some(tape::sum_to(&g.broadcast_mul(&s[0])?, &ps)?)])
        })
    }

    fn star_relu(&self, x: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (scale, bias) = (&*self.p(scale), &*self.p(bias));
        let _r = self.rec(x)?;
        if self.kernels_for(x) {
            return super::star_relu::star_relu(x, scale, bias);
        }
        self.add_param(&self.mul_param(&self.squared_relu(x)?, scale)?, bias)
    }

    fn squared_relu(&self, x: &Tensor) -> Result<Tensor> {
        let _r = self.rec(x)?;
        let r = self.relu(x)?;
        tape::op_saving([&r], |[r]| r.sqr(), |g, s| Ok([Some((g * &s[0])?.affine(2.0, 0.0)?)]))
    }
}

/// How [`attend`] computes: our CPU attention kernels; candle's matmuls around our softmax
/// kernel (CUDA); or candle's ops throughout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttendPath {
    Kernels,
    OwnSoftmax,
    Portable,
}

/// softmax(q·kᵀ/√d + bias)·v on (N, heads, L, d) tensors, heads merged: (N, Lq, heads·d).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, path: AttendPath) -> Result<Tensor> {
    let (n, heads, lq, d) = q.dims4()?;
    if path == AttendPath::Kernels {
        let o = match bias {
            None => super::attention::attention(q, k, v)?,
            Some(b) => super::attention::attention_biased(q, k, v, b)?,
        };
        return tape::op([&o], |[o]| o.transpose(1, 2)?.reshape((n, lq, heads * d)), move |g| Ok([Some(g.reshape((n, lq, heads, d))?.transpose(1, 2)?)]));
    }
    let lk = k.dim(2)?;
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(b) = bias {
        let g = b.dim(0)?;
        if b.dims() != [g, heads, lq, lk] || n % g != 0 {
            candle_core::bail!("attention bias {:?} does not fit {n} sequences of {heads} heads, {lq}x{lk} scores", b.dims())
        }
        scores = scores.reshape((n / g, g, heads, lq, lk))?.broadcast_add(b)?.reshape((n, heads, lq, lk))?;
    }
    let p = if path == AttendPath::OwnSoftmax { super::softmax::softmax_last_dim(&scores)? } else { portable::softmax_last(&scores)? };
    p.matmul(v)?.transpose(1, 2)?.reshape((n, lq, heads * d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    fn var(shape: &[usize], seed: u64) -> Result<Var> {
        Var::from_tensor(&seeded(shape, seed, &Device::Cpu, DType::F64)?)
    }

    #[test]
    fn pointwise_conv_matches_conv2d_and_has_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        let (x, w, b) = (var(&[2, 3, 4, 5], 1)?, var(&[6, 3, 1, 1], 2)?, var(&[6], 3)?);
        let g = ConvGeom { stride: 1, padding: 0, groups: 1 };
        let ours = ops.conv2d(&x, &w, Some(&b), g)?;
        let refr = x.conv2d(&w, 0, 1, 1, 1)?.broadcast_add(&b.reshape((1, 6, 1, 1))?)?;
        let diff = (ours - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert!(diff < 1e-12);
        check_grads(&[&x, &w, &b], |v| ops.conv2d(v[0], v[1], Some(v[2]), g))
    }

    /// On the tape, `split`'s gradient is the pieces' gradients side by side (zeros for the
    /// unused middle piece; the first piece used twice): what candle's graph gives through
    /// one `narrow` per piece.
    #[test]
    fn split_on_the_tape_matches_narrows_in_candles_graph() -> Result<()> {
        let x = var(&[2, 3, 7], 30)?;
        let r = seeded(&[2, 3, 2], 31, &Device::Cpu, DType::F64)?;
        let grad = |ops: CandleOps| -> Result<Vec<f64>> {
            let p = ops.split(x.as_tensor(), 2, &[2, 3, 2])?;
            let y = ops.loss_input(&ops.add(&ops.add(&p[0], &p[2])?, &p[0])?)?;
            let store = ops.backward(&(y * &r)?.sum_all()?)?;
            let Some(g) = store.get(x.as_tensor()) else { candle_core::bail!("no gradient for x") };
            g.flatten_all()?.to_vec1()
        };
        let (taped, graph) = (grad(CandleOps::train(0).taped())?, grad(CandleOps::train(0))?);
        assert_eq!(taped, graph);
        let r: Vec<f64> = r.flatten_all()?.to_vec1()?;
        for (i, g) in taped.iter().enumerate() {
            let (row, col) = (i / 7, i % 7);
            let want = match col {
                0 | 1 => 2.0 * r[row * 2 + col],
                5 | 6 => r[row * 2 + col - 5],
                _ => 0.0,
            };
            assert_eq!(*g, want, "element {i}");
        }
        Ok(())
    }

    #[test]
    fn strided_conv_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        let (x, w, b) = (var(&[2, 3, 6, 5], 4)?, var(&[4, 3, 2, 2], 5)?, var(&[4], 6)?);
        check_grads(&[&x, &w, &b], |v| ops.conv2d(v[0], v[1], Some(v[2]), ConvGeom { stride: 2, padding: 0, groups: 1 }))?;
        let w3 = var(&[2, 3, 3, 3], 7)?;
        check_grads(&[&x, &w3], |v| ops.conv2d(v[0], v[1], None, ConvGeom { stride: 2, padding: 1, groups: 1 }))?;
        // 3x3 map, 2x2 stride-2 conv: ConvNeXt's last downsampling at odd sizes.
        let (x, w) = (var(&[2, 2, 3, 3], 19)?, var(&[3, 2, 2, 2], 20)?);
        check_grads(&[&x, &w], |v| ops.conv2d(v[0], v[1], None, ConvGeom { stride: 2, padding: 0, groups: 1 }))
    }

    #[test]
    fn layer_norms_have_correct_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        let (x, w, b) = (var(&[2, 5, 3, 2], 8)?, var(&[5], 9)?, var(&[5], 10)?);
        check_grads(&[&x, &w, &b], |v| ops.layer_norm_channels(v[0], v[1], v[2], 1e-6))?;
        let (x, w, b) = (var(&[3, 4, 7], 11)?, var(&[7], 12)?, var(&[7], 13)?);
        check_grads(&[&x, &w, &b], |v| ops.layer_norm(v[0], v[1], v[2], 1e-6))
    }

    #[test]
    fn activations_pooling_and_linear_have_correct_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        let x = var(&[2, 3, 4, 3], 14)?;
        check_grads(&[&x], |v| ops.gelu(v[0]))?;
        check_grads(&[&x], |v| ops.flatten(&ops.global_avg_pool(v[0])?))?;
        let g = var(&[3], 15)?;
        check_grads(&[&x, &g], |v| ops.scale_channels(v[0], v[1]))?;
        let (x2, w, b) = (var(&[4, 6], 16)?, var(&[5, 6], 17)?, var(&[5], 18)?);
        check_grads(&[&x2, &w, &b], |v| ops.linear(v[0], v[1], Some(v[2])))
    }

    #[test]
    fn attention_with_bias_and_separate_projections_have_correct_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        // 4 sequences = 2 images × 2 windows, 2 heads of 3, length 5; a per-window bias.
        let (qkv, bias) = (var(&[4, 5, 18], 30)?, var(&[2, 2, 5, 5], 31)?);
        check_grads(&[&qkv, &bias], |v| ops.attention(v[0], 2, 3, Some(v[1])))?;
        let (q, k, vv) = (var(&[2, 3, 4], 32)?, var(&[2, 5, 4], 33)?, var(&[2, 5, 4], 34)?);
        check_grads(&[&q, &k, &vv], |v| ops.sdpa(v[0], v[1], v[2], 2, 2, None))?;
        // The packed and separate forms agree.
        let (a, b) = (qkv.narrow(2, 0, 6)?, qkv.narrow(2, 6, 6)?);
        let c = qkv.narrow(2, 12, 6)?;
        let diff = (ops.attention(&qkv, 2, 3, Some(&bias))? - ops.sdpa(&a, &b, &c, 2, 3, Some(&bias))?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert!(diff < 1e-12);
        Ok(())
    }

    #[test]
    fn layout_ops_have_correct_gradients() -> Result<()> {
        let ops = CandleOps::eval();
        let x = var(&[2, 3, 4, 2], 35)?;
        // A Swin-like round trip: shift, pad, partition, then back.
        check_grads(&[&x], |v| {
            let y = ops.pad_end(&ops.roll(&ops.roll(v[0], -1, 1)?, 2, 2)?, &[0, 1, 0, 0])?;
            let y = ops.reshape(&ops.permute(&ops.reshape(&y, &[2, 2, 2, 2, 2])?, &[0, 1, 3, 2, 4, 5])?, &[4, 2])?;
            let y = ops.narrow(&ops.reshape(&y, &[4, 4, 2])?, 1, 1, 3)?;
            ops.concat(&[&y, &ops.squared_relu(&y)?], 2)
        })?;
        let (t, like, p) = (var(&[2, 6, 3], 36)?, var(&[2, 1, 2, 3], 37)?, var(&[3], 38)?);
        check_grads(&[&t, &p], |v| ops.tokens_to_map(&ops.mul_param(v[0], v[1])?, &like))?;
        let back = ops.to_tokens(&ops.tokens_to_map(&t, &like)?)?;
        assert_eq!((back - t.as_tensor())?.abs()?.sum_all()?.to_scalar::<f64>()?, 0.0);
        let r: Vec<f64> = ops.roll(&Tensor::arange(0f64, 5.0, &Device::Cpu)?, 2, 0)?.to_vec1()?;
        assert_eq!(r, vec![3.0, 4.0, 0.0, 1.0, 2.0]);
        Ok(())
    }

    #[test]
    fn batch_norm_gradients_and_running_statistics() -> Result<()> {
        let (x, w, b) = (var(&[3, 2, 4, 3], 21)?, var(&[2], 22)?, var(&[2], 23)?);
        let rm = Tensor::new(&[0.1f64, -0.2], &Device::Cpu)?;
        let rv = Tensor::new(&[1.5f64, 0.7], &Device::Cpu)?;
        let ops = CandleOps::train(0);
        check_grads(&[&x, &w, &b], |v| ops.batch_norm(v[0], v[1], v[2], &rm, &rv, 1e-5, 0.1))?;
        let eval = CandleOps::eval();
        check_grads(&[&x, &w, &b], |v| eval.batch_norm(v[0], v[1], v[2], &rm, &rv, 1e-5, 0.1))?;
        // Running statistics as PyTorch: (1-m)·old + m·batch, unbiased variance.
        let ops = CandleOps::train(0);
        ops.batch_norm(&x, &w, &b, &rm, &rv, 1e-5, 0.1)?;
        let updates = ops.take_buffer_updates();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].0, rm.id());
        let x0: Vec<f64> = x.as_tensor().narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        let m = x0.iter().sum::<f64>() / 36.0;
        let v = x0.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 35.0;
        let got_m: Vec<f64> = updates[0].1.to_vec1()?;
        let got_v: Vec<f64> = updates[1].1.to_vec1()?;
        assert!((got_m[0] - (0.9 * 0.1 + 0.1 * m)).abs() < 1e-12);
        assert!((got_v[0] - (0.9 * 1.5 + 0.1 * v)).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn drop_path_is_identity_in_eval_and_zeroes_whole_samples_in_train() -> Result<()> {
        let x = Tensor::ones((64, 2, 2, 2), DType::F32, &Device::Cpu)?;
        let y = CandleOps::eval().drop_path(&x, 0.5)?;
        assert_eq!(y.sum_all()?.to_scalar::<f32>()?, 512.0);
        let y = CandleOps::train(3).drop_path(&x, 0.5)?;
        let per_sample: Vec<f32> = y.flatten_from(1)?.sum(1)?.to_vec1()?;
        assert!(per_sample.iter().all(|&s| s == 0.0 || (s - 16.0).abs() < 1e-5));
        let dropped = per_sample.iter().filter(|&&s| s == 0.0).count();
        assert!((16..=48).contains(&dropped), "dropped {dropped} of 64");
        Ok(())
    }

    #[test]
    fn inference_gives_eval_outputs_without_a_graph_through_the_parameters() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded(&[2, 4, 5, 5], 1, &dev, DType::F32)?)?;
        let w = Var::from_tensor(&seeded(&[3, 4, 3, 3], 2, &dev, DType::F32)?)?;
        let (ln_w, ln_b) = (Var::from_tensor(&seeded(&[3], 3, &dev, DType::F32)?)?, Var::from_tensor(&seeded(&[3], 4, &dev, DType::F32)?)?);
        let f = |o: &CandleOps| -> Result<Tensor> {
            let y = o.conv2d(x.as_tensor(), w.as_tensor(), None, ConvGeom { stride: 1, padding: 1, groups: 1 })?;
            o.layer_norm_channels(&y, ln_w.as_tensor(), ln_b.as_tensor(), 1e-6)
        };
        let (a, b) = (f(&CandleOps::eval())?, f(&CandleOps::inference())?);
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        let g = b.sqr()?.sum_all()?.backward()?;
        assert!(g.get(w.as_tensor()).is_none() && g.get(ln_w.as_tensor()).is_none(), "no gradient reaches the parameters");
        assert!(g.get(x.as_tensor()).is_some(), "the input's gradient still flows");
        Ok(())
    }

}
