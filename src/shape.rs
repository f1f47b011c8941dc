//! Shape arithmetic shared by the CPU path, the GPU path and the layers.

use crate::error::{shape_err, Result};

/// Number of elements of a shape (1 for a scalar shape `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Checks that no dimension is zero and that the element count fits the
/// `u32` indices the kernels use.
pub fn check_nonempty(op: &'static str, what: &str, shape: &[usize]) -> Result<usize> {
    if shape.contains(&0) {
        return shape_err(op, format!("{what} has shape {shape:?}, with a zero-size dimension"));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= u32::MAX as usize);
    match n {
        Some(n) => Ok(n),
        None => shape_err(op, format!("{what} has shape {shape:?}, more than 2^32-1 elements")),
    }
}

/// `floor((len + 2·pad − dil·(k−1) − 1) / stride) + 1`, or `None` when the
/// (dilated) kernel does not fit the padded input.
fn conv_out_len(len: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let span = dil * (k - 1) + 1;
    let padded = len + 2 * pad;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

/// Settings of a 2-d convolution (PyTorch's `Conv2d` arguments), per axis `[h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between windows, `[h, w]`.
    pub stride: [usize; 2],
    /// Zeros added on each side, `[h, w]`.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, `[h, w]`.
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels split into this many independent convolutions.
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

impl Conv2dConfig {
    /// Sets both strides.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Sets both paddings.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// Sets both dilations.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Sets the group count.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// How a convolution pads its input, as PyTorch's `padding=` argument allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Output size = input size (stride 1 only). An odd total, as with even
    /// kernels, puts the extra row and column at the bottom and right, as PyTorch.
    Same,
    /// No padding.
    Valid,
    /// `[top, bottom, left, right]`.
    Sides([usize; 4]),
}

impl Padding {
    /// Symmetric `[ph, pw]` padding.
    pub fn symmetric([ph, pw]: [usize; 2]) -> Padding {
        Padding::Sides([ph, ph, pw, pw])
    }

    /// `[top, bottom, left, right]` for a kernel, dilation and stride.
    pub fn sides(&self, kernel: [usize; 2], dilation: [usize; 2], stride: [usize; 2]) -> Result<[usize; 4]> {
        match *self {
            Padding::Valid => Ok([0; 4]),
            Padding::Sides(s) => Ok(s),
            Padding::Same if stride != [1, 1] => Err(crate::Error::InvalidArgument { op: "conv2d", msg: format!("padding `same` needs stride 1, got {stride:?} (as PyTorch)") }),
            Padding::Same => {
                let (th, tw) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1));
                Ok([th / 2, th - th / 2, tw / 2, tw - tw / 2])
            }
        }
    }
}

/// The validated geometry of one convolution: input `[n, c_in, h, w]`,
/// weight `[c_out, c_in/groups, kh, kw]`, output `[n, c_out, oh, ow]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// The settings this geometry was made from.
    pub cfg: Conv2dConfig,
}

impl Conv2dGeometry {
    /// Validates an input `[n, c_in, h, w]` and weight `[c_out, c_in/groups, kh, kw]` under `cfg`; errors name the shapes.
    pub fn new(input: &[usize], weight: &[usize], cfg: Conv2dConfig) -> Result<Conv2dGeometry> {
        const OP: &str = "conv2d";
        let &[n, c_in, h, w] = input else {
            return shape_err(OP, format!("input must be NCHW (4-D), got {input:?}"));
        };
        let &[c_out, c_per_group, kh, kw] = weight else {
            return shape_err(OP, format!("weight must be [C_out, C_in/groups, kH, kW], got {weight:?}"));
        };
        check_nonempty(OP, "input", input)?;
        check_nonempty(OP, "weight", weight)?;
        let bad = |msg: String| Err(crate::Error::InvalidArgument { op: OP, msg });
        if cfg.stride.contains(&0) {
            return bad(format!("stride {:?} must be positive", cfg.stride));
        }
        if cfg.dilation.contains(&0) {
            return bad(format!("dilation {:?} must be positive", cfg.dilation));
        }
        let g = cfg.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 {
            return bad(format!("groups = {g} must divide both C_in = {c_in} and C_out = {c_out}"));
        }
        if c_per_group * g != c_in {
            return shape_err(OP, format!("input {input:?} has {c_in} channels but weight {weight:?} × groups {g} expects {}", c_per_group * g));
        }
        let oh = conv_out_len(h, kh, cfg.stride[0], cfg.padding[0], cfg.dilation[0]);
        let ow = conv_out_len(w, kw, cfg.stride[1], cfg.padding[1], cfg.dilation[1]);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return shape_err(
                OP,
                format!(
                    "kernel {kh}×{kw} (dilation {:?}) is larger than the padded input {}×{} (input {input:?}, padding {:?})",
                    cfg.dilation,
                    h + 2 * cfg.padding[0],
                    w + 2 * cfg.padding[1],
                    cfg.padding
                ),
            );
        };
        let geo = Conv2dGeometry { n, c_in, h, w, c_out, kh, kw, oh, ow, cfg };
        check_nonempty(OP, "output", &geo.output_shape())?;
        Ok(geo)
    }

    /// A transposed convolution (PyTorch's `ConvTranspose2d`): input `[n, c_in,
    /// h, w]`, weight `[c_in, c_out/groups, kh, kw]`, output `[n, c_out, oh, ow]`
    /// with `oh = (h − 1)·s − 2p + d(kh − 1) + output_padding + 1`. Returned as
    /// the geometry of the convolution it is the adjoint of: that convolution's
    /// input is the transposed output, and its output the transposed input.
    pub fn transposed(input: &[usize], weight: &[usize], cfg: Conv2dConfig, output_padding: [usize; 2]) -> Result<Conv2dGeometry> {
        const OP: &str = "conv2d_transpose";
        let &[n, c_in, h, w] = input else {
            return shape_err(OP, format!("input must be NCHW (4-D), got {input:?}"));
        };
        let &[wc_in, c_out_per_group, kh, kw] = weight else {
            return shape_err(OP, format!("weight must be [C_in, C_out/groups, kH, kW], got {weight:?}"));
        };
        check_nonempty(OP, "input", input)?;
        check_nonempty(OP, "weight", weight)?;
        if wc_in != c_in {
            return shape_err(OP, format!("input {input:?} has {c_in} channels but weight {weight:?} expects {wc_in}"));
        }
        let bad = |msg: String| Err(crate::Error::InvalidArgument { op: OP, msg });
        if cfg.stride.contains(&0) || cfg.dilation.contains(&0) || cfg.groups == 0 || c_in % cfg.groups != 0 {
            return bad(format!("stride {:?} and dilation {:?} must be positive and groups {} must divide C_in = {c_in}", cfg.stride, cfg.dilation, cfg.groups));
        }
        for axis in 0..2 {
            if output_padding[axis] >= cfg.stride[axis].max(cfg.dilation[axis]) {
                return bad(format!("output_padding {output_padding:?} must be smaller than stride {:?} or dilation {:?}", cfg.stride, cfg.dilation));
            }
        }
        let out_len = |len: usize, k: usize, axis: usize| {
            let full = (len - 1) * cfg.stride[axis] + cfg.dilation[axis] * (k - 1) + output_padding[axis] + 1;
            full.checked_sub(2 * cfg.padding[axis]).filter(|&v| v > 0)
        };
        let (Some(oh), Some(ow)) = (out_len(h, kh, 0), out_len(w, kw, 1)) else {
            return shape_err(OP, format!("padding {:?} leaves no output for input {input:?} and kernel {kh}×{kw}", cfg.padding));
        };
        let geo = Conv2dGeometry::new(&[n, c_out_per_group * cfg.groups, oh, ow], weight, cfg)?;
        debug_assert_eq!((geo.oh, geo.ow), (h, w), "the adjoint convolution maps the output back to the input's size");
        Ok(geo)
    }

    /// `[n, c_in, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    /// `[c_out, c_in/groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.cfg.groups, self.kh, self.kw]
    }
    /// `[n, c_out, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.oh, self.ow]
    }
    /// Rows of one group's column matrix: `C_in/groups · kH · kW`.
    pub fn col_rows(&self) -> usize {
        self.c_in / self.cfg.groups * self.kh * self.kw
    }
    /// Output pixels per image.
    pub fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// A 1×1 convolution that is a plain GEMM per image (no im2col needed).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.cfg.stride == [1, 1] && self.cfg.padding == [0, 0] && self.cfg.groups == 1
    }
    /// Multiply-adds × 2 of the forward pass.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.out_pixels() * self.col_rows()) as f64
    }
    /// Images per chunk so that the column matrix `[C_in·kH·kW, nb·OH·OW]`
    /// (and the permuted output) stays within `max_bytes`.
    pub fn images_per_chunk(&self, max_bytes: u64) -> usize {
        let per_image = (self.c_in * self.kh * self.kw).max(self.c_out) * self.out_pixels() * 4;
        ((max_bytes / per_image.max(1) as u64) as usize).clamp(1, self.n)
    }
    /// The same geometry for `n` images.
    pub fn with_batch(&self, n: usize) -> Conv2dGeometry {
        Conv2dGeometry { n, ..*self }
    }
}

/// Settings of a 2-d pooling window, per axis `[h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    /// Window size, `[h, w]`.
    pub kernel: [usize; 2],
    /// Step between windows, `[h, w]`.
    pub stride: [usize; 2],
    /// Implicit padding on each side, `[h, w]` (−∞ for max pooling, 0 for average).
    pub padding: [usize; 2],
    /// Round the output size up (a last, partial window may start in the input or left padding).
    pub ceil_mode: bool,
    /// Average pooling: divide by the window size including padding (PyTorch's default).
    pub count_include_pad: bool,
}

impl Pool2dConfig {
    /// A k×k window with stride k (PyTorch's default stride), no padding.
    pub fn new(k: usize) -> Pool2dConfig {
        Pool2dConfig { kernel: [k, k], stride: [k, k], padding: [0, 0], ceil_mode: false, count_include_pad: true }
    }
    /// Sets both strides.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Sets both paddings.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// Rounds the output size up, as PyTorch's `ceil_mode`.
    pub fn ceil_mode(mut self, on: bool) -> Self {
        self.ceil_mode = on;
        self
    }
    /// Whether average pooling counts padding in its divisor.
    pub fn count_include_pad(mut self, on: bool) -> Self {
        self.count_include_pad = on;
        self
    }
}

/// PyTorch's pooling output length, ceil mode included: a window that would
/// start in the right padding is dropped.
fn pool_out_len(len: usize, k: usize, stride: usize, pad: usize, ceil: bool) -> Option<usize> {
    let padded = len + 2 * pad;
    if padded < k {
        return None;
    }
    let span = padded - k;
    let mut out = if ceil { span.div_ceil(stride) } else { span / stride } + 1;
    if ceil && (out - 1) * stride >= len + pad {
        out -= 1;
    }
    Some(out)
}

/// The validated geometry of a pooling op over `[n, c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// The window settings.
    pub cfg: Pool2dConfig,
}

impl Pool2dGeometry {
    /// Validates an input `[n, c, h, w]` under `cfg` (`op` names the caller in errors).
    pub fn new(op: &'static str, input: &[usize], cfg: Pool2dConfig) -> Result<Pool2dGeometry> {
        let &[n, c, h, w] = input else {
            return shape_err(op, format!("input must be NCHW (4-D), got {input:?}"));
        };
        check_nonempty(op, "input", input)?;
        let bad = |msg: String| Err(crate::Error::InvalidArgument { op, msg });
        if cfg.kernel.contains(&0) || cfg.stride.contains(&0) {
            return bad(format!("kernel {:?} and stride {:?} must be positive", cfg.kernel, cfg.stride));
        }
        if cfg.padding[0] * 2 > cfg.kernel[0] || cfg.padding[1] * 2 > cfg.kernel[1] {
            return bad(format!("padding {:?} must be at most half the kernel {:?}", cfg.padding, cfg.kernel));
        }
        let oh = pool_out_len(h, cfg.kernel[0], cfg.stride[0], cfg.padding[0], cfg.ceil_mode);
        let ow = pool_out_len(w, cfg.kernel[1], cfg.stride[1], cfg.padding[1], cfg.ceil_mode);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return shape_err(op, format!("window {:?} is larger than the padded input {input:?} (padding {:?})", cfg.kernel, cfg.padding));
        };
        let geo = Pool2dGeometry { n, c, h, w, oh, ow, cfg };
        check_nonempty(op, "output", &geo.output_shape())?;
        Ok(geo)
    }

    /// Global average pooling: one window covering the whole plane.
    pub fn global(input: &[usize]) -> Result<Pool2dGeometry> {
        let &[_, _, h, w] = input else {
            return shape_err("global_avg_pool", format!("input must be NCHW (4-D), got {input:?}"));
        };
        let cfg = Pool2dConfig { kernel: [h, w], stride: [1, 1], padding: [0, 0], ceil_mode: false, count_include_pad: true };
        Pool2dGeometry::new("global_avg_pool", input, cfg)
    }

    /// Adaptive pooling to `[oh, ow]` (PyTorch's AdaptiveAvgPool2d): cell
    /// (oy, ox) covers rows `floor(oy·h/oh) .. ceil((oy+1)·h/oh)` and likewise
    /// columns; `cfg` is unused.
    pub fn adaptive(op: &'static str, input: &[usize], output: [usize; 2]) -> Result<Pool2dGeometry> {
        let &[n, c, h, w] = input else {
            return shape_err(op, format!("input must be NCHW (4-D), got {input:?}"));
        };
        check_nonempty(op, "the input", input)?;
        if output.contains(&0) {
            return shape_err(op, format!("output size {output:?} must be at least 1×1"));
        }
        Ok(Pool2dGeometry { n, c, h, w, oh: output[0], ow: output[1], cfg: Pool2dConfig { kernel: [1, 1], stride: [1, 1], padding: [0, 0], ceil_mode: false, count_include_pad: true } })
    }

    /// `[n, c, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }
}
