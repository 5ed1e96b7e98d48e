//! Helpers for gradient tests: deterministic inputs and an f64 finite-difference check.

use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic pseudo-random values in [-1, 1) (a tiny LCG: tests need no RNG crate).
pub fn seeded(shape: &[usize], seed: u64, dev: &Device, dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
}

/// Checks d(sum(f(vars) * r))/d(var) against central differences for every element of every
/// var (inputs are small). `r` is a fixed random projection so that every output element
/// matters with a different weight. Vars must be f64.
pub fn check_grads<F>(vars: &[&Var], f: F) -> Result<()>
where
    F: Fn(&[&Tensor]) -> Result<Tensor>,
{
    let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let out = f(&tensors)?;
    let r = seeded(out.dims(), 99, out.device(), DType::F64)?;
    let loss = |t: &[&Tensor]| -> Result<f64> { (f(t)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let grads = (out * &r)?.sum_all()?.backward()?;
    let eps = 1e-6;
    for (i, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => candle_core::bail!("var {i} received no gradient"),
        };
        let base: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        let shape = var.dims().to_vec();
        for j in 0..base.len() {
            let mut plus = base.clone();
            plus[j] += eps;
            let mut minus = base.clone();
            minus[j] -= eps;
            let tp = Tensor::from_vec(plus, shape.as_slice(), var.device())?;
            let tm = Tensor::from_vec(minus, shape.as_slice(), var.device())?;
            let mut args_p = tensors.clone();
            args_p[i] = &tp;
            let lp = loss(&args_p)?;
            let mut args_m = tensors.clone();
            args_m[i] = &tm;
            let lm = loss(&args_m)?;
            let numeric = (lp - lm) / (2.0 * eps);
            let err = (numeric - analytic[j]).abs() / (1.0 + numeric.abs());
            if err > 1e-6 {
                candle_core::bail!("var {i} element {j}: analytic {} numeric {numeric}", analytic[j]);
            }
        }
    }
    Ok(())
}

/// Backpropagates sum(y²) and asserts that every parameter in `params` (name, variable)
/// gets a non-zero, finite gradient: some of candle's own ops silently detach their output
/// (docs/kernels.md), and this catches the whole class.
pub fn assert_every_parameter_learns(params: &[(String, Var)], y: &Tensor) -> Result<()> {
    let grads = y.sqr()?.sum_all()?.backward()?;
    for (name, var) in params {
        let Some(g) = grads.get(var.as_tensor()) else { candle_core::bail!("{name} received no gradient") };
        let norm = g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !(norm > 0.0 && norm.is_finite()) {
            candle_core::bail!("{name}: gradient norm {norm}")
        }
    }
    Ok(())
}

/// Runs `forward` in training mode (drop-path seed `seed`) on candle's graph and on a
/// [`CandleOps::taped`] tape, backpropagates sum(y²) both ways and asserts the same outputs
/// and, for every parameter in `params`, the same gradient (to 1e-5 of its largest element).
///
/// [`CandleOps::taped`]: crate::CandleOps::taped
pub fn assert_tape_matches_graph(params: &[(String, Var)], seed: u64, forward: impl Fn(&crate::CandleOps) -> Result<Tensor>) -> Result<()> {
    use crate::CandleOps;
    let run = |ops: CandleOps| -> Result<(Vec<f32>, candle_core::backprop::GradStore)> {
        let y = forward(&ops)?;
        let grads = ops.backward(&ops.loss_input(&y)?.sqr()?.sum_all()?)?;
        Ok((y.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?, grads))
    };
    let (y_graph, graph) = run(CandleOps::train(seed))?;
    let (y_tape, tape) = run(CandleOps::train(seed).taped())?;
    if y_graph != y_tape {
        candle_core::bail!("the taped forward differs: {y_graph:?} vs {y_tape:?}")
    }
    for (name, var) in params {
        let flat = |g: Option<&Tensor>| -> Result<Vec<f32>> {
            match g {
                Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1(),
                None => candle_core::bail!("{name} received no gradient"),
            }
        };
        let (a, b) = (flat(graph.get(var.as_tensor()))?, flat(tape.get(var.as_tensor()))?);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        if worst > 1e-5 * scale || a.len() != b.len() {
            candle_core::bail!("{name}: taped gradient differs by {worst} (largest element {scale})")
        }
    }
    Ok(())
}
