//! Convolution: forward, dX, dW, db on every device against an f64 direct
//! convolution; the CPU backward against finite differences; hand-worked
//! examples from the course notes; bad input.

use wgpu_cnn::ops::activation::{activation_backward, activation_forward, Activation};
use wgpu_cnn::ops::conv2d::{
    conv2d_forward_act,
    conv2d_backward, conv2d_backward_cpu, conv2d_backward_relu, conv2d_backward_cpu_in_chunks, conv2d_backward_cpu_tuned, conv2d_backward_params, conv2d_forward, conv2d_forward_cpu,
    conv2d_forward_cpu_in_chunks, conv2d_forward_cpu_tuned,
};
use wgpu_cnn::{Conv2dConfig, Conv2dGeometry, Device, Error, GpuOptions, Tensor, Tolerance};

use crate::harness::{numeric_grad, random};
use crate::test_device;

/// The oracle: plain seven-deep loops in f64, written from the definition.
/// Returns (y, dx, dw, db) for the given dy.
fn oracle(x: &[f32], w: &[f32], b: Option<&[f32]>, dy: &[f32], g: &Conv2dGeometry) -> [Vec<f32>; 4] {
    let cpg = g.c_in / g.cfg.groups;
    let opg = g.c_out / g.cfg.groups;
    let (mut y, mut dx, mut dw, mut db) =
        (vec![0f64; g.n * g.c_out * g.oh * g.ow], vec![0f64; x.len()], vec![0f64; w.len()], vec![0f64; g.c_out]);
    for n in 0..g.n {
        for co in 0..g.c_out {
            let grp = co / opg;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let o = ((n * g.c_out + co) * g.oh + oy) * g.ow + ox;
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    db[co] += dy[o] as f64;
                    for ci in 0..cpg {
                        let c = grp * cpg + ci;
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let iy = (oy * g.cfg.stride[0] + ki * g.cfg.dilation[0]) as isize - g.cfg.padding[0] as isize;
                                let ix = (ox * g.cfg.stride[1] + kj * g.cfg.dilation[1]) as isize - g.cfg.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * cpg + ci) * g.kh + ki) * g.kw + kj;
                                acc += x[xi] as f64 * w[wi] as f64;
                                dw[wi] += dy[o] as f64 * x[xi] as f64;
                                dx[xi] += dy[o] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    y[o] = acc;
                }
            }
        }
    }
    [y, dx, dw, db].map(|v| v.into_iter().map(|x| x as f32).collect())
}

struct Case {
    x: [usize; 4],
    c_out: usize,
    k: [usize; 2],
    cfg: Conv2dConfig,
    bias: bool,
}

fn case(x: [usize; 4], c_out: usize, k: [usize; 2], cfg: Conv2dConfig, bias: bool) -> Case {
    Case { x, c_out, k, cfg, bias }
}

fn cases() -> Vec<Case> {
    let d = Conv2dConfig::default;
    vec![
        case([2, 3, 5, 6], 4, [1, 1], d(), true),                   // 1×1: the direct GEMM path
        case([1, 3, 5, 6], 4, [1, 1], d(), false),                  // 1×1 without bias, batch 1
        case([2, 3, 7, 7], 4, [1, 1], d().stride(2), true),         // 1×1 strided: im2col path
        case([2, 3, 8, 7], 5, [3, 3], d().padding(1), true),        // 3×3 same
        case([1, 2, 11, 9], 3, [5, 5], d().stride(2).padding(2), false),
        case([2, 3, 13, 12], 4, [7, 7], d().stride(3).padding(3), true),
        case([2, 2, 10, 11], 3, [3, 5], Conv2dConfig { stride: [1, 2], padding: [2, 1], dilation: [2, 1], groups: 1 }, true),
        case([1, 3, 9, 9], 2, [3, 3], d().dilation(2).padding(2), true),
        case([2, 2, 9, 8], 3, [3, 3], d().stride(2), true),         // stride 2, no padding
        case([2, 4, 6, 6], 6, [3, 3], d().padding(1).groups(2), true),
        case([2, 4, 7, 7], 4, [3, 3], d().padding(1).groups(4), true), // depthwise
        case([3, 2, 5, 5], 3, [5, 5], d(), true),                   // kernel = input: 1×1 output
        case([2, 1, 28, 28], 6, [5, 5], d().padding(2), true),      // MNIST conv1 (LeNet-5)
    ]
}

/// f32 sums of `terms` products of values in [-1, 1).
fn tol(terms: usize) -> Tolerance {
    Tolerance::new(2e-6 * terms as f32 + 1e-6, 1e-4)
}

fn check_case(dev: &Device, (i, c): (usize, &Case)) {
    let [n, c_in, h, w] = c.x;
    let wshape = [c.c_out, c_in / c.cfg.groups, c.k[0], c.k[1]];
    let geo = Conv2dGeometry::new(&c.x, &wshape, c.cfg).unwrap();
    let seed = 100 * i as u64;
    let (xv, wv) = (random(seed, n * c_in * h * w), random(seed + 1, wshape.iter().product()));
    let bv = random(seed + 2, c.c_out);
    let dyv = random(seed + 3, geo.output_shape().iter().product());
    let bias = c.bias.then_some(bv.as_slice());
    let [y_ref, dx_ref, dw_ref, db_ref] = oracle(&xv, &wv, bias, &dyv, &geo);

    let xt = Tensor::from_vec(dev, &c.x, xv.clone()).unwrap();
    let wt = Tensor::from_vec(dev, &wshape, wv.clone()).unwrap();
    let bt = Tensor::from_vec(dev, &[c.c_out], bv.clone()).unwrap();
    let dyt = Tensor::from_vec(dev, &geo.output_shape(), dyv.clone()).unwrap();
    let what = format!("conv2d case {i} x {:?} w {wshape:?} {:?} on {dev}", c.x, c.cfg);

    let y = conv2d_forward(&xt, &wt, c.bias.then_some(&bt), c.cfg).unwrap();
    assert_eq!(y.shape(), geo.output_shape());
    tol(geo.col_rows()).assert(&format!("{what}: forward"), &y.to_vec().unwrap(), &y_ref);
    // A fused ReLU (in the output layout's kernel, or the pointwise GEMM's store) is
    // ReLU after the convolution, bit for bit.
    let fused = conv2d_forward_act(&xt, &wt, c.bias.then_some(&bt), c.cfg, Activation::Relu).unwrap();
    assert_eq!(fused.to_vec().unwrap(), activation_forward(&y, Activation::Relu).unwrap().to_vec().unwrap(), "{what}: forward + ReLU");

    let grads = conv2d_backward(&xt, &wt, &dyt, c.cfg, c.bias).unwrap();
    let per_dw = n * geo.out_pixels();
    tol(c.k[0] * c.k[1] * c.c_out).assert(&format!("{what}: dx"), &grads.dx.to_vec().unwrap(), &dx_ref);
    tol(per_dw).assert(&format!("{what}: dw"), &grads.dw.to_vec().unwrap(), &dw_ref);
    assert_eq!(grads.db.is_some(), c.bias);
    if let Some(db) = grads.db {
        tol(per_dw).assert(&format!("{what}: db"), &db.to_vec().unwrap(), &db_ref);
    }
    // Through the ReLU that made x (x stands for that ReLU's output; about half
    // of it is negative): dx times x > 0 in col2im's kernel (a 1×1 convolution's
    // after its permute) is the plain backward followed by ReLU's, bit for bit.
    let through = conv2d_backward_relu(&xt, &wt, &dyt, c.cfg, c.bias).unwrap();
    let want = activation_backward(&xt, &grads.dx, Activation::Relu).unwrap();
    assert_eq!(through.dx.to_vec().unwrap(), want.to_vec().unwrap(), "{what}: dx through a ReLU");
    assert_eq!(through.dw.to_vec().unwrap(), grads.dw.to_vec().unwrap(), "{what}: dw with dx through a ReLU");
    // Without dx (a first layer): the same parameter gradients.
    let (dw, db) = conv2d_backward_params(&xt, &wt, &dyt, c.cfg, c.bias).unwrap();
    tol(per_dw).assert(&format!("{what}: dw without dx"), &dw.to_vec().unwrap(), &dw_ref);
    assert_eq!(db.is_some(), c.bias);
    if let Some(db) = db {
        tol(per_dw).assert(&format!("{what}: db without dx"), &db.to_vec().unwrap(), &db_ref);
    }
}

fn grid(dev: &Device) {
    cases().iter().enumerate().for_each(|c| check_case(dev, c));
}
test_device!(conv2d_grid, grid);

/// A batch split into several chunks gives the same results (dW and db
/// accumulate across chunks; dX and y land at the right offsets). The GPU's
/// budget is a device option; the CPU twin takes it as an argument.
fn chunked(dev: &Device) {
    // 3×3 pad 1 on [5, 2, 6, 6]: one image's columns are 18·36·4 bytes, so a
    // 480-byte budget gives chunks of one image; the 1×1 case's are 3·20·4,
    // so chunks of two images and a last one of one.
    const BUDGET: u64 = 480;
    let cases = [
        (77, case([5, 2, 6, 6], 3, [3, 3], Conv2dConfig::default().padding(1), true)),
        (78, case([5, 3, 4, 5], 2, [1, 1], Conv2dConfig::default(), true)), // pointwise backward chunks too
    ];
    match dev {
        Device::Gpu(_) => {
            let small = Device::gpu_with(&GpuOptions { max_chunk_bytes: Some(BUDGET), ..GpuOptions::default() }).unwrap();
            assert_eq!(small.gpu_context().unwrap().max_chunk_bytes(), Some(BUDGET));
            cases.iter().for_each(|(i, c)| check_case(&small, (*i, c)));
        }
        Device::Cpu => {
            for (i, c) in &cases {
                let [n, c_in, h, w] = c.x;
                let wshape = [c.c_out, c_in / c.cfg.groups, c.k[0], c.k[1]];
                let geo = Conv2dGeometry::new(&c.x, &wshape, c.cfg).unwrap();
                assert!(geo.images_per_chunk(BUDGET) < n, "case {i} must take several chunks");
                let (xv, wv, bv) = (random(*i as u64, n * c_in * h * w), random(*i as u64 + 1, wshape.iter().product()), random(*i as u64 + 2, c.c_out));
                let dyv = random(*i as u64 + 3, geo.output_shape().iter().product());
                let [y_ref, dx_ref, dw_ref, db_ref] = oracle(&xv, &wv, Some(&bv), &dyv, &geo);
                let y = conv2d_forward_cpu_in_chunks(&xv, &wv, Some(&bv), &geo, BUDGET);
                tol(geo.col_rows()).assert(&format!("chunked case {i}: forward"), &y, &y_ref);
                let (dx, dw, db) = conv2d_backward_cpu_in_chunks(&xv, &wv, &dyv, &geo, BUDGET);
                tol(c.k[0] * c.k[1] * c.c_out).assert(&format!("chunked case {i}: dx"), &dx, &dx_ref);
                tol(n * geo.out_pixels()).assert(&format!("chunked case {i}: dw"), &dw, &dw_ref);
                tol(n * geo.out_pixels()).assert(&format!("chunked case {i}: db"), &db, &db_ref);
            }
        }
    }
}
test_device!(conv2d_chunked_batch, chunked);

/// Worked examples from the course notes, exact.
fn course_notes(dev: &Device) {
    let conv = |x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], cfg: Conv2dConfig| {
        let xt = Tensor::from_slice(dev, &xs, x).unwrap();
        let wt = Tensor::from_slice(dev, &ws, w).unwrap();
        let y = conv2d_forward(&xt, &wt, None, cfg).unwrap();
        (y.shape().to_vec(), y.to_vec().unwrap())
    };
    let img = [1., 3., -2., 4., 0., 8., 6., 5., 2., 1., -9., 0., 4., -1., 3., 7.];
    let filt = [1., 2., -2., -1.];
    let (shape, y) = conv(&img, [1, 1, 4, 4], &filt, [1, 1, 2, 2], Conv2dConfig::default());
    assert_eq!(shape, [1, 1, 3, 3]);
    assert_eq!(y[8], -22.0, "bottom-right of the 3×3 output");
    let (shape, y) = conv(&img, [1, 1, 4, 4], &filt, [1, 1, 2, 2], Conv2dConfig::default().padding(1));
    assert_eq!(shape, [1, 1, 5, 5]);
    assert_eq!(y[24], 7.0, "bottom-right of the padded 5×5 output");

    let (shape, y) = conv(&[1., 0., 2., 2., 3., 1.], [1, 1, 1, 6], &[3., 2., 2.], [1, 1, 1, 3], Conv2dConfig::default());
    assert_eq!((shape, y), (vec![1, 1, 1, 4], vec![7., 8., 16., 14.]));

    let x = [1., 2., 3., 2., 2., 3., 2., 5., 1., 2., 2., 1., 0., 2., 1., 2.];
    let (_, y) = conv(&x, [1, 1, 4, 4], &[-1., 1., -1., 1.], [1, 1, 2, 2], Conv2dConfig::default());
    assert_eq!(y, vec![2., 0., 2., 2., -1., 2., 3., -1., 0.]);
}
test_device!(conv2d_course_notes, course_notes);

/// The CPU backward against central differences of L = Σ y·r.
/// f32 forward, eps 1e-2: the truncation error is O(eps²) and the rounding
/// error ~1e-6·|L|/eps, so 2e-3 abs + 1e-2 rel is ample.
#[test]
fn cpu_backward_matches_finite_differences() {
    let tol = Tolerance::new(2e-3, 1e-2);
    for c in [
        case([2, 2, 5, 6], 3, [3, 3], Conv2dConfig::default().padding(1).stride(2), true),
        case([1, 4, 5, 5], 4, [3, 2], Conv2dConfig { stride: [1, 2], padding: [1, 1], dilation: [2, 1], groups: 2 }, true),
    ] {
        let [n, c_in, h, w] = c.x;
        let ws = [c.c_out, c_in / c.cfg.groups, c.k[0], c.k[1]];
        let geo = Conv2dGeometry::new(&c.x, &ws, c.cfg).unwrap();
        let (x, wv) = (random(1, n * c_in * h * w), random(2, ws.iter().product()));
        let b = random(3, c.c_out);
        let r = random(4, geo.output_shape().iter().product());
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            conv2d_forward_cpu(x, w, Some(b), &geo).iter().zip(&r).map(|(y, r)| *y as f64 * *r as f64).sum()
        };
        let (dx, dw, db) = conv2d_backward_cpu(&x, &wv, &r, &geo);
        let numeric = |v: &[f32], f: &dyn Fn(&[f32]) -> f64| numeric_grad(v, 1e-2, f);
        tol.assert("conv2d dx vs finite differences", &dx, &numeric(&x, &|x| loss(x, &wv, &b)));
        tol.assert("conv2d dw vs finite differences", &dw, &numeric(&wv, &|w| loss(&x, w, &b)));
        tol.assert("conv2d db vs finite differences", &db, &numeric(&b, &|b| loss(&x, &wv, b)));
    }
}

fn bad_input(dev: &Device) {
    let t = |shape: &[usize]| Tensor::zeros(dev, shape).unwrap();
    let x = t(&[2, 4, 5, 5]);
    let d = Conv2dConfig::default;
    let msg = |r: wgpu_cnn::Result<Tensor>| r.expect_err("expected an error").to_string();

    let m = msg(conv2d_forward(&x, &t(&[3, 4, 7, 7]), None, d()));
    assert!(m.contains("conv2d") && m.contains("larger than the padded input") && m.contains("[2, 4, 5, 5]"), "{m}");
    assert!(conv2d_forward(&x, &t(&[3, 4, 7, 7]), None, d().padding(1)).is_ok(), "7×7 fits 5×5 padded by 1");
    let e = conv2d_forward(&x, &t(&[3, 4, 3, 3]), None, d().stride(0)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "conv2d", .. }) && e.to_string().contains("stride"), "{e}");
    assert!(msg(conv2d_forward(&x, &t(&[3, 4, 3, 3]), None, d().dilation(0))).contains("dilation"));
    let m = msg(conv2d_forward(&x, &t(&[3, 3, 3, 3]), None, d()));
    assert!(m.contains("4 channels") && m.contains("[3, 3, 3, 3]"), "{m}");
    assert!(msg(conv2d_forward(&x, &t(&[3, 2, 3, 3]), None, d().groups(3))).contains("groups = 3 must divide"));
    assert!(msg(conv2d_forward(&x, &t(&[3, 1, 3, 3]), None, d().groups(4))).contains("must divide both"), "c_out 3 % 4");
    let m = msg(conv2d_forward(&x, &t(&[3, 4, 3, 3]), Some(&t(&[4])), d()));
    assert!(m.contains("bias has shape [4]") && m.contains("3 output channels"), "{m}");
    assert!(msg(conv2d_forward(&t(&[4, 5, 5]), &t(&[3, 4, 3, 3]), None, d())).contains("NCHW"));
    assert!(Tensor::zeros(dev, &[0, 4, 5, 5]).is_err(), "a batch of 0 is rejected before any buffer exists");
    let dy = t(&[2, 3, 2, 2]);
    let e = conv2d_backward(&x, &t(&[3, 4, 3, 3]), &dy, d(), true).err().expect("dy of the wrong shape");
    assert!(e.to_string().contains("dy has shape [2, 3, 2, 2], expected [2, 3, 3, 3]"), "{e}");
}
test_device!(conv2d_bad_input, bad_input);

/// The CPU path's tuned convolution (blocks of images over the cores, bias
/// and ReLU in the output's permute, gradients summed per part) against the
/// plain reference, on every grid case and on batches that make several
/// blocks and uneven parts; dx and dW asked for or not.
#[test]
fn cpu_tuned_matches_reference() {
    let d = Conv2dConfig::default;
    let mut all = cases();
    // 36 pixels and 41 KB of columns an image: 8-image blocks (the 256-pixel
    // floor), 5 of them in 4 uneven parts.
    all.push(case([37, 32, 6, 6], 5, [3, 3], d().padding(1), true));
    all.push(case([9, 4, 5, 5], 6, [3, 3], d().padding(1).groups(2), true));
    all.push(case([3, 16, 40, 40], 8, [3, 3], d().padding(1), true)); // 1.7 MB of columns an image: one a block
    for (i, c) in all.iter().enumerate() {
        let [n, c_in, h, w] = c.x;
        let wshape = [c.c_out, c_in / c.cfg.groups, c.k[0], c.k[1]];
        let geo = Conv2dGeometry::new(&c.x, &wshape, c.cfg).unwrap();
        let seed = 700 + 10 * i as u64;
        let (xv, wv, bv) = (random(seed, n * c_in * h * w), random(seed + 1, wshape.iter().product()), random(seed + 2, c.c_out));
        let dyv = random(seed + 3, geo.output_shape().iter().product());
        let bias = c.bias.then_some(bv.as_slice());
        let what = format!("tuned CPU conv2d, x {:?} w {wshape:?} {:?}", c.x, c.cfg);
        let t = tol(geo.col_rows());
        let y = conv2d_forward_cpu(&xv, &wv, bias, &geo);
        t.assert(&format!("{what}: forward"), &conv2d_forward_cpu_tuned(&xv, &wv, bias, &geo, false), &y);
        let relu: Vec<f32> = y.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect();
        t.assert(&format!("{what}: forward + ReLU"), &conv2d_forward_cpu_tuned(&xv, &wv, bias, &geo, true), &relu);
        let (dx, dw, db) = conv2d_backward_cpu(&xv, &wv, &dyv, &geo);
        let per_dw = tol(n * geo.out_pixels());
        let (tdx, tdw, tdb) = conv2d_backward_cpu_tuned(Some(&xv), &wv, &dyv, &geo, true);
        tol(c.k[0] * c.k[1] * c.c_out).assert(&format!("{what}: dx"), &tdx.unwrap(), &dx);
        per_dw.assert(&format!("{what}: dw"), &tdw, &dw);
        per_dw.assert(&format!("{what}: db"), &tdb, &db);
        let (none, pdw, pdb) = conv2d_backward_cpu_tuned(Some(&xv), &wv, &dyv, &geo, false);
        assert!(none.is_none(), "{what}: dx not asked for");
        assert_eq!((pdw, pdb), (tdw, tdb), "{what}: dW and db without dx");
        let (only_dx, no_dw, _) = conv2d_backward_cpu_tuned(None, &wv, &dyv, &geo, true);
        assert!(no_dw.is_empty(), "{what}: dW without x");
        tol(c.k[0] * c.k[1] * c.c_out).assert(&format!("{what}: dx alone"), &only_dx.unwrap(), &dx);
    }
}

/// CPU convolutions whose columns pass 16 MB reuse a per-thread scratch
/// buffer: their results must not depend on what it held. A batch of 64
/// (75 MB of columns, after another large convolution left other data there)
/// against the same images in batches of 8 (9 MB: fresh buffers).
#[test]
fn large_cpu_convolutions_reuse_scratch() {
    let dev = Device::Cpu;
    let cfg = Conv2dConfig::default().padding(1);
    let t = |shape: &[usize], seed: u64| Tensor::from_vec(&dev, shape, random(seed, shape.iter().product())).unwrap();
    let (x, w, dy) = (t(&[64, 32, 32, 32], 1), t(&[32, 32, 3, 3], 2), t(&[64, 32, 32, 32], 3));
    // Leave different data (and a different length) in the scratch first.
    let other = t(&[48, 32, 32, 32], 4);
    conv2d_backward(&other, &t(&[16, 32, 3, 3], 5), &t(&[48, 16, 32, 32], 6), cfg.stride(1), true).unwrap();
    let y = conv2d_forward(&x, &w, None, cfg).unwrap().to_vec().unwrap();
    let g = conv2d_backward(&x, &w, &dy, cfg, false).unwrap();
    let (mut y8, mut dx8, mut dw8) = (Vec::new(), Vec::new(), vec![0f32; w.numel()]);
    for i in (0..64).step_by(8) {
        let (xs, dys) = (x.narrow(i, 8).unwrap(), dy.narrow(i, 8).unwrap());
        y8.extend(conv2d_forward(&xs, &w, None, cfg).unwrap().to_vec().unwrap());
        let gi = conv2d_backward(&xs, &w, &dys, cfg, false).unwrap();
        dx8.extend(gi.dx.to_vec().unwrap());
        dw8.iter_mut().zip(gi.dw.to_vec().unwrap()).for_each(|(a, b)| *a += b);
    }
    let tol = Tolerance::new(1e-4, 1e-4);
    tol.assert("forward, scratch vs fresh", &y, &y8);
    tol.assert("dx, scratch vs fresh", &g.dx.to_vec().unwrap(), &dx8);
    // dW sums 65,536 products per entry; the split batches add them in another order.
    Tolerance::new(2e-3, 1e-4).assert("dw, scratch vs fresh", &g.dw.to_vec().unwrap(), &dw8);
}

/// Transposed convolution against PyTorch 2.15 (`F.conv_transpose2d` and its
/// autograd: stride, padding, output_padding, dilation, groups, bias), and as
/// the adjoint of the convolution with the same weight on random shapes.
fn transpose(dev: &Device) {
    use crate::harness::{assert_adjoint, torch_tensor, torch_value};
    use wgpu_cnn::ops::conv2d::{conv2d_transpose_backward, conv2d_transpose_forward};
    // (case, stride, padding, output_padding, dilation, groups), as make_ops.py's CT list.
    for (name, s, p, op, d, g) in [("ct0", 2, 1, 1, 1, 1), ("ct1", 1, 0, 0, 1, 2), ("ct2", 3, 2, 2, 2, 1)] {
        let cfg = Conv2dConfig::default().stride(s).padding(p).dilation(d).groups(g);
        let (x, w, gy) = (torch_tensor(dev, &format!("{name}.x")), torch_tensor(dev, &format!("{name}.w")), torch_tensor(dev, &format!("{name}.gy")));
        let b = (name != "ct1").then(|| torch_tensor(dev, &format!("{name}.b")));
        let y = conv2d_transpose_forward(&x, &w, b.as_ref(), cfg, [op, op]).unwrap();
        let (want_shape, want) = torch_value(&format!("{name}.y"));
        assert_eq!(y.shape(), want_shape.as_slice(), "{name}");
        let tol = Tolerance::new(1e-4, 1e-4);
        tol.assert(&format!("{name} y on {dev}"), &y.to_vec().unwrap(), &want);
        let grads = conv2d_transpose_backward(&x, &w, &gy, cfg, [op, op], b.is_some()).unwrap();
        tol.assert(&format!("{name} dx on {dev}"), &grads.dx.to_vec().unwrap(), &torch_value(&format!("{name}.dx")).1);
        tol.assert(&format!("{name} dw on {dev}"), &grads.dw.to_vec().unwrap(), &torch_value(&format!("{name}.dw")).1);
        if b.is_some() {
            tol.assert(&format!("{name} db on {dev}"), &grads.db.unwrap().to_vec().unwrap(), &torch_value(&format!("{name}.db")).1);
        }
    }
    // ⟨conv(a, w), b⟩ = ⟨a, conv_transpose(b, w)⟩ for the transposed geometry.
    for (i, (shape, weight, cfg, op)) in [
        ([2, 4, 5, 5], [4, 6, 3, 3], Conv2dConfig::default().stride(2).padding(1), [1, 1]),
        ([1, 6, 4, 3], [6, 2, 1, 1], Conv2dConfig::default().groups(3), [0, 0]),
        ([3, 2, 6, 6], [2, 3, 4, 4], Conv2dConfig::default().stride(2).padding(1), [0, 0]),
    ]
    .into_iter()
    .enumerate()
    {
        let geo = Conv2dGeometry::transposed(&shape, &weight, cfg, op).unwrap();
        let w = random(500 + i as u64, weight.iter().product());
        let bt = random(600 + i as u64, shape.iter().product());
        let a = random(700 + i as u64, geo.input_shape().iter().product());
        let wt = Tensor::from_slice(dev, &weight, &w).unwrap();
        let conv_a = conv2d_forward(&Tensor::from_slice(dev, &geo.input_shape(), &a).unwrap(), &wt, None, cfg).unwrap().to_vec().unwrap();
        let ct_b = conv2d_transpose_forward(&Tensor::from_slice(dev, &shape, &bt).unwrap(), &wt, None, cfg, op).unwrap().to_vec().unwrap();
        assert_adjoint(&format!("conv_transpose case {i} on {dev}"), &conv_a, &bt, &a, &ct_b);
    }
    let x = Tensor::zeros(dev, &[1, 2, 3, 3]).unwrap();
    let w = Tensor::zeros(dev, &[2, 2, 3, 3]).unwrap();
    assert!(conv2d_transpose_forward(&x, &w, None, Conv2dConfig::default().stride(2), [2, 2]).is_err(), "output_padding ≥ stride");
    assert!(conv2d_transpose_forward(&x, &Tensor::zeros(dev, &[3, 2, 3, 3]).unwrap(), None, Conv2dConfig::default(), [0, 0]).is_err(), "3 weight in-channels for 2");
    assert!(conv2d_transpose_forward(&x, &w, None, Conv2dConfig::default().padding(3), [0, 0]).is_err(), "padding eats the output");
}
test_device!(conv2d_transpose, transpose);
