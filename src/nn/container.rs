//! Containers: Sequential and Residual, and the model summary table.

use std::fmt;

use crate::error::Result;
use crate::nn::layers::Saved;
use crate::nn::{join, Layer, Mode, Precision, StateEntry};
use crate::nn::ActivationLayer;
use crate::ops::activation::Activation;
use crate::ops::concat::{concat_backward, concat_forward};
use crate::ops::elementwise::{elementwise_add, elementwise_add_relu, elementwise_add_relu_backward};
use crate::tensor::Tensor;

/// Layers applied in order; parameters are named `"<index>.<name>"` as in
/// PyTorch's `nn.Sequential`, or `"<child>.<name>"` for children pushed with a
/// name (as the attributes of a PyTorch module that calls them in order).
#[derive(Default)]
pub struct Sequential {
    /// The layers, in order.
    pub layers: Vec<Box<dyn Layer>>,
    /// Child names by position; a missing or empty one is the index.
    names: Vec<String>,
}

impl Sequential {
    /// Backward through layers `stop..` (last first), fusing an activation's
    /// backward into the layer after it where that layer can; the gradient
    /// at layer `stop`'s output.
    fn backward_to(&mut self, dy: &Tensor, stop: usize) -> Result<Tensor> {
        let mut g = dy.clone();
        let mut i = self.layers.len();
        while i > stop {
            i -= 1;
            if i > stop {
                if let Some(act) = self.layers[i - 1].fusable_activation() {
                    if let Some(dx) = self.layers[i].backward_fused(&g, act)? {
                        self.layers[i - 1].release();
                        (g, i) = (dx, i - 1);
                        continue;
                    }
                }
            }
            g = self.layers[i].backward(&g)?;
        }
        Ok(g)
    }

    /// An empty container.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a layer (builder style).
    pub fn push(mut self, layer: impl Layer + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a layer whose state is named `"<name>.…"` instead of by index.
    pub fn push_named(mut self, name: &str, layer: impl Layer + 'static) -> Sequential {
        self.names.resize(self.layers.len(), String::new());
        self.names.push(name.to_string());
        self.layers.push(Box::new(layer));
        self
    }

    /// The name of child `i` in state names.
    pub fn child_name(&self, i: usize) -> String {
        self.names.get(i).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| i.to_string())
    }

    /// Each layer's output shape and parameter count for an input shape;
    /// nested `Sequential`s are listed layer by layer (residual blocks and
    /// concatenations stay one row each).
    pub fn summary(&mut self, input: &[usize]) -> Result<Summary> {
        let mut rows = Vec::new();
        self.summary_rows("", input, &mut rows)?;
        Ok(Summary { input: input.to_vec(), rows })
    }

    fn summary_rows(&mut self, prefix: &str, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        let mut shape = input.to_vec();
        for i in 0..self.layers.len() {
            let name = join(prefix, &self.child_name(i));
            let layer = &mut self.layers[i];
            if let Some(inner) = layer.as_sequential() {
                shape = inner.summary_rows(&name, &shape, rows)?;
                continue;
            }
            shape = layer.output_shape(&shape)?;
            rows.push(SummaryRow { name, kind: layer.kind(), description: layer.describe(), output: shape.clone(), params: layer.param_count(), by_kind: layer.param_kinds() });
        }
        Ok(shape)
    }
}

impl Layer for Sequential {
    fn release(&mut self) {
        self.layers.iter_mut().for_each(|l| l.release());
    }
    fn set_precision(&mut self, precision: Precision) {
        self.layers.iter_mut().for_each(|l| l.set_precision(precision));
    }
    fn kind(&self) -> &'static str {
        "Sequential"
    }
    fn describe(&self) -> String {
        format!("Sequential({} layers)", self.layers.len())
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.layers.iter().try_fold(input.to_vec(), |s, l| l.output_shape(&s))
    }
    /// Runs the layers in order; a layer followed by a fusable activation
    /// (ReLU) applies it in its own kernels when it can, and the activation
    /// layer keeps the output for its backward.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            if let Some(act) = self.layers.get(i + 1).and_then(|next| next.fusable_activation()) {
                if let Some(y) = self.layers[i].forward_fused(&h, mode, act)? {
                    self.layers[i + 1].adopt_output(&y, mode)?;
                    (h, i) = (y, i + 2);
                    continue;
                }
            }
            h = self.layers[i].forward(&h, mode)?;
            i += 1;
        }
        Ok(h)
    }
    /// Runs the layers backwards; a layer after a fusable activation (ReLU)
    /// runs that activation's backward in its own kernels when it can.
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_to(dy, 0)
    }
    /// Stops at the first layer with parameters that train: nothing before
    /// it needs a gradient (a frozen backbone runs no backward at all).
    fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        let first = self.layers.iter_mut().position(|l| l.trainable_count() > 0);
        // What the layers before it kept for backward is not needed.
        let n = first.unwrap_or(self.layers.len());
        self.layers[..n].iter_mut().for_each(|l| l.release());
        let Some(first) = first else { return Ok(()) };
        let g = self.backward_to(dy, first + 1)?;
        self.layers[first].backward_params(&g)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        let names: Vec<String> = (0..self.layers.len()).map(|i| self.child_name(i)).collect();
        self.layers.iter_mut().zip(names).flat_map(|(l, n)| l.state(&join(prefix, &n))).collect()
    }
    fn param_kinds(&mut self) -> Vec<(&'static str, usize)> {
        self.layers.iter_mut().flat_map(|l| l.param_kinds()).collect()
    }
    fn as_sequential(&mut self) -> Option<&mut Sequential> {
        Some(self)
    }
}

/// `y = body(x) + shortcut(x)`, the shortcut being the identity or a
/// projection (typically a strided 1×1 convolution and batch-norm), with an
/// optional activation after the sum. Backward adds the gradients of both paths.
///
/// State names: `body.…` and `shortcut.…`; [`Residual::torchvision`] blocks
/// name them as torchvision's `BasicBlock`/`Bottleneck` do (`conv1`, `bn1`, …
/// at the block's level, the projection as `downsample`).
pub struct Residual {
    /// The residual branch.
    pub body: Sequential,
    /// The projection (`None`: the identity).
    pub shortcut: Option<Sequential>,
    /// Applied to the sum (torchvision's blocks end in a ReLU).
    pub post: Option<ActivationLayer>,
    /// `None`: the body's children are named at the block's own level.
    body_name: Option<&'static str>,
    shortcut_name: &'static str,
    /// The input of a training forward (a shared handle): a ReLU before the
    /// block takes its backward from it in the block's own last kernel.
    x: Option<Saved>,
    precision: Precision,
}

impl Residual {
    /// `body(x) + shortcut(x)`, named `body.…` and `shortcut.…`.
    pub fn new(body: Sequential, shortcut: Option<Sequential>) -> Residual {
        Residual { body, shortcut, post: None, body_name: Some("body"), shortcut_name: "shortcut", x: None, precision: Precision::F32 }
    }

    /// A torchvision-style block: `relu(body(x) + downsample(x))`, the body's
    /// children named at the block's level and the projection `downsample`.
    pub fn torchvision(body: Sequential, downsample: Option<Sequential>) -> Residual {
        Residual { body, shortcut: downsample, post: Some(ActivationLayer::new(Activation::Relu)), body_name: None, shortcut_name: "downsample", x: None, precision: Precision::F32 }
    }

    /// The input gradients of the body and of the shortcut, from the block's
    /// output gradient (through `post` first).
    fn branch_grads(&mut self, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let dy = &match &mut self.post {
            Some(act) => act.backward(dy)?,
            None => dy.clone(),
        };
        let db = self.body.backward(dy)?;
        let ds = match &mut self.shortcut {
            Some(sc) => sc.backward(dy)?,
            None => dy.clone(),
        };
        Ok((db, ds))
    }

    /// body(x) + shortcut(x), with ReLU after it when `relu`.
    fn sum(&mut self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        self.x = Saved::keep_if(x, mode, self.precision)?;
        let b = self.body.forward(x, mode)?;
        let s = match &mut self.shortcut {
            Some(sc) => sc.forward(x, mode)?,
            None => x.clone(),
        };
        if relu {
            elementwise_add_relu(&b, &s, 1.0, 1.0)
        } else {
            elementwise_add(&b, &s, 1.0, 1.0)
        }
    }
}

impl Layer for Residual {
    fn release(&mut self) {
        self.x = None;
        self.body.release();
        if let Some(s) = &mut self.shortcut {
            s.release();
        }
        if let Some(p) = &mut self.post {
            p.release();
        }
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.body.set_precision(precision);
        if let Some(s) = &mut self.shortcut {
            s.set_precision(precision);
        }
        if let Some(p) = &mut self.post {
            p.set_precision(precision);
        }
    }
    fn kind(&self) -> &'static str {
        "Residual"
    }
    fn describe(&self) -> String {
        let inner: Vec<String> = self.body.layers.iter().map(|l| l.describe()).collect();
        let short = if self.shortcut.is_some() { "projection" } else { "identity" };
        format!("Residual[{}] + {short}", inner.join(" → "))
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let body = self.body.output_shape(input)?;
        let short = match &self.shortcut {
            Some(s) => s.output_shape(input)?,
            None => input.to_vec(),
        };
        if body != short {
            return crate::error::shape_err("Residual", format!("the body gives {body:?} but the shortcut gives {short:?} for input {input:?}"));
        }
        Ok(body)
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self.post.as_ref().and_then(|p| p.fusable_activation()) {
            // The ReLU rides in the sum's kernel; the layer keeps the output for backward.
            Some(Activation::Relu) => {
                let y = self.sum(x, mode, true)?;
                if let Some(post) = &mut self.post {
                    post.adopt_output(&y, mode)?;
                }
                Ok(y)
            }
            _ => {
                let y = self.sum(x, mode, false)?;
                match &mut self.post {
                    Some(act) => act.forward(&y, mode),
                    None => Ok(y),
                }
            }
        }
    }
    /// A ReLU layer after the block (ResNet-20's layout): in the sum's kernel.
    fn forward_fused(&mut self, x: &Tensor, mode: Mode, act: Activation) -> Result<Option<Tensor>> {
        if act != Activation::Relu || self.post.is_some() {
            return Ok(None);
        }
        self.sum(x, mode, true).map(Some)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        if self.x.as_ref().is_some_and(|x| x.on_gpu()) {
            self.x = None;
        }
        let (db, ds) = self.branch_grads(dy)?;
        elementwise_add(&db, &ds, 1.0, 1.0)
    }
    /// Parameter gradients only (the block is the first layer that trains):
    /// each branch's own `backward_params`, no gradient for the block's input.
    fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        self.x = None;
        let dy = &match &mut self.post {
            Some(act) => act.backward(dy)?,
            None => dy.clone(),
        };
        self.body.backward_params(dy)?;
        if let Some(sc) = &mut self.shortcut {
            sc.backward_params(dy)?;
        }
        Ok(())
    }
    /// The ReLU before the block: its backward rides in the sum of the two
    /// branches' input gradients, from the block's input (that ReLU's output).
    fn backward_fused(&mut self, dy: &Tensor, act: Activation) -> Result<Option<Tensor>> {
        if act != Activation::Relu {
            return Ok(None);
        }
        let x = crate::nn::layers::take_saved(&mut self.x, Saved::on_gpu, "Residual")?.tensor()?;
        let (db, ds) = self.branch_grads(dy)?;
        elementwise_add_relu_backward(&db, &ds, &x, 1.0, 1.0).map(Some)
    }
    fn param_kinds(&mut self) -> Vec<(&'static str, usize)> {
        let mut v = self.body.param_kinds();
        v.extend(self.shortcut.as_mut().map(|s| s.param_kinds()).unwrap_or_default());
        v
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        let body = self.body_name.map_or(prefix.to_string(), |n| join(prefix, n));
        let mut v = self.body.state(&body);
        if let Some(s) = &mut self.shortcut {
            v.extend(s.state(&join(prefix, self.shortcut_name)));
        }
        v
    }
}

/// Branches run on the same input, their outputs concatenated along
/// channels (`torch.cat(..., dim=1)`, as in GoogLeNet's Inception blocks);
/// backward splits the gradient and adds the branches' input gradients.
/// Branch state is named by the branch names given.
pub struct Concat {
    /// The branches and their names, in concatenation order.
    pub branches: Vec<(String, Box<dyn Layer>)>,
    channels: Vec<usize>,
}

impl Concat {
    /// A concatenation with no branches yet (add them with [`Concat::branch`]).
    pub fn new() -> Concat {
        Concat { branches: Vec::new(), channels: Vec::new() }
    }

    /// Adds a branch named `name` (builder style).
    pub fn branch(mut self, name: &str, layer: impl Layer + 'static) -> Concat {
        self.branches.push((name.to_string(), Box::new(layer)));
        self
    }
}

impl Default for Concat {
    fn default() -> Concat {
        Concat::new()
    }
}

impl Layer for Concat {
    fn release(&mut self) {
        self.branches.iter_mut().for_each(|(_, b)| b.release());
    }
    fn set_precision(&mut self, precision: Precision) {
        self.branches.iter_mut().for_each(|(_, b)| b.set_precision(precision));
    }
    fn kind(&self) -> &'static str {
        "Concat"
    }
    fn describe(&self) -> String {
        let names: Vec<&str> = self.branches.iter().map(|(n, _)| n.as_str()).collect();
        format!("Concat[{}]", names.join(", "))
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let shapes = self.branches.iter().map(|(_, b)| b.output_shape(input)).collect::<Result<Vec<_>>>()?;
        let Some(first) = shapes.first() else { return crate::error::shape_err("Concat", "has no branches") };
        if shapes.iter().any(|s| s.len() != first.len() || s.len() < 2 || s[0] != first[0] || s[2..] != first[2..]) {
            return crate::error::shape_err("Concat", format!("branch outputs {shapes:?} differ in a dim other than 1 for input {input:?}"));
        }
        let mut out = first.clone();
        out[1] = shapes.iter().map(|s| s[1]).sum();
        Ok(out)
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let ys = self.branches.iter_mut().map(|(_, b)| b.forward(x, mode)).collect::<Result<Vec<_>>>()?;
        self.channels = ys.iter().map(|y| y.shape().get(1).copied().unwrap_or(0)).collect();
        concat_forward(&ys.iter().collect::<Vec<_>>())
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let parts = concat_backward(dy, &self.channels)?;
        let mut dx: Option<Tensor> = None;
        for ((_, b), d) in self.branches.iter_mut().zip(parts) {
            let g = b.backward(&d)?;
            dx = Some(match dx {
                None => g,
                Some(acc) => elementwise_add(&acc, &g, 1.0, 1.0)?,
            });
        }
        dx.ok_or_else(|| crate::Error::Shape { op: "Concat", msg: "has no branches".into() })
    }
    fn param_kinds(&mut self) -> Vec<(&'static str, usize)> {
        self.branches.iter_mut().flat_map(|(_, b)| b.param_kinds()).collect()
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        self.branches.iter_mut().flat_map(|(n, b)| b.state(&join(prefix, n))).collect()
    }
}

/// One row of a model summary.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    /// The layer's path in state names (`"features.3"`, `"layer1.0"`).
    pub name: String,
    /// The layer kind ("Conv2d", …).
    pub kind: &'static str,
    /// One line describing the layer.
    pub description: String,
    /// Including the batch axis.
    pub output: Vec<usize>,
    /// Learnable scalars in this row.
    pub params: usize,
    /// The row's parameters by the kind of layer holding them (a container's children).
    pub by_kind: Vec<(&'static str, usize)>,
}

/// Output shapes and parameter counts, layer by layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The input shape, batch included.
    pub input: Vec<usize>,
    /// One row per layer (nested `Sequential`s expanded).
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    /// Learnable scalars in the whole model.
    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    /// Parameters in layers of one kind ("Conv2d", "Linear", …), inside containers too.
    pub fn params_of(&self, kind: &str) -> usize {
        self.rows.iter().flat_map(|r| &r.by_kind).filter(|(k, _)| *k == kind).map(|(_, n)| n).sum()
    }

    /// The kinds that hold parameters, each once, in order of first appearance.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = Vec::new();
        for (k, _) in self.rows.iter().flat_map(|r| &r.by_kind) {
            if !kinds.contains(k) {
                kinds.push(k);
            }
        }
        kinds
    }
}

/// `C@H×W` for images, the feature count for vectors (batch axis dropped).
fn shape_str(s: &[usize]) -> String {
    match s {
        [_, c, h, w] => format!("{c}@{h}×{w}"),
        [_, f] => f.to_string(),
        other => format!("{other:?}"),
    }
}

/// Thousands separators: 394634 → "394,634".
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<14} {:<58} {:>14} {:>12}", "name", "layer", "output", "params")?;
        writeln!(f, "{:<14} {:<58} {:>14} {:>12}", "", "input", shape_str(&self.input), "")?;
        for r in &self.rows {
            let desc: String = if r.description.chars().count() > 58 { r.description.chars().take(57).chain(['…']).collect() } else { r.description.clone() };
            writeln!(f, "{:<14} {:<58} {:>14} {:>12}", r.name, desc, shape_str(&r.output), grouped(r.params))?;
        }
        writeln!(f, "{:<14} {:<58} {:>14} {:>12}", "", "total", "", grouped(self.total_params()))?;
        let parts: Vec<String> = self.kinds().iter().map(|k| format!("{k} {}", grouped(self.params_of(k)))).collect();
        write!(f, "parameters by kind: {}", parts.join(", "))
    }
}
