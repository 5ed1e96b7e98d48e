//! The update rules against hand computations, and the device path against the host path.

use super::*;

fn grads(opt: &Optimizer, loss: &Tensor) -> Result<Grads> {
    let (g, missing) = opt.accumulate(None, &loss.backward()?, 1.0)?;
    assert!(missing.is_empty());
    Ok(g)
}

#[test]
fn no_decay_names_as_timm() {
    assert!(decays("layers.0.blocks.0.attn.qkv.weight", 2));
    assert!(!decays("layers.0.blocks.0.attn.relative_position_bias_table", 2));
    assert!(!decays("pos_embed", 3));
    assert!(!decays("stages.0.blocks.0.mlp.act.scale", 1));
}

#[test]
fn adamw_matches_the_reference_update_and_groups() -> Result<()> {
    let w = Var::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu)?;
    let b = Var::new(&[0.1f32, 0.2], &Device::Cpu)?;
    let mut opt = Optimizer::new(vec![("fc.weight".into(), w.clone()), ("fc.bias".into(), b.clone())], OptimConfig::default(), &|_| 1.0)?;
    assert!(opt.params[0].decays);
    assert!(!opt.params[1].decays);
    // loss = sum(w^2) + sum(b): grad w = 2w, grad b = 1.
    for _ in 0..2 {
        let loss = (w.as_tensor().sqr()?.sum_all()? + b.as_tensor().sum_all()?)?;
        let g = grads(&opt, &loss)?;
        opt.step(&g, 0.1, 0.05)?;
    }
    // Reference (PyTorch AdamW semantics) computed by hand in f64.
    let reference = |mut x: f64, wd: f64, grad: &dyn Fn(f64) -> f64| {
        let (mut m, mut v) = (0.0, 0.0);
        for t in 1..=2 {
            let g = grad(x);
            x *= 1.0 - 0.1 * wd;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            x -= 0.1 * mh / (vh.sqrt() + 1e-8);
        }
        x
    };
    let got: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
    for (g, x0) in got.iter().zip([1.0, -2.0, 0.5, 3.0]) {
        let want = reference(x0, 0.05, &|x| 2.0 * x);
        assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
    }
    let got: Vec<f32> = b.as_tensor().to_vec1()?;
    assert!((got[0] as f64 - reference(0.1, 0.0, &|_| 1.0)).abs() < 1e-5);
    Ok(())
}

#[test]
fn lamb_matches_the_reference_update() -> Result<()> {
    let w0 = [[1.0f32, -2.0], [0.5, 3.0]];
    let w = Var::new(&w0, &Device::Cpu)?;
    let cfg = OptimConfig { kind: OptimizerKind::Lamb, ..Default::default() };
    let mut opt = Optimizer::new(vec![("fc.weight".into(), w.clone())], cfg, &|_| 1.0)?;
    let (lr, wd) = (0.01, 0.1);
    for _ in 0..2 {
        let g = grads(&opt, &w.as_tensor().sqr()?.sum_all()?)?;
        opt.step(&g, lr, wd)?;
    }
    // timm Lamb by hand in f64 (grad = 2w, global-norm pre-division, trust ratio).
    let mut x: Vec<f64> = w0.iter().flatten().map(|&v| v as f64).collect();
    let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
    for t in 1..=2 {
        let g: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
        let gn = g.iter().map(|g| g * g).sum::<f64>().sqrt().max(1.0);
        let mut u = [0.0; 4];
        for i in 0..4 {
            let gi = g[i] / gn;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            u[i] = (m[i] / (1.0 - 0.9f64.powi(t))) / ((v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8) + wd * x[i];
        }
        let trust = x.iter().map(|a| a * a).sum::<f64>().sqrt() / u.iter().map(|a| a * a).sum::<f64>().sqrt();
        for i in 0..4 {
            x[i] -= lr * trust * u[i];
        }
    }
    let got: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
    for (g, want) in got.iter().zip(&x) {
        assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
    }
    Ok(())
}

/// The gradients of `g` as host vectors, wherever they live.
fn host_values(g: &mut Grads) -> Result<Vec<Vec<f32>>> {
    g.with_host(|h| Ok::<_, candle_core::Error>(h.to_vec()))
}

#[test]
fn clipping_accumulation_and_lr_scale() -> Result<()> {
    for residence in [Residence::Host, Residence::Device] {
        let w = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
        let mut opt = Optimizer::new(vec![("a".into(), w.clone())], OptimConfig::default(), &|n| if n == "a" { 0.5 } else { 1.0 })?;
        opt.set_residence(residence)?;
        assert_eq!(opt.params[0].lr_scale, 0.5);
        // Two micro-batches of loss/2 accumulate to the full-batch gradient 2w = (6, 8).
        let loss = w.as_tensor().sqr()?.sum_all()?;
        let (g, _) = opt.accumulate(None, &loss.backward()?, 0.5)?;
        let (mut g, _) = opt.accumulate(Some(g), &loss.backward()?, 0.5)?;
        assert_eq!(matches!(g, Grads::Device(_)), residence == Residence::Device);
        assert_eq!(host_values(&mut g)?[0], vec![6.0, 8.0]);
        assert!((g.global_norm()?.value()? - 10.0).abs() < 1e-9);
        assert!((g.clip_norm(20.0)?.value()? - 10.0).abs() < 1e-9);
        assert_eq!(host_values(&mut g)?[0], vec![6.0, 8.0], "under the limit: unchanged");
        g.clip_norm(5.0)?;
        assert!((g.global_norm()?.value()? - 5.0).abs() < 1e-5);
    }
    Ok(())
}

#[test]
fn state_round_trips() -> Result<()> {
    let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    let mut a = Optimizer::new(vec![("w".into(), w.clone())], OptimConfig::default(), &|_| 1.0)?;
    let g = grads(&a, &w.as_tensor().sqr()?.sum_all()?)?;
    a.step(&g, 0.1, 0.0)?;
    let mut b = Optimizer::new(vec![("w".into(), w.clone())], OptimConfig::default(), &|_| 1.0)?;
    b.load_state(&a.state_tensors()?, a.step)?;
    assert_eq!((a.params[0].m.to_vec()?, a.params[0].v.to_vec()?, a.step), (b.params[0].m.to_vec()?, b.params[0].v.to_vec()?, b.step));
    assert!(b.load_state(&HashMap::new(), 1).is_err());
    Ok(())
}

/// Parameters of several kinds: decaying weights of ranks 2 and 4, a bias and a position
/// embedding without decay; three learning-rate scales.
const SHAPES: [(&str, &[usize]); 4] = [("blocks.0.fc.weight", &[5, 7]), ("blocks.0.fc.bias", &[5]), ("pos_embed", &[1, 3, 4]), ("stem.weight", &[4, 2, 3, 3])];

fn lr_scale(name: &str) -> f64 {
    if name.starts_with("blocks") {
        0.5
    } else if name == "pos_embed" {
        0.8
    } else {
        1.0
    }
}

/// Micro-batch `j` of step `t`: Σ over parameters of Σ tanh(a·p + b)·r, gradients that
/// depend on the weights and differ per micro-batch, growing with t (so that clipping
/// starts part-way).
fn loss(vars: &[Var], t: u64, j: u64) -> Result<Tensor> {
    let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for (i, v) in vars.iter().enumerate() {
        let r = et_kernels::testing::seeded(v.dims(), 100 * t + 10 * j + i as u64, &Device::Cpu, DType::F32)?;
        let y = v.as_tensor().affine(1.0 + 0.3 * j as f64, 0.1 * j as f64)?.tanh()?;
        total = (total + (y * r)?.sum_all()?.affine(0.6 + 0.8 * t as f64, 0.0)?)?;
    }
    Ok(total)
}

/// What a run left after each step: weights, then both moments, of every parameter; the
/// clipped norm.
type Trace = Vec<(Vec<Vec<f32>>, f64)>;

/// `steps` optimiser steps of 3 micro-batches each, clipped to norm 6, with the state in
/// `residence`; the schedule changes lr and weight decay every step.
fn run(kind: OptimizerKind, residence: Residence, steps: u64) -> Result<(Trace, Optimizer)> {
    let vars: Vec<(String, Var)> = SHAPES.iter().enumerate().map(|(i, (n, s))| Ok((n.to_string(), Var::from_tensor(&et_kernels::testing::seeded(s, i as u64, &Device::Cpu, DType::F32)?)?))).collect::<Result<_>>()?;
    let mut opt = Optimizer::new(vars.clone(), OptimConfig { kind, ..Default::default() }, &lr_scale)?;
    opt.set_residence(residence)?;
    let vs: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut trace = Vec::new();
    for t in 0..steps {
        let mut acc = None;
        for j in 0..3 {
            let (g, missing) = opt.accumulate(acc.take(), &loss(&vs, t, j)?.backward()?, 1.0 / 3.0)?;
            assert!(missing.is_empty());
            acc = Some(g);
        }
        let Some(mut g) = acc else { unreachable!() };
        let norm = g.clip_norm(6.0)?.value()?;
        opt.step(&g, 0.05 / (1.0 + t as f64), 0.05 + 0.01 * t as f64)?;
        let mut state: Vec<Vec<f32>> = vs.iter().map(|v| v.as_tensor().flatten_all()?.to_vec1()).collect::<Result<_>>()?;
        for p in &opt.params {
            state.push(p.m.to_vec()?);
            state.push(p.v.to_vec()?);
        }
        trace.push((state, norm));
    }
    Ok((trace, opt))
}

/// The largest difference between two traces in units of f32 rounding: |a − b| / (ε·|a|),
/// with values below 1e-30 compared absolutely.
fn ulps(a: &Trace, b: &Trace) -> f64 {
    let mut worst = 0f64;
    for ((sa, _), (sb, _)) in a.iter().zip(b) {
        for (x, y) in sa.iter().flatten().zip(sb.iter().flatten()) {
            let d = (*x as f64 - *y as f64).abs() / (f32::EPSILON as f64 * (x.abs() as f64).max(1e-30));
            worst = worst.max(d);
        }
    }
    worst
}

/// The device path (candle ops, forced onto CPU tensors) against the in-place host
/// optimiser over six steps of accumulation, clipping, weight-decay groups and lr scales.
/// AdamW is bit-identical: both evaluate the same f32 operations in the same order. LAMB
/// and the clipping factor depend on f64 norms whose sums run in another order on the
/// device; that changes an f64 by ~1e-16 relative, and the f32 numbers derived from it
/// (clip factor, gradient divisor, lr·trust) by at most one rounding, so the weights and
/// moments stay within 4 f32 ulps.
#[test]
fn device_path_equals_the_host_optimizer() -> Result<()> {
    for kind in [OptimizerKind::AdamW, OptimizerKind::Lamb] {
        let (host, _) = run(kind, Residence::Host, 6)?;
        let (device, _) = run(kind, Residence::Device, 6)?;
        let clipped = host.iter().filter(|(_, n)| *n > 6.0).count();
        assert!(clipped > 0 && clipped < host.len(), "{kind}: {clipped} of {} steps clipped; the test needs both", host.len());
        for ((_, a), (_, b)) in host.iter().zip(&device) {
            assert!((a - b).abs() <= 1e-12 * a, "{kind}: norms {a} vs {b}");
        }
        let d = ulps(&host, &device);
        eprintln!("{kind}: device path within {d:.2} f32 ulps of the host path");
        match kind {
            OptimizerKind::AdamW => assert_eq!(d, 0.0, "AdamW differs"),
            OptimizerKind::Lamb => assert!(d <= 4.0, "LAMB differs by {d} ulps"),
        }
    }
    Ok(())
}

/// A checkpoint's moments are the same tensors (names, flat f32 on the CPU) from either
/// residence, and moving a state between residences keeps every value (so a run resumes on
/// another device as it would have continued).
#[test]
fn optimizer_state_moves_between_residences() -> Result<()> {
    for kind in [OptimizerKind::AdamW, OptimizerKind::Lamb] {
        let (_, host) = run(kind, Residence::Host, 2)?;
        let (_, device) = run(kind, Residence::Device, 2)?;
        let (a, b) = (host.state_tensors()?, device.state_tensors()?);
        let mut keys: Vec<_> = a.keys().collect();
        keys.sort();
        let mut keys_b: Vec<_> = b.keys().collect();
        keys_b.sort();
        assert_eq!(keys, keys_b);
        for k in keys {
            let (x, y) = (&a[k], &b[k]);
            assert_eq!((x.dims(), x.dtype(), x.device().is_cpu()), (y.dims(), y.dtype(), y.device().is_cpu()), "{k}");
            assert_eq!(x.rank(), 1, "{k}: flat");
        }
        // Host state loaded into a device optimiser (and back) continues identically.
        let mut moved = Optimizer::new(host.params.iter().map(|p| (p.name.clone(), p.var.clone())).collect(), OptimConfig { kind, ..Default::default() }, &lr_scale)?;
        moved.set_residence(Residence::Device)?;
        moved.load_state(&a, host.step)?;
        assert_eq!(moved.step, 2);
        for (p, q) in host.params.iter().zip(&moved.params) {
            assert!(matches!(q.m, Moment::Device(_)));
            assert_eq!((p.m.to_vec()?, p.v.to_vec()?), (q.m.to_vec()?, q.v.to_vec()?));
        }
        moved.set_residence(Residence::Host)?;
        for (p, q) in host.params.iter().zip(&moved.params) {
            assert_eq!((p.m.to_vec()?, p.v.to_vec()?), (q.m.to_vec()?, q.v.to_vec()?));
        }
    }
    Ok(())
}

