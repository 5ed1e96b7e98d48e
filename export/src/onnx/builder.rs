//! `OnnxOps`: the exporter's implementation of the models' [`Ops`] trait. Running a
//! model's ordinary `forward` with it records ONNX nodes instead of computing, so the
//! exported graph is the trained model's own definition, never a re-description.

use super::proto::*;
use candle_core::{DType, Result, Tensor, TensorId};
use et_ops::{ConvGeom, Ops};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub const OPSET: i64 = 17;
/// IR version 8 is what opset 17 shipped with; every runtime that knows opset 17 reads it.
pub const IR_VERSION: i64 = 8;

#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    by_tensor: HashMap<(TensorId, Vec<usize>), String>,
    used_names: HashMap<String, usize>,
    counter: usize,
}

pub struct OnnxOps {
    graph: RefCell<Graph>,
    /// timm names of the parameters, so the ONNX initialisers keep them.
    param_names: HashMap<TensorId, String>,
    /// Name and (H, W) of the graph input, for models whose structure depends on the size.
    input: (String, (usize, usize)),
}

/// An activation in the graph being recorded: the name of an ONNX value.
pub type Value = Rc<str>;

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(v), r#type: Some(attribute_type::INT), ..Default::default() }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), ints: v.to_vec(), r#type: Some(attribute_type::INTS), ..Default::default() }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), f: Some(v), r#type: Some(attribute_type::FLOAT), ..Default::default() }
}

impl OnnxOps {
    pub fn new(param_names: HashMap<TensorId, String>, input: &str, input_hw: (usize, usize)) -> Self {
        OnnxOps { graph: RefCell::new(Graph::default()), param_names, input: (input.to_string(), input_hw) }
    }

    /// Nodes and initialisers recorded so far.
    pub fn finish(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        let g = self.graph.into_inner();
        (g.nodes, g.initializers)
    }

    fn fresh(&self, op: &str) -> String {
        let mut g = self.graph.borrow_mut();
        g.counter += 1;
        format!("/{op}_{}", g.counter)
    }

    fn node(&self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> Value {
        let out = self.fresh(op);
        self.graph.borrow_mut().nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(format!("{out}_node")),
            op_type: Some(op.into()),
            attribute: attrs,
            domain: None,
        });
        out.into()
    }

    /// A Conv node with weight `w` stored as `shape` (its own, or a 1×1 view of a linear's).
    fn conv(&self, x: &Value, w: &Tensor, shape: &[usize], b: Option<&Tensor>, g: ConvGeom) -> Result<Value> {
        let &[_, _, kh, kw] = shape else { candle_core::bail!("conv weight of shape {shape:?}: 4 dimensions expected") };
        let wn = self.param(w, shape)?;
        let mut inputs = vec![x.to_string(), wn];
        if let Some(b) = b {
            inputs.push(self.param(b, b.dims())?);
        }
        let p = g.padding as i64;
        let s = g.stride as i64;
        let attrs = vec![
            ints_attr("kernel_shape", &[kh as i64, kw as i64]),
            ints_attr("strides", &[s, s]),
            ints_attr("pads", &[p, p, p, p]),
            ints_attr("dilations", &[1, 1]),
            int_attr("group", g.groups as i64),
        ];
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        Ok(self.node("Conv", &refs, attrs))
    }

    /// An f32 initialiser holding `t` reshaped to `shape` (one per distinct tensor and shape).
    fn param(&self, t: &Tensor, shape: &[usize]) -> Result<String> {
        let key = (t.id(), shape.to_vec());
        if let Some(name) = self.graph.borrow().by_tensor.get(&key) {
            return Ok(name.clone());
        }
        let base = self.param_names.get(&t.id()).cloned().unwrap_or_else(|| "param".to_string());
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let name = self.unique(base);
        self.add_initializer(&name, shape, data);
        self.graph.borrow_mut().by_tensor.insert(key, name.clone());
        Ok(name)
    }

    fn unique(&self, base: String) -> String {
        let mut g = self.graph.borrow_mut();
        let n = g.used_names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}.{}", *n - 1)
        }
    }

    fn add_initializer(&self, name: &str, shape: &[usize], data: Vec<f32>) {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.borrow_mut().initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.to_string()),
            raw_data: Some(raw),
        });
    }

    fn ints(&self, base: &str, v: &[i64], scalar: bool) -> String {
        let name = self.unique(base.to_string());
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.borrow_mut().initializers.push(TensorProto {
            dims: if scalar { vec![] } else { vec![v.len() as i64] },
            data_type: Some(data_type::INT64),
            name: Some(name.clone()),
            raw_data: Some(raw),
        });
        name
    }

    fn scalar(&self, v: f32) -> String {
        let name = self.unique(format!("const_{v}"));
        self.add_initializer(&name, &[], vec![v]);
        name
    }

    /// softmax(q·kᵀ/√head_dim + bias)·v on (N, heads, L, head_dim) values (k given
    /// transposed), heads merged: (N, Lq, heads·head_dim).
    fn attend(&self, q: &Value, kt: &Value, v: &Value, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Value> {
        let scores = self.node("MatMul", &[q, kt], vec![]);
        let scale = self.scalar((1.0 / (head_dim as f64).sqrt()) as f32);
        let mut scores = self.node("Mul", &[&scores, &scale], vec![]);
        if let Some(b) = bias {
            let (g, h, lq, lk) = b.dims4()?;
            let grouped = self.ints("shape_bias_groups", &[-1, g as i64, h as i64, lq as i64, lk as i64], false);
            let t = self.node("Reshape", &[&scores, &grouped], vec![]);
            let bn = self.param(b, b.dims())?;
            let t = self.node("Add", &[&t, &bn], vec![]);
            let back = self.ints("shape_scores", &[-1, h as i64, lq as i64, lk as i64], false);
            scores = self.node("Reshape", &[&t, &back], vec![]);
        }
        let p = self.node("Softmax", &[&scores], vec![int_attr("axis", -1)]);
        let o = self.node("MatMul", &[&p, v], vec![]);
        let o = self.node("Transpose", &[&o], vec![ints_attr("perm", &[0, 2, 1, 3])]);
        let merge = self.ints("shape_merge", &[0, -1, (heads * head_dim) as i64], false);
        Ok(self.node("Reshape", &[&o, &merge], vec![]))
    }

    /// Slice of `x` along `axis` ([start, end), negative from the end as in ONNX).
    fn slice(&self, x: &str, axis: usize, start: i64, end: i64) -> Value {
        let starts = self.ints("slice_start", &[start], false);
        let ends = self.ints("slice_end", &[end], false);
        let axes = self.ints("slice_axis", &[axis as i64], false);
        self.node("Slice", &[x, &starts, &ends, &axes], vec![])
    }
}

impl Ops for OnnxOps {
    type T = Value;

    fn conv2d(&self, x: &Value, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Value> {
        self.conv(x, w, w.dims(), b, g)
    }

    fn pointwise_linear(&self, x: &Value, w: &Tensor, b: Option<&Tensor>) -> Result<Value> {
        // The (out, in) parameter keeps its name, stored as the (out, in, 1, 1) Conv weight.
        let (o, i) = w.dims2()?;
        self.conv(x, w, &[o, i, 1, 1], b, ConvGeom { stride: 1, padding: 0, groups: 1 })
    }

    fn linear(&self, x: &Value, w: &Tensor, b: Option<&Tensor>) -> Result<Value> {
        // MatMul (any rank) against the transposed weight; the initialiser keeps its name and
        // PyTorch layout, runtimes fold the Transpose.
        let wn = self.param(w, w.dims())?;
        let wt = self.node("Transpose", &[&wn], vec![ints_attr("perm", &[1, 0])]);
        let y = self.node("MatMul", &[x, &wt], vec![]);
        match b {
            Some(b) => {
                let bn = self.param(b, b.dims())?;
                Ok(self.node("Add", &[&y, &bn], vec![]))
            }
            None => Ok(y),
        }
    }

    fn layer_norm_channels(&self, x: &Value, w: &Tensor, b: &Tensor, eps: f64) -> Result<Value> {
        let t = self.node("Transpose", &[x], vec![ints_attr("perm", &[0, 2, 3, 1])]);
        let y = self.layer_norm(&t, w, b, eps)?;
        Ok(self.node("Transpose", &[&y], vec![ints_attr("perm", &[0, 3, 1, 2])]))
    }

    fn layer_norm(&self, x: &Value, w: &Tensor, b: &Tensor, eps: f64) -> Result<Value> {
        let wn = self.param(w, w.dims())?;
        let bn = self.param(b, b.dims())?;
        Ok(self.node("LayerNormalization", &[x, &wn, &bn], vec![int_attr("axis", -1), float_attr("epsilon", eps as f32)]))
    }

    fn gelu(&self, x: &Value) -> Result<Value> {
        // Gelu is a native op only from opset 20: 0.5·x·(1 + erf(x/√2)).
        let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let d = self.node("Div", &[x, &sqrt2], vec![]);
        let e = self.node("Erf", &[&d], vec![]);
        let a = self.node("Add", &[&e, &one], vec![]);
        let m = self.node("Mul", &[x, &a], vec![]);
        Ok(self.node("Mul", &[&m, &half], vec![]))
    }

    fn relu(&self, x: &Value) -> Result<Value> {
        Ok(self.node("Relu", &[x], vec![]))
    }

    fn add(&self, a: &Value, b: &Value) -> Result<Value> {
        Ok(self.node("Add", &[a, b], vec![]))
    }

    fn scale_channels(&self, x: &Value, gamma: &Tensor) -> Result<Value> {
        let g = self.param(gamma, &[1, gamma.elem_count(), 1, 1])?;
        Ok(self.node("Mul", &[x, &g], vec![]))
    }

    fn global_avg_pool(&self, x: &Value) -> Result<Value> {
        Ok(self.node("GlobalAveragePool", &[x], vec![]))
    }

    fn flatten(&self, x: &Value) -> Result<Value> {
        Ok(self.node("Flatten", &[x], vec![int_attr("axis", 1)]))
    }

    fn drop_path(&self, x: &Value, _rate: f64) -> Result<Value> {
        Ok(x.clone())
    }

    fn batch_norm(&self, x: &Value, w: &Tensor, b: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64, _momentum: f64) -> Result<Value> {
        let names = [self.param(w, w.dims())?, self.param(b, b.dims())?, self.param(running_mean, running_mean.dims())?, self.param(running_var, running_var.dims())?];
        Ok(self.node("BatchNormalization", &[x, &names[0], &names[1], &names[2], &names[3]], vec![float_attr("epsilon", eps as f32)]))
    }

    fn input_hw(&self, x: &Value) -> Result<(usize, usize)> {
        if **x == *self.input.0 {
            Ok(self.input.1)
        } else {
            candle_core::bail!("ONNX export: the spatial size is only known for the graph input")
        }
    }

    fn to_tokens(&self, x: &Value) -> Result<Value> {
        let shape = self.ints("shape_nc_flat", &[0, 0, -1], false);
        let flat = self.node("Reshape", &[x, &shape], vec![]);
        Ok(self.node("Transpose", &[&flat], vec![ints_attr("perm", &[0, 2, 1])]))
    }

    fn prepend_token(&self, x: &Value, token: &Tensor) -> Result<Value> {
        // Expand the (1, 1, C) token to (N, 1, C) with N read from x at run time.
        let c = token.elem_count() as i64;
        let tok = self.param(token, token.dims())?;
        let shape = self.node("Shape", &[x], vec![]);
        let idx0 = self.ints("index_0", &[0], false);
        let n = self.node("Gather", &[&shape, &idx0], vec![int_attr("axis", 0)]);
        let rest = self.ints("dims_1_c", &[1, c], false);
        let target = self.node("Concat", &[&n, &rest], vec![int_attr("axis", 0)]);
        let expanded = self.node("Expand", &[&tok, &target], vec![]);
        Ok(self.node("Concat", &[&expanded, x], vec![int_attr("axis", 1)]))
    }

    fn add_param(&self, x: &Value, p: &Tensor) -> Result<Value> {
        let pn = self.param(p, p.dims())?;
        Ok(self.node("Add", &[x, &pn], vec![]))
    }

    fn attention(&self, qkv: &Value, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Value> {
        let split = self.ints("shape_qkv", &[0, -1, 3, heads as i64, head_dim as i64], false);
        let t = self.node("Reshape", &[qkv, &split], vec![]);
        let t = self.node("Transpose", &[&t], vec![ints_attr("perm", &[2, 0, 3, 1, 4])]);
        let pick = |i: i64| -> Value {
            let idx = self.ints(&format!("index_{i}"), &[i], true);
            self.node("Gather", &[&t, &idx], vec![int_attr("axis", 0)])
        };
        let (q, k, v) = (pick(0), pick(1), pick(2));
        let kt = self.node("Transpose", &[&k], vec![ints_attr("perm", &[0, 1, 3, 2])]);
        self.attend(&q, &kt, &v, heads, head_dim, bias)
    }

    fn sdpa(&self, q: &Value, k: &Value, v: &Value, heads: usize, head_dim: usize, bias: Option<&Tensor>) -> Result<Value> {
        let split = self.ints("shape_heads", &[0, 0, heads as i64, head_dim as i64], false);
        let heads_first = |x: &Value, perm: &[i64]| -> Value {
            let t = self.node("Reshape", &[x, &split], vec![]);
            self.node("Transpose", &[&t], vec![ints_attr("perm", perm)])
        };
        let (q, kt, v) = (heads_first(q, &[0, 2, 1, 3]), heads_first(k, &[0, 2, 3, 1]), heads_first(v, &[0, 2, 1, 3]));
        self.attend(&q, &kt, &v, heads, head_dim, bias)
    }

    fn token(&self, x: &Value, index: usize) -> Result<Value> {
        let idx = self.ints(&format!("index_{index}"), &[index as i64], true);
        Ok(self.node("Gather", &[x, &idx], vec![int_attr("axis", 1)]))
    }

    fn reshape(&self, x: &Value, rest: &[usize]) -> Result<Value> {
        let shape: Vec<i64> = std::iter::once(-1).chain(rest.iter().map(|&d| d as i64)).collect();
        let shape = self.ints("shape", &shape, false);
        Ok(self.node("Reshape", &[x, &shape], vec![]))
    }

    fn permute(&self, x: &Value, perm: &[usize]) -> Result<Value> {
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        Ok(self.node("Transpose", &[x], vec![ints_attr("perm", &perm)]))
    }

    fn roll(&self, x: &Value, shift: isize, dim: usize) -> Result<Value> {
        // No Roll op: concat(x[-s:], x[:-s]). For s > 0 the negative index counts from the
        // end, for s < 0 it is the positive index |s|: one formula, no static size needed.
        if shift == 0 {
            return Ok(x.clone());
        }
        let s = shift as i64;
        let (head, tail) = (self.slice(x, dim, -s, i64::MAX), self.slice(x, dim, 0, -s));
        Ok(self.node("Concat", &[&head, &tail], vec![int_attr("axis", dim as i64)]))
    }

    fn pad_end(&self, x: &Value, pads: &[usize]) -> Result<Value> {
        if pads.iter().all(|&p| p == 0) {
            return Ok(x.clone());
        }
        // ONNX order: all begins, then all ends.
        let v: Vec<i64> = pads.iter().map(|_| 0).chain(pads.iter().map(|&p| p as i64)).collect();
        let pads = self.ints("pads", &v, false);
        Ok(self.node("Pad", &[x, &pads], vec![]))
    }

    fn narrow(&self, x: &Value, dim: usize, start: usize, len: usize) -> Result<Value> {
        Ok(self.slice(x, dim, start as i64, (start + len) as i64))
    }

    fn concat(&self, xs: &[&Value], dim: usize) -> Result<Value> {
        let refs: Vec<&str> = xs.iter().map(|x| &***x).collect();
        Ok(self.node("Concat", &refs, vec![int_attr("axis", dim as i64)]))
    }

    fn tokens_to_map(&self, x: &Value, like: &Value) -> Result<Value> {
        // (N, L, C) → (N, C, L) → (N, C, H, W) with H, W read from `like` at run time.
        let t = self.node("Transpose", &[x], vec![ints_attr("perm", &[0, 2, 1])]);
        let shape = self.node("Shape", &[like], vec![]);
        let hw = self.slice(&shape, 0, 2, 4);
        let nc = self.ints("dims_n_c", &[0, -1], false);
        let target = self.node("Concat", &[&nc, &hw], vec![int_attr("axis", 0)]);
        Ok(self.node("Reshape", &[&t, &target], vec![]))
    }

    fn mul_param(&self, x: &Value, p: &Tensor) -> Result<Value> {
        let pn = self.param(p, p.dims())?;
        Ok(self.node("Mul", &[x, &pn], vec![]))
    }

    fn squared_relu(&self, x: &Value) -> Result<Value> {
        let r = self.node("Relu", &[x], vec![]);
        Ok(self.node("Mul", &[&r, &r], vec![]))
    }

    fn max_pool2d(&self, x: &Value, kernel: usize, stride: usize, padding: usize) -> Result<Value> {
        let (k, s, p) = (kernel as i64, stride as i64, padding as i64);
        let attrs = vec![ints_attr("kernel_shape", &[k, k]), ints_attr("strides", &[s, s]), ints_attr("pads", &[p, p, p, p])];
        Ok(self.node("MaxPool", &[x], attrs))
    }
}
