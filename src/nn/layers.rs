//! The layers: Conv2d, Linear, pooling, batch-norm, dropout, activations, flatten.

use crate::device::Device;
use crate::error::{shape_err, Error, Result};
use crate::nn::{join, Grad, Initializer, Layer, Mode, Precision, StateEntry};
use crate::ops::activation::{activation_backward, activation_forward, Activation};
use crate::ops::avgpool::{avgpool_adaptive_backward, avgpool_adaptive_forward, avgpool_backward, avgpool_forward, avgpool_global_backward, avgpool_global_forward};
use crate::ops::batchnorm::{batchnorm_backward, batchnorm_backward_half, batchnorm_forward_eval_relu, batchnorm_forward_train_relu, Affine, BatchNormConfig};
use crate::ops::conv2d::{conv2d_backward_cols, conv2d_forward, conv2d_forward_act, conv2d_forward_keep, conv2d_transpose_backward, conv2d_transpose_forward};
use crate::ops::dropout::{dropout_backward, dropout_forward, DropoutConfig};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward, NormKind};
use crate::ops::softmax::{softmax_backward, softmax_forward};
use crate::ops::pad::{pad_backward, pad_forward};
use crate::ops::upsample::{upsample_backward, upsample_forward, UpsampleMode};
use crate::ops::gemm::{gemm, gemm_epilogue, gemm_relu_backward, gemm_row_sums, GemmConfig};
use crate::ops::maxpool::{maxpool_backward, maxpool_backward_relu, maxpool_backward_relu_half, maxpool_forward};
use crate::shape::{Conv2dConfig, Conv2dGeometry, Padding, Pool2dConfig, Pool2dGeometry};
use crate::tensor::{HalfTensor, Indices, Tensor};

/// `[a, a]` → "a", otherwise "a×b".
fn pair(v: [usize; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("{}×{}", v[0], v[1])
    }
}

/// Takes what a forward kept for its backward (`on_gpu` says where it
/// lives). On the GPU it is released as the backward is recorded, and the
/// step's memory is planned around that; the CPU path keeps it until the
/// next forward replaces it: freed at once, the allocator hands the memory
/// back to the OS and the next step faults it in again (ResNet-20's CPU
/// step went from 117 to 155 ms).
pub(crate) fn take_saved<T: Clone>(slot: &mut Option<T>, on_gpu: impl Fn(&T) -> bool, layer: &'static str) -> Result<T> {
    let v = slot.take().ok_or_else(|| no_cache(layer))?;
    if !on_gpu(&v) {
        *slot = Some(v.clone());
    }
    Ok(v)
}

fn gpu(t: &Tensor) -> bool {
    t.device().is_gpu()
}

/// An activation kept from forward for backward: shared as is, or an f16
/// copy under [`Precision::Mixed`] (one per buffer however many layers keep
/// it: see [`Tensor::to_half`]).
#[derive(Clone)]
pub(crate) enum Saved {
    F32(Tensor),
    F16(HalfTensor),
}

impl Saved {
    pub(crate) fn keep(x: &Tensor, precision: Precision) -> Result<Saved> {
        Ok(match precision {
            Precision::F32 => Saved::F32(x.clone()),
            Precision::Mixed => Saved::F16(x.to_half()?),
        })
    }

    /// [`Saved::keep`] in `Train` mode; nothing in `Eval`.
    pub(crate) fn keep_if(x: &Tensor, mode: Mode, precision: Precision) -> Result<Option<Saved>> {
        (mode == Mode::Train).then(|| Saved::keep(x, precision)).transpose()
    }

    /// The activation as f32 (an f16 one is read back into a new tensor).
    pub(crate) fn tensor(&self) -> Result<Tensor> {
        match self {
            Saved::F32(t) => Ok(t.clone()),
            Saved::F16(h) => h.to_f32(),
        }
    }

    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Saved::F32(t) => t.shape(),
            Saved::F16(h) => h.shape(),
        }
    }

    pub(crate) fn on_gpu(&self) -> bool {
        match self {
            Saved::F32(t) => gpu(t),
            Saved::F16(h) => h.device().is_gpu(),
        }
    }
}

/// A backward call needs the forward's cache.
pub(crate) fn no_cache(layer: &'static str) -> Error {
    Error::InvalidArgument { op: layer, msg: "backward called without a forward in Train mode".into() }
}

// ------------------------------------------------------------------ weight + bias

/// A weight, an optional bias and their gradients: what Conv2d and Linear share.
pub struct WeightBias {
    /// `[c_out, c_in/groups, kh, kw]` or `[out, in]`.
    pub weight: Tensor,
    /// One per output channel or feature.
    pub bias: Option<Tensor>,
    gw: Grad,
    gb: Option<Grad>,
}

impl WeightBias {
    fn new(dev: &Device, shape: &[usize], fan_in: usize, fan_out: usize, bias: bool, init: &mut Initializer) -> Result<WeightBias> {
        WeightBias::with_bias_len(dev, shape, fan_in, fan_out, bias.then_some(shape[0]), init)
    }

    /// A bias of `bias_len` (a transposed convolution's is its weight's dim 1 × groups).
    fn with_bias_len(dev: &Device, shape: &[usize], fan_in: usize, fan_out: usize, bias_len: Option<usize>, init: &mut Initializer) -> Result<WeightBias> {
        let n = shape.iter().product();
        let weight = Tensor::from_vec(dev, shape, init.weights(n, fan_in, fan_out))?;
        let bias = bias_len.map(|len| Tensor::from_vec(dev, &[len], init.biases(len, fan_in))).transpose()?;
        Ok(WeightBias { gw: Grad::new(&weight)?, gb: bias.as_ref().map(Grad::new).transpose()?, weight, bias })
    }

    /// Whether either tensor trains: a frozen layer skips its weight-gradient GEMM.
    fn trains(&self) -> bool {
        !self.gw.is_frozen() || self.gb.as_ref().is_some_and(|g| !g.is_frozen())
    }

    fn accumulate(&mut self, dw: Option<Tensor>, db: Option<Tensor>) -> Result<()> {
        if let Some(dw) = dw {
            self.gw.accumulate(dw)?;
        }
        if let (Some(gb), Some(db)) = (self.gb.as_mut(), db) {
            gb.accumulate(db)?;
        }
        Ok(())
    }

    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        let mut v = vec![StateEntry::param(join(prefix, "weight"), &mut self.weight, &mut self.gw)];
        if let (Some(b), Some(gb)) = (self.bias.as_mut(), self.gb.as_mut()) {
            v.push(StateEntry::param(join(prefix, "bias"), b, gb));
        }
        v
    }
}

// ------------------------------------------------------------------ Conv2d

/// 2-d convolution; weight `[c_out, c_in/groups, kh, kw]`, optional bias `[c_out]`.
pub struct Conv2d {
    /// Weight and bias.
    pub params: WeightBias,
    /// Stride, padding, dilation, groups.
    pub cfg: Conv2dConfig,
    /// Padding that is not symmetric, applied by a zero-pad before the
    /// convolution (whose own padding is then 0): `[top, bottom, left, right]`.
    pub pre_pad: Option<[usize; 4]>,
    x: Option<Saved>,
    precision: Precision,
    /// im2col columns kept from a training forward on the GPU (when small
    /// enough), so backward need not rebuild them.
    cols: Option<Tensor>,
}

impl Conv2d {
    /// `c_in → c_out` channels with a `kernel` window, PyTorch's default initialisation by `init`'s scheme.
    pub fn new(dev: &Device, c_in: usize, c_out: usize, kernel: [usize; 2], cfg: Conv2dConfig, bias: bool, init: &mut Initializer) -> Result<Conv2d> {
        if cfg.groups == 0 || c_in % cfg.groups != 0 || c_out % cfg.groups != 0 {
            return Err(Error::InvalidArgument { op: "Conv2d", msg: format!("groups {} must divide c_in {c_in} and c_out {c_out}", cfg.groups) });
        }
        let shape = [c_out, c_in / cfg.groups, kernel[0], kernel[1]];
        let fan_in = shape[1] * kernel[0] * kernel[1];
        let fan_out = c_out / cfg.groups * kernel[0] * kernel[1];
        Ok(Conv2d { params: WeightBias::new(dev, &shape, fan_in, fan_out, bias, init)?, cfg, pre_pad: None, x: None, precision: Precision::F32, cols: None })
    }

    /// A convolution with PyTorch's other padding forms: `same`, `valid` or
    /// per side (`cfg.padding` is ignored). Symmetric padding stays in the
    /// convolution's kernels; otherwise the input is zero-padded first.
    #[allow(clippy::too_many_arguments)]
    pub fn with_padding(dev: &Device, c_in: usize, c_out: usize, kernel: [usize; 2], cfg: Conv2dConfig, padding: Padding, bias: bool, init: &mut Initializer) -> Result<Conv2d> {
        let [t, b, l, r] = padding.sides(kernel, cfg.dilation, cfg.stride)?;
        let (cfg, pre_pad) = if t == b && l == r { (Conv2dConfig { padding: [t, l], ..cfg }, None) } else { (Conv2dConfig { padding: [0, 0], ..cfg }, Some([t, b, l, r])) };
        let mut conv = Conv2d::new(dev, c_in, c_out, kernel, cfg, bias, init)?;
        conv.pre_pad = pre_pad;
        Ok(conv)
    }

    fn padded_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match (self.pre_pad, input) {
            (None, _) => Ok(input.to_vec()),
            (Some([t, b, l, r]), &[n, c, h, w]) => Ok(vec![n, c, h + t + b, w + l + r]),
            (Some(_), _) => shape_err("conv2d", format!("input must be NCHW (4-D), got {input:?}")),
        }
    }
}

impl Conv2d {
    fn forward_with(&mut self, x: &Tensor, mode: Mode, act: Option<Activation>) -> Result<Tensor> {
        let padded;
        let x = match self.pre_pad {
            Some(sides) => {
                padded = pad_forward(x, sides)?;
                &padded
            }
            None => x,
        };
        let (w, b) = (&self.params.weight, self.params.bias.as_ref());
        // A frozen convolution's backward needs no columns (no dW); under
        // mixed precision, memory comes first: backward gathers them again.
        let y = if mode == Mode::Train && self.params.trains() && self.precision == Precision::F32 {
            let (y, cols) = conv2d_forward_keep(x, w, b, self.cfg, act)?;
            self.cols = cols;
            y
        } else {
            self.cols = None;
            match act {
                Some(act) => conv2d_forward_act(x, w, b, self.cfg, act)?,
                None => conv2d_forward(x, w, b, self.cfg)?,
            }
        };
        self.x = Saved::keep_if(x, mode, self.precision)?;
        Ok(y)
    }

    /// `relu_mask`: x is a ReLU's output, and dx goes back through it too.
    fn backward_inner(&mut self, dy: &Tensor, need_dx: bool, relu_mask: bool) -> Result<Option<Tensor>> {
        // The forward's cache serves one backward and is released by it, so
        // each saved tensor's memory serves later kernels of the same step.
        let x = take_saved(&mut self.x, Saved::on_gpu, "Conv2d")?.tensor()?;
        let x = &x;
        let cols = self.cols.take();
        let (dx, dw, db) = conv2d_backward_cols(x, &self.params.weight, dy, self.cfg, self.params.bias.is_some(), need_dx, self.params.trains(), cols.as_ref(), relu_mask)?;
        self.params.accumulate(dw, db)?;
        match (dx, self.pre_pad) {
            (Some(dx), Some(sides)) => {
                let s = x.shape();
                let inner = [s[0], s[1], s[2] - sides[0] - sides[1], s[3] - sides[2] - sides[3]];
                pad_backward(&dx, &inner, sides).map(Some)
            }
            (dx, _) => Ok(dx),
        }
    }
}

impl Layer for Conv2d {
    fn release(&mut self) {
        (self.x, self.cols) = (None, None);
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        "Conv2d"
    }
    fn describe(&self) -> String {
        let s = self.params.weight.shape();
        let c = &self.cfg;
        let mut d = format!("Conv2d({}→{}, {}×{}", s[1] * c.groups, s[0], s[2], s[3]);
        for (name, v, default) in [("stride", c.stride, 1), ("padding", c.padding, 0), ("dilation", c.dilation, 1)] {
            if v != [default, default] {
                d += &format!(", {name} {}", pair(v));
            }
        }
        if let Some(p) = self.pre_pad {
            d += &format!(", padding {p:?}");
        }
        if c.groups != 1 {
            d += &format!(", groups {}", c.groups);
        }
        d + ")"
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Conv2dGeometry::new(&self.padded_shape(input)?, self.params.weight.shape(), self.cfg)?.output_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, None)
    }
    fn forward_fused(&mut self, x: &Tensor, mode: Mode, act: Activation) -> Result<Option<Tensor>> {
        self.forward_with(x, mode, Some(act)).map(Some)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_inner(dy, true, false)?.ok_or_else(|| Error::InvalidArgument { op: "Conv2d", msg: "dx was asked for but not computed".into() })
    }
    /// The ReLU before this layer: its backward rides in col2im, from this
    /// layer's input (the ReLU's output). Not behind a zero-pad (x is then
    /// the padded tensor) nor for a 1×1 convolution (no col2im).
    fn backward_fused(&mut self, dy: &Tensor, act: Activation) -> Result<Option<Tensor>> {
        let x = self.x.as_ref().ok_or_else(|| no_cache("Conv2d"))?;
        let pointwise = Conv2dGeometry::new(x.shape(), self.params.weight.shape(), self.cfg)?.is_pointwise();
        if act != Activation::Relu || self.pre_pad.is_some() || pointwise {
            return Ok(None);
        }
        self.backward_inner(dy, true, true)?.map(Some).ok_or_else(|| Error::InvalidArgument { op: "Conv2d", msg: "dx was asked for but not computed".into() })
    }
    fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        self.backward_inner(dy, false, false).map(drop)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        self.params.state(prefix)
    }
}

// ------------------------------------------------------------------ ZeroPad2d

/// Zero padding by `[top, bottom, left, right]` (PyTorch's `ZeroPad2d` takes
/// them as left, right, top, bottom).
pub struct ZeroPad2d {
    /// `[top, bottom, left, right]`.
    pub sides: [usize; 4],
    input: Option<Vec<usize>>,
}

impl ZeroPad2d {
    /// Pads by `[top, bottom, left, right]`.
    pub fn new(sides: [usize; 4]) -> ZeroPad2d {
        ZeroPad2d { sides, input: None }
    }
}

impl Layer for ZeroPad2d {
    fn kind(&self) -> &'static str {
        "ZeroPad2d"
    }
    fn describe(&self) -> String {
        let [t, b, l, r] = self.sides;
        format!("ZeroPad2d(top {t}, bottom {b}, left {l}, right {r})")
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [t, b, l, r] = self.sides;
        match input {
            &[n, c, h, w] => Ok(vec![n, c, h + t + b, w + l + r]),
            _ => shape_err("ZeroPad2d", format!("input must be NCHW (4-D), got {input:?}")),
        }
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.input = (mode == Mode::Train).then(|| x.shape().to_vec());
        pad_forward(x, self.sides)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        pad_backward(dy, self.input.as_ref().ok_or_else(|| no_cache("ZeroPad2d"))?, self.sides)
    }
}

// ------------------------------------------------------------------ ConvTranspose2d

/// Transposed 2-d convolution (PyTorch's `ConvTranspose2d`): weight
/// `[c_in, c_out/groups, kh, kw]`, optional bias `[c_out]`; upsamples by the stride.
pub struct ConvTranspose2d {
    /// Weight `[c_in, c_out/groups, kh, kw]` and bias `[c_out]`.
    pub params: WeightBias,
    /// Stride, padding, dilation, groups.
    pub cfg: Conv2dConfig,
    /// Extra rows and columns on the bottom and right of the output.
    pub output_padding: [usize; 2],
    x: Option<Saved>,
    precision: Precision,
}

impl ConvTranspose2d {
    /// `c_in → c_out` channels (PyTorch's `ConvTranspose2d` arguments).
    pub fn new(dev: &Device, c_in: usize, c_out: usize, kernel: [usize; 2], cfg: Conv2dConfig, output_padding: [usize; 2], bias: bool, init: &mut Initializer) -> Result<ConvTranspose2d> {
        if cfg.groups == 0 || c_in % cfg.groups != 0 || c_out % cfg.groups != 0 {
            return Err(Error::InvalidArgument { op: "ConvTranspose2d", msg: format!("groups {} must divide c_in {c_in} and c_out {c_out}", cfg.groups) });
        }
        let shape = [c_in, c_out / cfg.groups, kernel[0], kernel[1]];
        // PyTorch's fan-in for this layout: dim 1 × the kernel.
        let fan_in = shape[1] * kernel[0] * kernel[1];
        let fan_out = c_in / cfg.groups * kernel[0] * kernel[1];
        let params = WeightBias::with_bias_len(dev, &shape, fan_in, fan_out, bias.then_some(c_out), init)?;
        Ok(ConvTranspose2d { params, cfg, output_padding, x: None, precision: Precision::F32 })
    }
}

impl Layer for ConvTranspose2d {
    fn release(&mut self) {
        self.x = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        "ConvTranspose2d"
    }
    fn describe(&self) -> String {
        let s = self.params.weight.shape();
        let c = &self.cfg;
        let mut d = format!("ConvTranspose2d({}→{}, {}×{}", s[0], s[1] * c.groups, s[2], s[3]);
        for (name, v, default) in [("stride", c.stride, 1), ("padding", c.padding, 0), ("output padding", self.output_padding, 0), ("dilation", c.dilation, 1)] {
            if v != [default, default] {
                d += &format!(", {name} {}", pair(v));
            }
        }
        if c.groups != 1 {
            d += &format!(", groups {}", c.groups);
        }
        d + ")"
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Conv2dGeometry::transposed(input, self.params.weight.shape(), self.cfg, self.output_padding)?.input_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.x = Saved::keep_if(x, mode, self.precision)?;
        conv2d_transpose_forward(x, &self.params.weight, self.params.bias.as_ref(), self.cfg, self.output_padding)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let x = take_saved(&mut self.x, Saved::on_gpu, "ConvTranspose2d")?.tensor()?;
        let g = conv2d_transpose_backward(&x, &self.params.weight, dy, self.cfg, self.output_padding, self.params.bias.is_some())?;
        self.params.accumulate(Some(g.dw), g.db)?;
        Ok(g.dx)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        self.params.state(prefix)
    }
}

// ------------------------------------------------------------------ Linear

/// `y = x·Wᵀ + b`; weight `[out, in]`, bias `[out]`, input `[n, in]`.
pub struct Linear {
    /// Weight `[out, in]` and bias `[out]`.
    pub params: WeightBias,
    x: Option<Saved>,
    precision: Precision,
}

impl Linear {
    /// `inputs → outputs` features.
    pub fn new(dev: &Device, inputs: usize, outputs: usize, bias: bool, init: &mut Initializer) -> Result<Linear> {
        Ok(Linear { params: WeightBias::new(dev, &[outputs, inputs], inputs, outputs, bias, init)?, x: None, precision: Precision::F32 })
    }
}

impl Linear {
    fn forward_with(&mut self, x: &Tensor, mode: Mode, act: Option<Activation>) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let cfg = GemmConfig { trans_b: true, ..GemmConfig::default() };
        // Bias (and a ReLU) ride in the GEMM's epilogue: one dispatch, not two or three.
        let y = gemm_epilogue(x, &self.params.weight, self.params.bias.as_ref(), act, cfg)?;
        self.x = Saved::keep_if(x, mode, self.precision)?;
        Ok(y)
    }
}

impl Linear {
    /// dW [out, in] = dyᵀ [out, n] · x [n, in] (and db), accumulated; nothing when frozen.
    fn weight_grads(&mut self, dy: &Tensor, x: &Tensor) -> Result<()> {
        if !self.params.trains() {
            return Ok(());
        }
        let cfg = GemmConfig { trans_a: true, ..GemmConfig::default() };
        // The bias gradient (dy's column sums) comes from the same pass over dy.
        let (dw, db) = match self.params.bias {
            Some(_) => gemm_row_sums(dy, x, cfg).map(|(dw, db)| (dw, Some(db)))?,
            None => (gemm(dy, x, cfg)?, None),
        };
        self.params.accumulate(Some(dw), db)
    }
}

impl Layer for Linear {
    fn release(&mut self) {
        self.x = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        "Linear"
    }
    fn describe(&self) -> String {
        let s = self.params.weight.shape();
        format!("Linear({}→{})", s[1], s[0])
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let s = self.params.weight.shape();
        match input {
            [n, f] if *f == s[1] => Ok(vec![*n, s[0]]),
            _ => shape_err("Linear", format!("input must be [batch, {}], got {input:?}", s[1])),
        }
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, None)
    }
    fn forward_fused(&mut self, x: &Tensor, mode: Mode, act: Activation) -> Result<Option<Tensor>> {
        self.forward_with(x, mode, Some(act)).map(Some)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        // dW [out, in] = dyᵀ [out, n] · x [n, in];  dx [n, in] = dy [n, out] · W [out, in]
        self.backward_params(dy)?;
        gemm(dy, &self.params.weight, GemmConfig::default())
    }
    /// The ReLU before this layer: its backward rides in the dx GEMM's
    /// epilogue, from this layer's input (the ReLU's output).
    fn backward_fused(&mut self, dy: &Tensor, act: Activation) -> Result<Option<Tensor>> {
        if act != Activation::Relu {
            return Ok(None);
        }
        // x read back once (from f16 under mixed precision) serves both GEMMs.
        let x = take_saved(&mut self.x, Saved::on_gpu, "Linear")?.tensor()?;
        self.weight_grads(dy, &x)?;
        gemm_relu_backward(dy, &self.params.weight, &x, GemmConfig::default()).map(Some)
    }
    fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        let x = take_saved(&mut self.x, Saved::on_gpu, "Linear")?;
        if !self.params.trains() {
            return Ok(());
        }
        self.weight_grads(dy, &x.tensor()?)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        self.params.state(prefix)
    }
}

// ------------------------------------------------------------------ pooling

/// Max pooling; keeps the argmax mask for backward.
pub struct MaxPool2d {
    /// Window, stride, padding, ceil mode.
    pub cfg: Pool2dConfig,
    cache: Option<(Indices, Saved)>,
    precision: Precision,
}

impl MaxPool2d {
    /// Max pooling with `cfg`'s window.
    pub fn new(cfg: Pool2dConfig) -> MaxPool2d {
        MaxPool2d { cfg, cache: None, precision: Precision::F32 }
    }
}

impl MaxPool2d {
    /// The cache, taken on the GPU (see [`take_saved`]); on the CPU it stays.
    fn take_cache(&mut self) -> Option<(Indices, Saved)> {
        if self.cache.as_ref().is_some_and(|(_, x)| x.on_gpu()) {
            self.cache.take()
        } else {
            None
        }
    }
}

impl Layer for MaxPool2d {
    fn release(&mut self) {
        self.cache = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        "MaxPool2d"
    }
    fn describe(&self) -> String {
        let c = &self.cfg;
        let pad = if c.padding == [0, 0] { String::new() } else { format!(", padding {}", pair(c.padding)) };
        format!("MaxPool2d({}, stride {}{pad})", pair(c.kernel), pair(c.stride))
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Pool2dGeometry::new("maxpool", input, self.cfg)?.output_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (y, mask) = maxpool_forward(x, self.cfg)?;
        // The input (shared, not copied) serves a fused ReLU backward.
        self.cache = Saved::keep_if(x, mode, self.precision)?.map(|x| (mask, x));
        Ok(y)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let taken = self.take_cache();
        let (mask, x) = taken.as_ref().or(self.cache.as_ref()).ok_or_else(|| no_cache("MaxPool2d"))?;
        maxpool_backward(dy, mask, x.shape(), self.cfg)
    }
    /// ReLU's backward reads this layer's input (its output) in the same kernel.
    fn backward_fused(&mut self, dy: &Tensor, act: Activation) -> Result<Option<Tensor>> {
        if act != Activation::Relu {
            return Ok(None);
        }
        let taken = self.take_cache();
        let (mask, x) = taken.as_ref().or(self.cache.as_ref()).ok_or_else(|| no_cache("MaxPool2d"))?;
        match x {
            Saved::F32(x) => maxpool_backward_relu(dy, mask, x, self.cfg).map(Some),
            Saved::F16(x) => maxpool_backward_relu_half(dy, mask, x, self.cfg).map(Some),
        }
    }
}

/// Average pooling.
pub struct AvgPool2d {
    /// Window, stride, padding, divisor rule.
    pub cfg: Pool2dConfig,
    input: Option<Vec<usize>>,
}

impl AvgPool2d {
    /// Average pooling with `cfg`'s window.
    pub fn new(cfg: Pool2dConfig) -> AvgPool2d {
        AvgPool2d { cfg, input: None }
    }
}

impl Layer for AvgPool2d {
    fn kind(&self) -> &'static str {
        "AvgPool2d"
    }
    fn describe(&self) -> String {
        let c = &self.cfg;
        let pad = if c.padding == [0, 0] { String::new() } else { format!(", padding {}", pair(c.padding)) };
        format!("AvgPool2d({}, stride {}{pad})", pair(c.kernel), pair(c.stride))
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Pool2dGeometry::new("avgpool", input, self.cfg)?.output_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.input = (mode == Mode::Train).then(|| x.shape().to_vec());
        avgpool_forward(x, self.cfg)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        avgpool_backward(dy, self.input.as_ref().ok_or_else(|| no_cache("AvgPool2d"))?, self.cfg)
    }
}

/// Global average pooling: `[n, c, h, w] → [n, c, 1, 1]`.
#[derive(Default)]
pub struct GlobalAvgPool {
    input: Option<Vec<usize>>,
}

impl GlobalAvgPool {
    /// Global average pooling.
    pub fn new() -> GlobalAvgPool {
        GlobalAvgPool::default()
    }
}

impl Layer for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "GlobalAvgPool"
    }
    fn describe(&self) -> String {
        "GlobalAvgPool".into()
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Pool2dGeometry::global(input)?.output_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.input = (mode == Mode::Train).then(|| x.shape().to_vec());
        avgpool_global_forward(x)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        avgpool_global_backward(dy, self.input.as_ref().ok_or_else(|| no_cache("GlobalAvgPool"))?)
    }
}

/// Adaptive average pooling to a fixed output size (PyTorch's
/// `AdaptiveAvgPool2d`), whatever the input size: `[n, c, h, w] → [n, c, oh, ow]`.
pub struct AdaptiveAvgPool2d {
    /// `[oh, ow]`.
    pub output: [usize; 2],
    input: Option<Vec<usize>>,
}

impl AdaptiveAvgPool2d {
    /// Pools any input to `[oh, ow]`.
    pub fn new(output: [usize; 2]) -> AdaptiveAvgPool2d {
        AdaptiveAvgPool2d { output, input: None }
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn kind(&self) -> &'static str {
        "AdaptiveAvgPool2d"
    }
    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d({})", pair(self.output))
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(Pool2dGeometry::adaptive("AdaptiveAvgPool2d", input, self.output)?.output_shape().to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.input = (mode == Mode::Train).then(|| x.shape().to_vec());
        avgpool_adaptive_forward(x, self.output)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        avgpool_adaptive_backward(dy, self.input.as_ref().ok_or_else(|| no_cache("AdaptiveAvgPool2d"))?, self.output)
    }
}

/// Upsampling (PyTorch's `Upsample`): by an integer factor or to a fixed size,
/// nearest or bilinear (`align_corners = false`).
pub struct Upsample {
    /// Nearest or bilinear.
    pub mode: UpsampleMode,
    scale: usize,
    size: Option<[usize; 2]>,
    input: Option<Vec<usize>>,
}

impl Upsample {
    /// `[h, w] → [h·factor, w·factor]`.
    pub fn scale(factor: usize, mode: UpsampleMode) -> Upsample {
        Upsample { mode, scale: factor, size: None, input: None }
    }

    /// `→ size`, whatever the input size.
    pub fn to_size(size: [usize; 2], mode: UpsampleMode) -> Upsample {
        Upsample { mode, scale: 1, size: Some(size), input: None }
    }

    fn out_size(&self, input: &[usize]) -> Result<[usize; 2]> {
        match (self.size, input) {
            (Some(s), _) => Ok(s),
            (None, &[_, _, h, w]) if self.scale > 0 => Ok([h * self.scale, w * self.scale]),
            _ => shape_err("Upsample", format!("needs NCHW input and a factor ≥ 1, got {input:?} and factor {}", self.scale)),
        }
    }
}

impl Layer for Upsample {
    fn kind(&self) -> &'static str {
        "Upsample"
    }
    fn describe(&self) -> String {
        match self.size {
            Some(s) => format!("Upsample({:?}, to {})", self.mode, pair(s)),
            None => format!("Upsample({:?}, ×{})", self.mode, self.scale),
        }
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [oh, ow] = self.out_size(input)?;
        match input {
            &[n, c, _, _] => Ok(vec![n, c, oh, ow]),
            _ => shape_err("Upsample", format!("input must be NCHW (4-D), got {input:?}")),
        }
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.input = (mode == Mode::Train).then(|| x.shape().to_vec());
        upsample_forward(x, self.out_size(x.shape())?, self.mode)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        upsample_backward(dy, self.input.as_ref().ok_or_else(|| no_cache("Upsample"))?, self.mode)
    }
}

/// Softmax or log-softmax along one axis (PyTorch's `Softmax(dim)`,
/// `LogSoftmax(dim)`; a negative `dim` counts from the end).
pub struct Softmax {
    /// The axis (negative: from the end).
    pub dim: isize,
    /// Log-softmax instead of softmax.
    pub log: bool,
    y: Option<Tensor>,
}

impl Softmax {
    /// Softmax along `dim`.
    pub fn new(dim: isize) -> Softmax {
        Softmax { dim, log: false, y: None }
    }

    /// Log-softmax, for `ops::loss::loss_nll`.
    pub fn log(dim: isize) -> Softmax {
        Softmax { dim, log: true, y: None }
    }
}

impl Layer for Softmax {
    fn release(&mut self) {
        self.y = None;
    }
    fn kind(&self) -> &'static str {
        if self.log {
            "LogSoftmax"
        } else {
            "Softmax"
        }
    }
    fn describe(&self) -> String {
        format!("{}(dim {})", self.kind(), self.dim)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let rank = input.len() as isize;
        if self.dim < -rank || self.dim >= rank {
            return shape_err("Softmax", format!("dim {} is out of range for input {input:?}", self.dim));
        }
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = softmax_forward(x, self.dim, self.log)?;
        self.y = (mode == Mode::Train).then(|| y.clone());
        Ok(y)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        softmax_backward(&take_saved(&mut self.y, gpu, "Softmax")?, dy, self.dim, self.log)
    }
}

// ------------------------------------------------------------------ batch-norm

/// Batch normalisation over `[n, c, h, w]` (2-d) or `[n, c]` (1-d).
pub struct BatchNorm {
    /// Scale γ, `[c]`.
    pub gamma: Tensor,
    /// Shift β, `[c]`.
    pub beta: Tensor,
    /// `[2, c]`: running mean; running variance.
    pub running: Tensor,
    /// Eps and momentum (PyTorch's 1e-5 and 0.1).
    pub cfg: BatchNormConfig,
    spatial: bool,
    gg: Grad,
    gbeta: Grad,
    cache: Option<(Saved, Tensor)>,
    unread_stats: Option<Tensor>,
    precision: Precision,
}

impl BatchNorm {
    /// BatchNorm2d: per channel over n, h and w.
    pub fn new_2d(dev: &Device, channels: usize) -> Result<BatchNorm> {
        BatchNorm::new(dev, channels, true)
    }

    /// BatchNorm1d: per feature over n.
    pub fn new_1d(dev: &Device, features: usize) -> Result<BatchNorm> {
        BatchNorm::new(dev, features, false)
    }

    fn new(dev: &Device, c: usize, spatial: bool) -> Result<BatchNorm> {
        let gamma = Tensor::full(dev, &[c], 1.0)?;
        let beta = Tensor::zeros(dev, &[c])?;
        let running = Tensor::from_vec(dev, &[2, c], [vec![0.0; c], vec![1.0; c]].concat())?;
        Ok(BatchNorm { gg: Grad::new(&gamma)?, gbeta: Grad::new(&beta)?, gamma, beta, running, cfg: BatchNormConfig::default(), spatial, cache: None, unread_stats: None, precision: Precision::F32 })
    }
}

impl BatchNorm {
    /// Frozen (γ and β both): normalises with the running statistics and
    /// leaves them alone, in training too (Keras's `trainable = False`).
    fn frozen(&self) -> bool {
        self.gg.is_frozen() && self.gbeta.is_frozen()
    }

    fn forward_with(&mut self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let affine = Some(Affine { gamma: &self.gamma, beta: &self.beta });
        match mode {
            Mode::Train if self.frozen() => {
                // Backward goes through the running statistics; the batch
                // statistics it is given (made once, kept) are not read.
                if self.unread_stats.is_none() {
                    self.unread_stats = Some(Tensor::zeros(&x.device(), &[3, self.gamma.numel()])?);
                }
                let y = batchnorm_forward_eval_relu(x, Some(Affine { gamma: &self.gamma, beta: &self.beta }), &self.running, self.cfg, relu)?;
                self.cache = Some((Saved::keep(x, self.precision)?, self.unread_stats.clone().expect("made above")));
                Ok(y)
            }
            Mode::Train => {
                let (y, stats) = batchnorm_forward_train_relu(x, affine, &mut self.running, self.cfg, relu)?;
                self.cache = Some((Saved::keep(x, self.precision)?, stats));
                Ok(y)
            }
            Mode::Eval => {
                self.cache = None;
                batchnorm_forward_eval_relu(x, affine, &self.running, self.cfg, relu)
            }
        }
    }
}

impl Layer for BatchNorm {
    fn release(&mut self) {
        self.cache = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        if self.spatial {
            "BatchNorm2d"
        } else {
            "BatchNorm1d"
        }
    }
    fn describe(&self) -> String {
        format!("{}({})", self.kind(), self.gamma.numel())
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let rank = if self.spatial { 4 } else { 2 };
        if input.len() != rank || input[1] != self.gamma.numel() {
            return shape_err("batchnorm", format!("{} expects {rank}-d input with {} channels, got {input:?}", self.kind(), self.gamma.numel()));
        }
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_with(x, mode, false)
    }
    /// A ReLU after batch-norm is applied by the normalising kernel.
    fn forward_fused(&mut self, x: &Tensor, mode: Mode, act: Activation) -> Result<Option<Tensor>> {
        if act != Activation::Relu {
            return Ok(None);
        }
        self.forward_with(x, mode, true).map(Some)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let (x, stats) = take_saved(&mut self.cache, |(x, _)| x.on_gpu(), "BatchNorm")?;
        let affine = Some(Affine { gamma: &self.gamma, beta: &self.beta });
        let g = match &x {
            Saved::F32(x) => batchnorm_backward(x, dy, affine, &stats, &self.running, !self.frozen(), self.cfg)?,
            Saved::F16(x) => batchnorm_backward_half(x, dy, affine, &stats, &self.running, !self.frozen(), self.cfg)?,
        };
        self.gg.accumulate(g.dgamma)?;
        self.gbeta.accumulate(g.dbeta)?;
        Ok(g.dx)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        vec![
            StateEntry::param(join(prefix, "weight"), &mut self.gamma, &mut self.gg),
            StateEntry::param(join(prefix, "bias"), &mut self.beta, &mut self.gbeta),
            StateEntry::buffer(join(prefix, "running_stats"), &mut self.running),
        ]
    }
}

// ------------------------------------------------------------------ layer and group norm

/// Layer normalisation over the trailing dims (PyTorch's `LayerNorm`) or group
/// normalisation over channel groups (`GroupNorm`, via [`LayerNorm::group_norm`]),
/// with a learnable `weight` and `bias` (eps 1e-5, the biased variance).
pub struct LayerNorm {
    /// Scale, the normalised shape (LayerNorm) or `[channels]` (GroupNorm).
    pub weight: Tensor,
    /// Shift, same shape as `weight`.
    pub bias: Tensor,
    /// Trailing dims or channel groups.
    pub kind: NormKind,
    /// Added to the variance (1e-5).
    pub eps: f32,
    gw: Grad,
    gb: Grad,
    cache: Option<(Saved, Tensor)>,
    precision: Precision,
}

impl LayerNorm {
    /// Normalises the last `normalized_shape.len()` dims, which must equal `normalized_shape`.
    pub fn new(dev: &Device, normalized_shape: &[usize]) -> Result<LayerNorm> {
        LayerNorm::with(dev, normalized_shape, NormKind::Layer { dims: normalized_shape.len() })
    }

    /// GroupNorm: `channels` split into `groups`, each normalised over its channels and positions.
    pub fn group_norm(dev: &Device, groups: usize, channels: usize) -> Result<LayerNorm> {
        if groups == 0 || channels % groups != 0 {
            return Err(Error::InvalidArgument { op: "GroupNorm", msg: format!("{groups} groups must divide {channels} channels") });
        }
        LayerNorm::with(dev, &[channels], NormKind::Group { groups })
    }

    fn with(dev: &Device, shape: &[usize], kind: NormKind) -> Result<LayerNorm> {
        let weight = Tensor::full(dev, shape, 1.0)?;
        let bias = Tensor::zeros(dev, shape)?;
        Ok(LayerNorm { gw: Grad::new(&weight)?, gb: Grad::new(&bias)?, weight, bias, kind, eps: 1e-5, cache: None, precision: Precision::F32 })
    }
}

impl Layer for LayerNorm {
    fn release(&mut self) {
        self.cache = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn kind(&self) -> &'static str {
        match self.kind {
            NormKind::Layer { .. } => "LayerNorm",
            NormKind::Group { .. } => "GroupNorm",
        }
    }
    fn describe(&self) -> String {
        match self.kind {
            NormKind::Layer { .. } => format!("LayerNorm({:?})", self.weight.shape()),
            NormKind::Group { groups } => format!("GroupNorm({groups} groups, {} channels)", self.weight.numel()),
        }
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let ok = match self.kind {
            NormKind::Layer { dims } => input.len() >= dims && input[input.len() - dims..] == *self.weight.shape(),
            NormKind::Group { .. } => input.len() >= 2 && input[1] == self.weight.numel(),
        };
        if !ok {
            return shape_err("layernorm", format!("{} expects input ending in (or with channels) {:?}, got {input:?}", self.describe(), self.weight.shape()));
        }
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let (y, stats) = layernorm_forward(x, Some((&self.weight, &self.bias)), self.kind, self.eps)?;
        self.cache = Saved::keep_if(x, mode, self.precision)?.map(|x| (x, stats));
        Ok(y)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let (x, stats) = take_saved(&mut self.cache, |(x, _)| x.on_gpu(), "LayerNorm")?;
        let x = x.tensor()?;
        let g = layernorm_backward(&x, dy, Some(&self.weight), &stats, self.kind, self.eps)?;
        if let Some((dw, db)) = g.affine {
            self.gw.accumulate(dw)?;
            self.gb.accumulate(db)?;
        }
        Ok(g.dx)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        vec![StateEntry::param(join(prefix, "weight"), &mut self.weight, &mut self.gw), StateEntry::param(join(prefix, "bias"), &mut self.bias, &mut self.gb)]
    }
}

// ------------------------------------------------------------------ dropout

/// Inverted dropout; a fresh mask every training forward (seed, step).
pub struct Dropout {
    /// Probability of zeroing an element.
    pub p: f32,
    seed: u64,
    step: u32,
    last: Option<DropoutConfig>,
}

impl Dropout {
    /// Dropout with probability `p` in [0, 1); masks seeded from `init`.
    pub fn new(p: f32, init: &mut Initializer) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument { op: "dropout", msg: format!("p = {p} must be in [0, 1)") });
        }
        Ok(Dropout { p, seed: init.next_seed(), step: 0, last: None })
    }
}

impl Layer for Dropout {
    fn kind(&self) -> &'static str {
        "Dropout"
    }
    fn describe(&self) -> String {
        format!("Dropout(p = {})", self.p)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let cfg = DropoutConfig { p: self.p, seed: self.seed, step: self.step };
        if mode == Mode::Train {
            self.step = self.step.wrapping_add(1);
            self.last = Some(cfg);
        }
        dropout_forward(x, cfg, mode == Mode::Train)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        dropout_backward(dy, self.last.ok_or_else(|| no_cache("Dropout"))?)
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        vec![StateEntry::counter(join(prefix, "step"), &mut self.step)]
    }
}

// ------------------------------------------------------------------ activations, flatten

/// An activation function as a layer.
pub struct ActivationLayer {
    /// Which function.
    pub act: Activation,
    x: Option<Saved>,
    precision: Precision,
}

impl ActivationLayer {
    /// The activation as a layer.
    pub fn new(act: Activation) -> ActivationLayer {
        ActivationLayer { act, x: None, precision: Precision::F32 }
    }
}

impl Layer for ActivationLayer {
    fn kind(&self) -> &'static str {
        "Activation"
    }
    fn describe(&self) -> String {
        format!("{:?}", self.act)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.x = Saved::keep_if(x, mode, self.precision)?;
        activation_forward(x, self.act)
    }
    fn fusable_activation(&self) -> Option<Activation> {
        (self.act == Activation::Relu).then_some(self.act)
    }
    /// ReLU's derivative from its output: y > 0 exactly where x > 0 (NaN: 0 both ways).
    fn adopt_output(&mut self, y: &Tensor, mode: Mode) -> Result<()> {
        self.x = Saved::keep_if(y, mode, self.precision)?;
        Ok(())
    }
    fn release(&mut self) {
        self.x = None;
    }
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        activation_backward(&take_saved(&mut self.x, Saved::on_gpu, "Activation")?.tensor()?, dy, self.act)
    }
}

/// `[n, c, h, w] → [n, c·h·w]` in NCHW row-major order (no data movement).
#[derive(Default)]
pub struct Flatten {
    input: Option<Vec<usize>>,
}

impl Flatten {
    /// Flattens every axis after the batch axis.
    pub fn new() -> Flatten {
        Flatten::default()
    }
}

impl Layer for Flatten {
    fn kind(&self) -> &'static str {
        "Flatten"
    }
    fn describe(&self) -> String {
        "Flatten".into()
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [n, rest @ ..] if !rest.is_empty() => Ok(vec![*n, rest.iter().product()]),
            _ => shape_err("Flatten", format!("input must have a batch axis and at least one more, got {input:?}")),
        }
    }
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let out = self.output_shape(x.shape())?;
        self.input = Some(x.shape().to_vec());
        x.clone().reshape(&out)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        dy.clone().reshape(self.input.as_ref().ok_or_else(|| no_cache("Flatten"))?)
    }
}
