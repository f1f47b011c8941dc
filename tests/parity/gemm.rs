//! GEMM on every device and both GPU kernels, against an f64 triple loop.

use wgpu_cnn::ops::activation::{activation_forward, Activation};
use wgpu_cnn::ops::gemm::{gemm, gemm_conv_for_tests, gemm_epilogue, gemm_images_for_tests, gemm_into, gemm_relu_backward, gemm_row_sums, gemm_row_sums_cpu, GemmConfig, GemmShape};
use wgpu_cnn::ops::im2col::im2col_cpu;
use wgpu_cnn::shape::{Conv2dConfig, Conv2dGeometry};
use wgpu_cnn::{Device, GemmVariant, Tensor, Tolerance};

use crate::harness::{random, with_gpu};

/// op(A)[b][i][p] for A stored 2-D (broadcast) or 3-D.
#[allow(clippy::too_many_arguments)]
fn at(x: &[f32], batched: bool, rows: usize, cols: usize, b: usize, r: usize, c: usize) -> f64 {
    let base = if batched { b * rows * cols } else { 0 };
    x[base + r * cols + c] as f64
}

/// The oracle: C = alpha·op(A)·op(B) + beta·C0 in f64, plain loops.
fn oracle(a: &[f32], b: &[f32], c0: Option<&[f32]>, s: &GemmShape, cfg: &GemmConfig) -> Vec<f32> {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut out = vec![0f32; s.batch * m * n];
    for bt in 0..s.batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for p in 0..k {
                    let av = if cfg.trans_a { at(a, s.a_batched, k, m, bt, p, i) } else { at(a, s.a_batched, m, k, bt, i, p) };
                    let bv = if cfg.trans_b { at(b, s.b_batched, n, k, bt, j, p) } else { at(b, s.b_batched, k, n, bt, p, j) };
                    acc += av * bv;
                }
                let idx = bt * m * n + i * n + j;
                let prev = c0.map_or(0.0, |c| if cfg.beta == 0.0 { 0.0 } else { cfg.beta as f64 * c[idx] as f64 });
                out[idx] = (cfg.alpha as f64 * acc + prev) as f32;
            }
        }
    }
    out
}

/// f32 accumulation error grows with K; values are in [-1, 1).
fn tol(k: usize) -> Tolerance {
    Tolerance::new(2e-6 * k as f32, 1e-5)
}

/// Stored shape of A (or B) for the given op-shape and transpose.
fn stored(batch: Option<usize>, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
    let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
    match batch {
        Some(b) => vec![b, r, c],
        None => vec![r, c],
    }
}

/// (batch of A, batch of B, M, N, K)
const CASES: &[(Option<usize>, Option<usize>, usize, usize, usize)] = &[
    (None, None, 1, 1, 1),
    (None, None, 3, 5, 7),
    (None, None, 17, 33, 65),
    (None, None, 64, 64, 64),
    (None, None, 127, 129, 131),
    (None, None, 1000, 3, 17),  // tall-skinny
    (None, None, 3, 1000, 19),  // short-wide
    (None, None, 2, 2, 1000),   // long inner dimension
    (Some(3), Some(3), 9, 11, 13),
    (Some(4), None, 33, 31, 5), // B broadcast over the batch (conv weights)
    (None, Some(2), 7, 66, 65), // A broadcast
    (None, None, 70, 300, 45),  // gemm_blocked_wide on CPU adapters (m ≥ 32, n ≥ 256), ragged edges
    (Some(2), Some(2), 33, 257, 9), // wide, batched, one row and column past a block
    // Few output tiles, long k: split-K on GPUs (partial products, then a reduction).
    (None, None, 6, 25, 5003),  // conv1's weight gradient in LeNet-5, k not a multiple of 16
    (None, None, 33, 2, 4099),  // two row tiles
];

fn check_all(dev: &Device, variant: Option<GemmVariant>) {
    for (ci, &(ba, bb, m, n, k)) in CASES.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let cfg = GemmConfig { trans_a: ta, trans_b: tb, alpha: 1.0, beta: 0.0, variant };
            let (sa, sb) = (stored(ba, m, k, ta), stored(bb, k, n, tb));
            let (av, bv) = (random(ci as u64 * 8 + 1, sa.iter().product()), random(ci as u64 * 8 + 2, sb.iter().product()));
            let a = Tensor::from_vec(dev, &sa, av.clone()).unwrap();
            let b = Tensor::from_vec(dev, &sb, bv.clone()).unwrap();
            let c = gemm(&a, &b, cfg).unwrap();
            let s = GemmShape::infer(&sa, &sb, ta, tb).unwrap();
            assert_eq!(c.shape(), s.out_shape().as_slice());
            let want = oracle(&av, &bv, None, &s, &cfg);
            tol(k).assert(&format!("gemm {m}x{n}x{k} batch {ba:?}/{bb:?} ta={ta} tb={tb} on {dev}"), &c.to_vec().unwrap(), &want);
        }
    }
}

fn check_alpha_beta(dev: &Device, variant: Option<GemmVariant>) {
    let (m, n, k, batch) = (19, 23, 29, 2);
    for (ta, tb) in [(false, false), (true, true)] {
        let cfg = GemmConfig { trans_a: ta, trans_b: tb, alpha: 0.5, beta: -1.5, variant };
        let (sa, sb) = (stored(Some(batch), m, k, ta), stored(Some(batch), k, n, tb));
        let (av, bv, cv) = (random(11, batch * m * k), random(12, batch * k * n), random(13, batch * m * n));
        let a = Tensor::from_vec(dev, &sa, av.clone()).unwrap();
        let b = Tensor::from_vec(dev, &sb, bv.clone()).unwrap();
        let mut c = Tensor::from_vec(dev, &[batch, m, n], cv.clone()).unwrap();
        gemm_into(&a, &b, &mut c, cfg).unwrap();
        let s = GemmShape::infer(&sa, &sb, ta, tb).unwrap();
        tol(k).assert(&format!("gemm alpha/beta on {dev}"), &c.to_vec().unwrap(), &oracle(&av, &bv, Some(&cv), &s, &cfg));
    }
}

/// beta = 0 must not read C: NaN there stays out of the result.
fn check_beta_zero_ignores_c(dev: &Device, variant: Option<GemmVariant>) {
    let a = Tensor::from_vec(dev, &[5, 3], random(21, 15)).unwrap();
    let b = Tensor::from_vec(dev, &[3, 6], random(22, 18)).unwrap();
    let mut c = Tensor::full(dev, &[5, 6], f32::NAN).unwrap();
    gemm_into(&a, &b, &mut c, GemmConfig { variant, ..GemmConfig::default() }).unwrap();
    let want = gemm(&a, &b, GemmConfig { variant, ..GemmConfig::default() }).unwrap().to_vec().unwrap();
    let got = c.to_vec().unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "beta = 0 read C on {dev}: {got:?}");
    tol(3).assert("gemm beta=0", &got, &want);
}

/// Split-K with alpha, beta and a C that beta = 0 must ignore.
fn check_split_k_alpha_beta(dev: &Device, variant: Option<GemmVariant>) {
    let (m, n, k) = (5, 7, 3000);
    let (av, bv, cv) = (random(31, m * k), random(32, k * n), random(33, m * n));
    let a = Tensor::from_vec(dev, &[m, k], av.clone()).unwrap();
    let b = Tensor::from_vec(dev, &[n, k], bv.clone()).unwrap();
    let s = GemmShape::infer(&[m, k], &[n, k], false, true).unwrap();
    for beta in [-1.5, 0.0] {
        let cfg = GemmConfig { trans_a: false, trans_b: true, alpha: 0.5, beta, variant };
        let start = if beta == 0.0 { vec![f32::NAN; m * n] } else { cv.clone() };
        let mut c = Tensor::from_vec(dev, &[m, n], start).unwrap();
        gemm_into(&a, &b, &mut c, cfg).unwrap();
        let want = oracle(&av, &bv, (beta != 0.0).then_some(&cv[..]), &s, &cfg);
        tol(k).assert(&format!("split-K gemm, beta {beta}, on {dev}"), &c.to_vec().unwrap(), &want);
    }
}

/// The epilogue: `op(A)·op(B) + bias` per column against the oracle plus the bias; a fused
/// ReLU equals ReLU after, bit for bit.
fn check_bias(dev: &Device, variant: Option<GemmVariant>) {
    for (i, &(m, n, k, ta, tb)) in [(1, 1, 1, false, false), (7, 13, 5, false, true), (64, 120, 400, false, true), (70, 300, 45, true, false), (33, 257, 9, false, false)].iter().enumerate() {
        let cfg = GemmConfig { trans_a: ta, trans_b: tb, alpha: 0.5, variant, ..GemmConfig::default() };
        let (ashape, bshape) = (if ta { [k, m] } else { [m, k] }, if tb { [n, k] } else { [k, n] });
        let (av, bv, biasv) = (random(40 + i as u64, m * k), random(50 + i as u64, k * n), random(60 + i as u64, n));
        let a = Tensor::from_slice(dev, &ashape, &av).unwrap();
        let b = Tensor::from_slice(dev, &bshape, &bv).unwrap();
        let bias = Tensor::from_slice(dev, &[n], &biasv).unwrap();
        let got = gemm_epilogue(&a, &b, Some(&bias), None, cfg).unwrap();
        assert_eq!(got.shape(), [m, n]);
        // ReLU in the epilogue is exactly ReLU after it (same arithmetic, then max); another
        // activation is applied after the GEMM.
        for act in [Activation::Relu, Activation::Sigmoid] {
            let fused = gemm_epilogue(&a, &b, Some(&bias), Some(act), cfg).unwrap().to_vec().unwrap();
            assert_eq!(fused, activation_forward(&got, act).unwrap().to_vec().unwrap(), "gemm_epilogue + {act:?} {m}×{n}×{k} {variant:?} on {dev}");
        }
        let relu_only = gemm_epilogue(&a, &b, None, Some(Activation::Relu), cfg).unwrap();
        let plain = gemm(&a, &b, cfg).unwrap();
        assert_eq!(relu_only.to_vec().unwrap(), activation_forward(&plain, Activation::Relu).unwrap().to_vec().unwrap());
        // A ReLU's backward in the epilogue: exactly the product masked where the ReLU's output is
        // not positive (a zero output masks too).
        let mut outv = random(70 + i as u64, m * n);
        outv[0] = 0.0;
        let relu_out = Tensor::from_slice(dev, &[m, n], &outv).unwrap();
        let masked = gemm_relu_backward(&a, &b, &relu_out, cfg).unwrap().to_vec().unwrap();
        let want: Vec<f32> = plain.to_vec().unwrap().iter().zip(&outv).map(|(v, o)| v * if *o > 0.0 { 1.0 } else { 0.0 }).collect();
        assert_eq!(masked, want, "gemm_relu_backward {m}×{n}×{k} {variant:?} on {dev}");
        let s = GemmShape::infer(&ashape, &bshape, ta, tb).unwrap();
        let mut want = oracle(&av, &bv, None, &s, &cfg);
        want.iter_mut().enumerate().for_each(|(e, v)| *v += biasv[e % n]);
        tol(k).assert(&format!("gemm_epilogue {m}×{n}×{k} ta={ta} tb={tb} {variant:?} on {dev}"), &got.to_vec().unwrap(), &want);
    }
    let (a, b) = (Tensor::zeros(dev, &[2, 3]).unwrap(), Tensor::zeros(dev, &[3, 4]).unwrap());
    assert!(gemm_epilogue(&a, &b, Some(&Tensor::zeros(dev, &[3]).unwrap()), None, GemmConfig::default()).is_err(), "bias length must be N");
    let e = gemm_relu_backward(&a, &b, &Tensor::zeros(dev, &[4, 2]).unwrap(), GemmConfig::default()).unwrap_err().to_string();
    assert!(e.contains("gemm_relu_backward") && e.contains("[4, 2]"), "{e}");
}

/// The NCHW mappings a convolution's GEMMs use (GPU only: the CPU path
/// permutes): A's k index over images (the weight gradient, k long enough for
/// split-K), then B's columns and C's columns over images (the column gradient,
/// and the forward's store), each starting at a channel offset.
fn check_images(dev: &Device, variant: Option<GemmVariant>) {
    if !dev.is_gpu() {
        return;
    }
    let (images, chans, pixels, c0) = (12, 8, 100, 2);
    let stride = chans * pixels;
    let dy = random(71, images * stride);
    // op(dy)[c][q] = dy[q / pixels][c0 + c][q % pixels], c < 6, q < images·pixels.
    let mat = |rows: usize| -> Vec<f32> {
        let q_len = images * pixels;
        (0..rows * q_len).map(|e| (e / q_len, e % q_len)).map(|(c, q)| dy[(q / pixels) * stride + (c0 + c) * pixels + q % pixels]).collect()
    };
    let dyt = Tensor::from_vec(dev, &[images * stride], dy.clone()).unwrap();
    let images_map = Some((pixels, stride));
    // C[6, 10] = op(A)[6, 1200] · B[10, 1200]ᵀ
    let (m, n, k) = (6, 10, images * pixels);
    let cfg = GemmConfig { trans_b: true, alpha: 1.0, beta: 0.0, variant, ..GemmConfig::default() };
    let s = GemmShape { batch: 1, m, n, k, a_batched: false, b_batched: false };
    let bv = random(72, n * k);
    let b = Tensor::from_vec(dev, &[n, k], bv.clone()).unwrap();
    let mut c = Tensor::from_vec(dev, &[m, n], vec![f32::NAN; m * n]).unwrap();
    gemm_images_for_tests(&dyt, &b, &mut c, s, cfg, [images_map, None, None], [c0 * pixels, 0, 0]).unwrap();
    tol(k).assert(&format!("gemm, A read NCHW, {variant:?} on {dev}"), &c.to_vec().unwrap(), &oracle(&mat(m), &bv, None, &s, &cfg));
    // C[9, 1200] = A[6, 9]ᵀ · op(B)[6, 1200], stored NCHW as [12, 9 (+1), 100] from channel 1.
    let (m, n, k, out_chans) = (9, images * pixels, 6, 10);
    let cfg = GemmConfig { trans_a: true, alpha: 1.0, beta: 0.0, variant, ..GemmConfig::default() };
    let s = GemmShape { batch: 1, m, n, k, a_batched: false, b_batched: false };
    let av = random(73, k * m);
    let a = Tensor::from_vec(dev, &[k, m], av.clone()).unwrap();
    let mut c = Tensor::from_vec(dev, &[images * out_chans * pixels], vec![f32::NAN; images * out_chans * pixels]).unwrap();
    let c_map = Some((pixels, out_chans * pixels));
    gemm_images_for_tests(&a, &dyt, &mut c, s, cfg, [None, images_map, c_map], [0, c0 * pixels, pixels]).unwrap();
    let want = oracle(&av, &mat(k), None, &s, &cfg);
    let got = c.to_vec().unwrap();
    let got: Vec<f32> = (0..m * n).map(|e| (e / n, e % n)).map(|(i, j)| got[(j / pixels) * out_chans * pixels + (1 + i) * pixels + j % pixels]).collect();
    tol(k).assert(&format!("gemm, B read and C stored NCHW, {variant:?} on {dev}"), &got, &want);
}

/// The implicit convolution (GPU only): B is the im2col columns of an NCHW
/// input, gathered in the loads. Forward `W·cols` (strided, dilated, padded,
/// grouped) and the weight gradient `dy·colsᵀ` (long enough for split-K),
/// against the oracle on the columns `im2col_cpu` builds.
fn check_conv_gather(dev: &Device, variant: Option<GemmVariant>) {
    if !dev.is_gpu() {
        return;
    }
    let d = Conv2dConfig::default;
    let cases = [
        ([3, 4, 9, 8], 6, [3, 3], d().padding(1), false),
        ([2, 3, 11, 10], 5, [3, 2], Conv2dConfig { stride: [2, 1], padding: [1, 2], dilation: [2, 1], groups: 1 }, false),
        ([2, 4, 6, 7], 6, [3, 3], d().padding(1).groups(2), false),
        ([4, 2, 24, 24], 3, [3, 3], d().padding(1), true), // k = 2304: split-K on GPUs
        ([2, 4, 7, 6], 4, [3, 3], d().stride(2).padding(1).groups(2), true),
        ([1, 3, 13, 12], 70, [5, 5], d().stride(2).padding(2), false), // ragged edges on every kernel
    ];
    for (ci, (xs, c_out, k, cfg, weight_grad)) in cases.into_iter().enumerate() {
        let g = cfg.groups;
        let geo = Conv2dGeometry::new(&xs, &[c_out, xs[1] / g, k[0], k[1]], cfg).unwrap();
        let (kc, q) = (geo.col_rows(), geo.n * geo.out_pixels());
        let xv = random(200 + ci as u64, xs.iter().product());
        let cols = im2col_cpu(&xv, &geo); // [g·kc, q]
        let x = Tensor::from_vec(dev, &xs, xv).unwrap();
        let x_stride = xs[1] / g * xs[2] * xs[3];
        let (s, cfg_g, av) = if weight_grad {
            // C[g][c_out/g, kc] = A[g][c_out/g, q] · cols[g]ᵀ
            let s = GemmShape { batch: g, m: c_out / g, n: kc, k: q, a_batched: true, b_batched: true };
            (s, GemmConfig { trans_b: true, variant, ..GemmConfig::default() }, random(300 + ci as u64, c_out * q))
        } else {
            // C[g][c_out/g, q] = W[g][c_out/g, kc] · cols[g]
            let s = GemmShape { batch: g, m: c_out / g, n: q, k: kc, a_batched: true, b_batched: true };
            (s, GemmConfig { variant, ..GemmConfig::default() }, random(300 + ci as u64, c_out * kc))
        };
        let a = Tensor::from_vec(dev, &[g, s.m, s.k], av.clone()).unwrap();
        let mut c = Tensor::from_vec(dev, &[g, s.m, s.n], vec![f32::NAN; g * s.m * s.n]).unwrap();
        gemm_conv_for_tests(&a, &x, &mut c, s, cfg_g, geo, x_stride).unwrap();
        // The oracle's B: cols as stored, [kc, q] per group (read transposed with trans_b).
        let want = oracle(&av, &cols, None, &s, &cfg_g);
        let what = format!("implicit conv GEMM case {ci} x {xs:?} {cfg:?} weight_grad={weight_grad} {variant:?} on {dev}");
        tol(s.k).assert(&what, &c.to_vec().unwrap(), &want);
    }
}

/// `gemm_row_sums`: C as `gemm` gives it, and op(A)'s row sums from the same
/// kernel, on split-K, transposed (a linear layer's dyᵀ), batched and wide shapes.
fn check_row_sums(dev: &Device, variant: Option<GemmVariant>) {
    // (batch of A, batch of B, M, N, K, trans_a)
    let cases = [
        (None, None, 6, 25, 5003, false),  // split-K on GPUs: partial sums reduced with C
        (None, None, 10, 84, 64, true),    // a linear layer's weight and bias gradients
        (Some(3), Some(3), 9, 11, 13, false),
        (None, Some(2), 7, 66, 65, true),  // A broadcast: the same sums for each item
        (None, None, 70, 300, 45, false),  // the wide kernel on CPU adapters, ragged edges
    ];
    for (ci, (ba, bb, m, n, k, ta)) in cases.into_iter().enumerate() {
        let cfg = GemmConfig { trans_a: ta, variant, ..GemmConfig::default() };
        let (sa, sb) = (stored(ba, m, k, ta), stored(bb, k, n, false));
        let (av, bv) = (random(ci as u64 * 8 + 101, sa.iter().product()), random(ci as u64 * 8 + 102, sb.iter().product()));
        let a = Tensor::from_vec(dev, &sa, av.clone()).unwrap();
        let b = Tensor::from_vec(dev, &sb, bv.clone()).unwrap();
        let (c, sums) = gemm_row_sums(&a, &b, cfg).unwrap();
        let s = GemmShape::infer(&sa, &sb, ta, false).unwrap();
        let what = format!("gemm_row_sums {m}x{n}x{k} batch {ba:?}/{bb:?} ta={ta} on {dev}");
        tol(k).assert(&what, &c.to_vec().unwrap(), &oracle(&av, &bv, None, &s, &cfg));
        let want_shape = if s.out_shape().len() == 2 { vec![m] } else { vec![s.batch, m] };
        assert_eq!(sums.shape(), want_shape.as_slice(), "{what}");
        tol(k).assert(&format!("{what}: row sums"), &sums.to_vec().unwrap(), &gemm_row_sums_cpu(&av, &s, ta));
    }
    let e = gemm_row_sums(&Tensor::zeros(dev, &[2, 3]).unwrap(), &Tensor::zeros(dev, &[4, 2]).unwrap(), GemmConfig::default()).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
}

fn all(dev: &Device, variant: Option<GemmVariant>) {
    check_row_sums(dev, variant);
    check_images(dev, variant);
    check_conv_gather(dev, variant);
    check_bias(dev, variant);
    check_all(dev, variant);
    check_split_k_alpha_beta(dev, variant);
    check_alpha_beta(dev, variant);
    check_beta_zero_ignores_c(dev, variant);
}

#[test]
fn cpu() {
    all(&Device::Cpu, None);
}

/// Every kernel the tuner may choose, forced, on every shape; then the tuned choice.
macro_rules! gpu_variant {
    ($($name:ident => $variant:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            with_gpu(concat!("gemm::", stringify!($name)), |dev| all(dev, $variant));
        }
    )*};
}
gpu_variant! {
    gpu_blocked => Some(GemmVariant::Blocked),
    gpu_blocked8 => Some(GemmVariant::Blocked8),
    gpu_blocked16 => Some(GemmVariant::Blocked16),
    gpu_tiled => Some(GemmVariant::Tiled),
    gpu_tiled32 => Some(GemmVariant::Tiled32),
    gpu_tiled_k32 => Some(GemmVariant::TiledK32),
    gpu_tiled128 => Some(GemmVariant::Tiled128),
    gpu_tuned => None,
}

#[test]
fn every_variant_is_tested() {
    // The list above names each of GemmVariant::ALL; a new variant must join it.
    let src = include_str!("gemm.rs");
    for v in GemmVariant::ALL {
        assert!(src.contains(&format!("Some(GemmVariant::{v:?})")), "GemmVariant::{v:?} has no parity test");
    }
}

/// The tuner times its candidates once per shape class, keeps the fastest
/// (a register-blocked kernel on a CPU adapter), saves it to the tuning file,
/// and a device opened later reads it instead of timing again.
#[test]
fn gpu_tuning_is_kept_and_reused() {
    with_gpu("gemm::gpu_tuning_is_kept_and_reused", |_| {
        use wgpu_cnn::{GpuOptions, TuningCache};
        let file = std::env::temp_dir().join(format!("wgpu-cnn-tuning-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let opts = GpuOptions { autotune: true, tuning_cache: TuningCache::File(file.clone()), ..GpuOptions::default() };
        let dev = Device::gpu_with(&opts).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        if !ctx.autotune() {
            eprintln!("SKIPPED gemm::gpu_tuning_is_kept_and_reused: WGPU_CNN_AUTOTUNE=0");
            return;
        }
        let (av, bv) = (random(1, 70 * 90), random(2, 90 * 300));
        let a = Tensor::from_slice(&dev, &[70, 90], &av).unwrap();
        let b = Tensor::from_slice(&dev, &[90, 300], &bv).unwrap();
        let before = ctx.pipelines_built();
        let c = gemm(&a, &b, GemmConfig::default()).unwrap().to_vec().unwrap();
        let s = GemmShape::infer(&[70, 90], &[90, 300], false, false).unwrap();
        tol(90).assert("tuned gemm", &c, &oracle(&av, &bv, None, &s, &GemmConfig::default()));
        let table = ctx.tuning_table();
        assert_eq!(table.len(), 1, "{table:?}");
        let (key, choice) = &table[0];
        assert!(key.starts_with("gemm/"), "{key}");
        let chosen = GemmVariant::from_name(choice).unwrap();
        if ctx.adapter().is_software() {
            assert!(matches!(chosen, GemmVariant::Blocked8 | GemmVariant::Blocked16), "{choice}");
            assert!(ctx.pipelines_built() >= before + 2, "both candidates were timed");
        }
        // Same class, another size: no more timing.
        let built = ctx.pipelines_built();
        gemm(&Tensor::zeros(&dev, &[65, 80]).unwrap(), &Tensor::zeros(&dev, &[80, 260]).unwrap(), GemmConfig::default()).unwrap().to_vec().unwrap();
        assert_eq!((ctx.tuning_table().len(), ctx.pipelines_built()), (1, built));
        // A later device reads the file.
        let saved: std::collections::HashMap<String, String> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(saved.get(key), Some(choice));
        let again = Device::gpu_with(&opts).unwrap();
        assert_eq!(again.gpu_context().unwrap().tuning_table(), table);
        // With tuning off, the adapter's fixed choice and no table.
        let off = Device::gpu_with(&GpuOptions { autotune: false, tuning_cache: TuningCache::Memory, ..GpuOptions::default() }).unwrap();
        gemm(&Tensor::zeros(&off, &[70, 90]).unwrap(), &Tensor::zeros(&off, &[90, 300]).unwrap(), GemmConfig::default()).unwrap().to_vec().unwrap();
        assert!(off.gpu_context().unwrap().tuning_table().is_empty());
        let _ = std::fs::remove_file(&file);
    });
}

/// More batch items than one dispatch's z-dimension allows is split, not refused.
#[test]
fn gpu_batch_beyond_grid_limit() {
    with_gpu("gemm::gpu_batch_beyond_grid_limit", |dev| {
        let max_z = dev.gpu_context().unwrap().limits().max_compute_workgroups_per_dimension as usize;
        let batch = max_z + 3;
        let a = Tensor::from_vec(dev, &[batch, 1, 2], (0..batch * 2).map(|i| (i % 7) as f32).collect()).unwrap();
        let b = Tensor::from_vec(dev, &[2, 1], vec![1.0, 2.0]).unwrap();
        let c = gemm(&a, &b, GemmConfig::default()).unwrap().to_vec().unwrap();
        let want: Vec<f32> = (0..batch).map(|i| ((2 * i) % 7) as f32 + 2.0 * ((2 * i + 1) % 7) as f32).collect();
        assert_eq!(c, want);
    });
}
