//! A gradient tape for training on the CPU kernels.
//!
//! candle's `backward` gives every tensor of the graph a zero-filled gradient buffer and
//! then adds each incoming gradient into a newly allocated one: three memory passes per
//! tensor of the step, 12–16 % of a transformer's training step (docs/performance.md), and
//! the graph's ops are private to candle. Under a tape, [`CandleOps`] computes outside
//! candle's graph and records each op's backward here instead: a gradient that reaches a
//! tensor once is moved, not copied; only branch points (residual connections) add.
//!
//! Ops record themselves through the helpers below, which run plain candle (its graph
//! recording as usual) when no tape is active on the thread: the same code serves both.
//! Parameters and tensors computed from them with candle ops (Swin's bias table, resampled
//! position embeddings) enter the tape as externals; [`Tape::backward`] hands their
//! gradients to candle's own backward at the end.
//!
//! [`CandleOps`]: super::CandleOps

use candle_core::backprop::GradStore;
use candle_core::{CustomOp1, CustomOp2, CustomOp3, Result, Shape, Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::profile;

/// Gradients of a node's outputs (None where none flowed) → gradients of its inputs.
type Backward = Box<dyn FnOnce(&[Option<Tensor>]) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<(TensorId, Shape)>,
    outputs: Vec<TensorId>,
    backward: Backward,
}

#[derive(Default)]
pub struct Tape {
    nodes: RefCell<Vec<Node>>,
    produced: RefCell<HashSet<TensorId>>,
    externals: RefCell<HashMap<TensorId, Tensor>>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Rc<Tape>>> = const { RefCell::new(None) };
}

/// Makes `tape` the thread's recording tape until dropped (then restores the previous one);
/// times the op under `ET_PROFILE`.
pub(crate) struct Recording(Option<Rc<Tape>>, #[allow(dead_code)] profile::Span);

impl Recording {
    pub(crate) fn start(tape: Option<&Rc<Tape>>, span: profile::Span) -> Recording {
        Recording(ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), tape.cloned())), span)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let prev = self.0.take();
        ACTIVE.with(|a| *a.borrow_mut() = prev);
    }
}

fn active() -> Option<Rc<Tape>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// Whether ops on this thread record their backward (training under a tape).
pub(crate) fn recording() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

impl Tape {
    fn record(&self, inputs: &[&Tensor], outputs: &[&Tensor], backward: Backward) {
        let produced = self.produced.borrow();
        let mut ext = self.externals.borrow_mut();
        for t in inputs {
            if !produced.contains(&t.id()) {
                ext.entry(t.id()).or_insert_with(|| (*t).clone());
            }
        }
        drop(produced);
        self.produced.borrow_mut().extend(outputs.iter().map(|t| t.id()));
        let inputs = inputs.iter().map(|t| (t.id(), t.shape().clone())).collect();
        self.nodes.borrow_mut().push(Node { inputs, outputs: outputs.iter().map(|t| t.id()).collect(), backward });
    }

    /// Adds to `store` the gradients of every parameter given `grad`, the gradient of the
    /// recorded tensor `out`. Consumes the recorded nodes (each one's saved tensors are freed
    /// as it is processed).
    pub fn backward(&self, out: &Tensor, grad: Tensor, store: &mut GradStore) -> Result<()> {
        profile::report_forward();
        let mut grads: HashMap<TensorId, Tensor> = HashMap::from([(out.id(), grad)]);
        let nodes = self.nodes.take();
        for node in nodes.into_iter().rev() {
            let gs: Vec<Option<Tensor>> = node.outputs.iter().map(|id| grads.remove(id)).collect();
            if gs.iter().all(Option::is_none) {
                continue;
            }
            let n_in = node.inputs.len();
            let backward = node.backward;
            let ins = profile::timed(|| format!("{:?}", node.inputs.iter().map(|(_, s)| s.dims()).collect::<Vec<_>>()), || backward(&gs))?;
            if ins.len() != n_in {
                candle_core::bail!("tape: a backward returned {} gradients for {n_in} inputs", ins.len())
            }
            for ((id, shape), g) in node.inputs.into_iter().zip(ins) {
                let Some(g) = g else { continue };
                // Kernels see flattened or contiguous copies of their inputs: same elements, same order.
                let g = if g.shape() != &shape { g.reshape(shape)? } else { g };
                match grads.entry(id) {
                    Entry::Occupied(mut e) => {
                        let sum = super::add::sum(e.get(), &g)?;
                        e.insert(sum);
                    }
                    Entry::Vacant(e) => {
                        e.insert(g);
                    }
                }
            }
        }
        self.produced.borrow_mut().clear();
        let externals = self.externals.take();
        let mut through_candle: Option<Tensor> = None;
        for (id, g) in grads {
            let Some(t) = externals.get(&id) else { continue };
            if t.is_variable() {
                let g = match store.get(t) {
                    Some(have) => (have + g)?,
                    None => g,
                };
                store.insert(t, g);
            } else if t.track_op() {
                // Σ t·g has gradient g with respect to t: candle carries it on to the parameters.
                let term = (t * g)?.sum_all()?;
                through_candle = Some(match through_candle {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
        }
        if let Some(s) = through_candle {
            store.extend(profile::timed(|| "parameters' candle graphs".into(), || s.backward())?)?;
        }
        profile::report();
        Ok(())
    }
}

/// Runs `f` on `inputs` (detached under a tape) and records `backward`, which maps the
/// output's gradient to one per input. Without a tape: `f` in plain candle.
pub(crate) fn op<const N: usize>(inputs: [&Tensor; N], f: impl FnOnce([Tensor; N]) -> Result<Tensor>, backward: impl FnOnce(&Tensor) -> Result<[Option<Tensor>; N]> + 'static) -> Result<Tensor> {
    record_op(inputs, f, false, move |g, _| backward(g))
}

/// [`op`] for a backward that needs the inputs' values (kept until it runs).
pub(crate) fn op_saving<const N: usize>(inputs: [&Tensor; N], f: impl FnOnce([Tensor; N]) -> Result<Tensor>, backward: impl FnOnce(&Tensor, &[Tensor]) -> Result<[Option<Tensor>; N]> + 'static) -> Result<Tensor> {
    record_op(inputs, f, true, backward)
}

/// [`op`] for a forward that computes, besides its output, something its backward reuses
/// (attention's probabilities): `f` returns both, and the backward receives the second.
pub(crate) fn op_keeping<const N: usize, K: 'static>(inputs: [&Tensor; N], f: impl FnOnce([Tensor; N]) -> Result<(Tensor, K)>, backward: impl FnOnce(&Tensor, K) -> Result<[Option<Tensor>; N]> + 'static) -> Result<Tensor> {
    let Some(tape) = active() else { return Ok(f(inputs.map(Tensor::clone))?.0) };
    let (y, kept) = f(inputs.map(Tensor::detach))?;
    tape.record(&inputs, &[&y], Box::new(move |g| Ok(match &g[0] {
        Some(g) => backward(g, kept)?.to_vec(),
        None => vec![None; N],
    })));
    Ok(y)
}

fn record_op<const N: usize>(inputs: [&Tensor; N], f: impl FnOnce([Tensor; N]) -> Result<Tensor>, save: bool, backward: impl FnOnce(&Tensor, &[Tensor]) -> Result<[Option<Tensor>; N]> + 'static) -> Result<Tensor> {
    let Some(tape) = active() else { return f(inputs.map(Tensor::clone)) };
    let detached = inputs.map(Tensor::detach);
    let saved = if save { detached.to_vec() } else { Vec::new() };
    let y = f(detached)?;
    if inputs.iter().any(|t| t.id() == y.id()) {
        return Ok(y);
    }
    tape.record(&inputs, &[&y], Box::new(move |g| Ok(match &g[0] {
        Some(g) => backward(g, &saved)?.to_vec(),
        None => vec![None; N],
    })));
    Ok(y)
}

/// Reshape (a view when contiguous).
pub(crate) fn reshape<S: Into<Shape>>(x: &Tensor, shape: S) -> Result<Tensor> {
    let s = x.shape().clone();
    op([x], |[x]| x.reshape(shape), move |g| Ok([Some(g.reshape(s)?)]))
}

/// Concatenation along `dim`; the backward slices the gradient back.
pub(crate) fn cat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let Some(tape) = active() else { return Tensor::cat(xs, dim) };
    let detached: Vec<Tensor> = xs.iter().map(|t| t.detach()).collect();
    let y = Tensor::cat(&detached, dim)?;
    let sizes = xs.iter().map(|t| t.dim(dim)).collect::<Result<Vec<_>>>()?;
    tape.record(xs, &[&y], Box::new(move |g| {
        let Some(g) = &g[0] else { return Ok(vec![None; sizes.len()]) };
        let mut start = 0;
        sizes.iter().map(|&len| {
            let part = g.narrow(dim, start, len)?;
            start += len;
            Ok(Some(part))
        }).collect()
    }));
    Ok(y)
}

/// Consecutive pieces along `dim` (`lens` add up to its size), as views; the backward
/// concatenates the pieces' gradients (zeros for a piece that got none) into one buffer,
/// where a `narrow` per piece would pad each gradient to the whole size and then add them.
pub(crate) fn split(x: &Tensor, dim: usize, lens: &[usize]) -> Result<Vec<Tensor>> {
    let pieces = |x: &Tensor| -> Result<Vec<Tensor>> {
        let mut start = 0;
        lens.iter().map(|&len| {
            start += len;
            x.narrow(dim, start - len, len)
        }).collect()
    };
    let Some(tape) = active() else { return pieces(x) };
    if lens.len() < 2 {
        return Ok(vec![x.clone()]);
    }
    let ys = pieces(&x.detach())?;
    let shapes: Vec<Shape> = ys.iter().map(|y| y.shape().clone()).collect();
    let (dtype, device) = (x.dtype(), x.device().clone());
    tape.record(&[x], &ys.iter().collect::<Vec<_>>(), Box::new(move |g| {
        let parts = g.iter().zip(&shapes).map(|(g, s)| match g {
            Some(g) => Ok(g.clone()),
            None => Tensor::zeros(s, dtype, &device),
        }).collect::<Result<Vec<_>>>()?;
        Ok(vec![Some(Tensor::cat(&parts, dim)?)])
    }));
    Ok(ys)
}

/// A candle composition with candle's own backward, for the rare paths without a kernel:
/// under a tape it runs on fresh leaf variables, and the backward asks candle for d(Σ y·g).
pub(crate) fn composite(inputs: &[&Tensor], f: impl FnOnce(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let Some(tape) = active() else { return f(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>()) };
    let leaves = inputs.iter().map(|t| Var::from_tensor(&t.detach()).map(Var::into_inner)).collect::<Result<Vec<_>>>()?;
    let y = f(&leaves)?;
    let out = y.detach();
    tape.record(inputs, &[&out], Box::new(move |g| {
        let Some(g) = &g[0] else { return Ok(vec![None; leaves.len()]) };
        let grads = (&y * g)?.sum_all()?.backward()?;
        Ok(leaves.iter().map(|l| grads.get(l).cloned()).collect())
    }));
    Ok(out)
}

/// `args` are what the kernel takes (contiguous or flattened copies of `inputs`, element for
/// element); gradients flow to `inputs`.
pub(crate) fn apply1<C: CustomOp1 + Send + Sync + 'static>(input: &Tensor, arg: &Tensor, c: C) -> Result<Tensor> {
    let Some(tape) = active() else { return arg.apply_op1(c) };
    let a = arg.detach();
    let y = a.apply_op1_no_bwd(&c)?;
    let res = y.clone();
    tape.record(&[input], &[&y], Box::new(move |g| Ok(vec![match &g[0] {
        Some(g) => c.bwd(&a, &res, g)?,
        None => None,
    }])));
    Ok(y)
}

pub(crate) fn apply2<C: CustomOp2 + Send + Sync + 'static>(inputs: [&Tensor; 2], args: [&Tensor; 2], c: C) -> Result<Tensor> {
    let Some(tape) = active() else { return args[0].apply_op2(args[1], c) };
    let [a, b] = args.map(Tensor::detach);
    let y = a.apply_op2_no_bwd(&b, &c)?;
    let res = y.clone();
    tape.record(&inputs, &[&y], Box::new(move |g| Ok(match &g[0] {
        Some(g) => {
            let (ga, gb) = c.bwd(&a, &b, &res, g)?;
            vec![ga, gb]
        }
        None => vec![None, None],
    })));
    Ok(y)
}

pub(crate) fn apply3<C: CustomOp3 + Send + Sync + 'static>(inputs: [&Tensor; 3], args: [&Tensor; 3], c: C) -> Result<Tensor> {
    let Some(tape) = active() else { return args[0].apply_op3(args[1], args[2], c) };
    let [a, b, d] = args.map(Tensor::detach);
    let y = a.apply_op3_no_bwd(&b, &d, &c)?;
    let res = y.clone();
    tape.record(&inputs, &[&y], Box::new(move |g| Ok(match &g[0] {
        Some(g) => {
            let (ga, gb, gd) = c.bwd(&a, &b, &d, &res, g)?;
            vec![ga, gb, gd]
        }
        None => vec![None, None, None],
    })));
    Ok(y)
}

/// Sums `g` over the dimensions a broadcast to its shape added or stretched from `shape`.
pub(crate) fn sum_to(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    let lead = g.rank() - shape.rank();
    let mut s = g.clone();
    for _ in 0..lead {
        s = s.sum(0)?;
    }
    for (d, &n) in shape.dims().iter().enumerate() {
        if n == 1 && s.dim(d)? != 1 {
            s = s.sum_keepdim(d)?;
        }
    }
    Ok(s)
}
