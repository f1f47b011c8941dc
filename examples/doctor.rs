//! A self-test to run on your own GPU: which adapter wgpu-cnn picks, the
//! limits its kernels need against what the adapter offers, then every GPU
//! kernel against its CPU twin on small shapes and a few LeNet-5 training
//! steps. Exits 0 only when everything agrees.
//!
//!     cargo run --release --example doctor            # the adapter's own limits
//!     cargo run --release --example doctor -- --limits webgpu --json
use std::time::Instant;

use wgpu_cnn::nn::{models, Init, Initializer, Layer};
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::ops::activation::{activation_backward, activation_forward, Activation};
use wgpu_cnn::ops::avgpool::{avgpool_adaptive_backward, avgpool_adaptive_forward, avgpool_backward, avgpool_forward};
use wgpu_cnn::ops::batchnorm::{batchnorm_backward, batchnorm_forward_train, Affine, BatchNormConfig};
use wgpu_cnn::ops::bias::{bias_add, bias_grad};
use wgpu_cnn::ops::clip::clip_global_norm;
use wgpu_cnn::ops::col2im::col2im;
use wgpu_cnn::ops::concat::{concat_backward, concat_forward};
use wgpu_cnn::ops::conv2d::{conv2d_backward, conv2d_backward_relu, conv2d_forward, conv2d_forward_act};
use wgpu_cnn::ops::dropout::{dropout_backward, dropout_forward, DropoutConfig};
use wgpu_cnn::ops::elementwise::{elementwise_add, elementwise_add_relu_backward, elementwise_combine, elementwise_combine_sign, elementwise_fill, elementwise_mul};
use wgpu_cnn::ops::gemm::{gemm, gemm_row_sums, GemmConfig};
use wgpu_cnn::ops::im2col::im2col;
use wgpu_cnn::ops::layernorm::{layernorm_backward, layernorm_forward, NormKind};
use wgpu_cnn::ops::loss::{loss_regression, RegressionLoss};
use wgpu_cnn::ops::maxpool::{maxpool_backward, maxpool_backward_relu, maxpool_forward};
use wgpu_cnn::ops::optim::{optim_adam_step, optim_sgd_step, AdamConfig, SgdConfig};
use wgpu_cnn::ops::pad::{pad_backward, pad_forward};
use wgpu_cnn::ops::permute::permute_swap;
use wgpu_cnn::ops::reduce::{reduce_cols, reduce_rows};
use wgpu_cnn::ops::softmax::{softmax_backward, softmax_forward};
use wgpu_cnn::ops::softmax_xent::{softmax_xent, softmax_xent_probs, CrossEntropyConfig, Reduction};
use wgpu_cnn::ops::upsample::{upsample_backward, upsample_forward, UpsampleMode};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::{Conv2dConfig, Conv2dGeometry, Device, GemmVariant, GpuOptions, LimitsMode, Pool2dConfig, Tensor, Tolerance};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Limits {
    /// Everything the adapter offers.
    Adapter,
    /// WebGPU's default limits (or the adapter's, where lower).
    Webgpu,
}

#[derive(clap::Parser, Debug)]
#[command(about = "Checks wgpu-cnn's GPU kernels against the CPU path on this machine's adapter")]
struct Args {
    /// The limits to open the device with (`WGPU_CNN_LIMITS` overrides).
    #[arg(long, value_enum, default_value = "adapter")]
    limits: Limits,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// One check: what it runs, the worst |GPU − CPU| against its tolerance.
struct Check {
    name: String,
    max_diff: f32,
    tolerance: Tolerance,
    error: Option<String>,
}

impl Check {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

#[path = "common/mod.rs"]
mod common;
use common::lcg_values as data;

type Body = dyn Fn(&Device, &[Tensor]) -> wgpu_cnn::Result<Vec<Tensor>>;

/// Runs `f` on the CPU and on `gpu` from the same inputs and compares every output.
fn check(gpu: &Device, name: &str, inputs: &[&[usize]], tolerance: Tolerance, f: &Body) -> Check {
    let run = |dev: &Device| -> wgpu_cnn::Result<Vec<Vec<f32>>> {
        let ts = inputs.iter().enumerate().map(|(i, s)| Tensor::from_vec(dev, s, data(s.iter().product(), 7 + i as u64))).collect::<wgpu_cnn::Result<Vec<_>>>()?;
        f(dev, &ts)?.iter().map(|t| t.to_vec()).collect()
    };
    let result = run(&Device::Cpu).and_then(|c| run(gpu).map(|g| (c, g)));
    let (mut max_diff, mut error) = (0f32, None);
    match result {
        Err(e) => error = Some(e.to_string()),
        Ok((c, g)) => {
            for (i, (c, g)) in c.iter().zip(&g).enumerate() {
                max_diff = max_diff.max(Tolerance::max_abs_diff(g, c));
                if let Err(e) = tolerance.check(&format!("{name}, output {i}"), g, c) {
                    error.get_or_insert(e);
                }
            }
        }
    }
    Check { name: name.to_string(), max_diff, tolerance, error }
}

/// Sums of `terms` products of values in [-1, 1) in f32.
fn tol(terms: usize) -> Tolerance {
    Tolerance::new(4e-6 * terms as f32 + 1e-5, 1e-4)
}

/// The checks, and the kernels built on the extra devices they opened.
fn checks(gpu: &Device, limits: LimitsMode) -> (Vec<Check>, Vec<&'static str>) {
    let mut out = Vec::new();
    let mut built = Vec::new();
    // Convolutions (implicit GEMM, forward and weight gradient) on every GEMM
    // kernel, each forced on a device of its own.
    let conv = Conv2dConfig::default().padding(1);
    for v in GemmVariant::ALL {
        let forced = match Device::gpu_with(&GpuOptions { gemm_variant: Some(v), limits, ..GpuOptions::default() }) {
            Ok(d) => d,
            Err(e) => {
                out.push(Check { name: format!("conv2d on gemm {}", v.name()), max_diff: 0.0, tolerance: tol(0), error: Some(e.to_string()) });
                continue;
            }
        };
        out.push(check(&forced, &format!("conv2d on gemm {}", v.name()), &[&[2, 3, 7, 20], &[70, 3, 3, 3], &[2, 70, 7, 20]], tol(2 * 140), &move |_, t| {
            let g = conv2d_backward(&t[0], &t[1], &t[2], conv, false)?;
            Ok(vec![conv2d_forward(&t[0], &t[1], None, conv)?, g.dw])
        }));
        built.extend(forced.gpu_context().map(|c| c.kernels_built()).unwrap_or_default());
    }
    let mut add = |name: &str, inputs: &[&[usize]], t: Tolerance, f: &Body| out.push(check(gpu, name, inputs, t, f));
    // Every GEMM kernel, forced, plain and with row sums (the mapped twins).
    for v in GemmVariant::ALL {
        add(&format!("gemm {}", v.name()), &[&[70, 45], &[45, 90]], tol(45), &move |_, t| {
            let cfg = GemmConfig { variant: Some(v), ..GemmConfig::default() };
            let (c, sums) = gemm_row_sums(&t[0], &t[1], cfg)?;
            Ok(vec![gemm(&t[0], &t[1], cfg)?, c, sums])
        });
    }
    add("conv2d (implicit GEMM) fwd / dx / dw / db", &[&[2, 4, 9, 8], &[6, 4, 3, 3], &[6], &[2, 6, 9, 8]], tol(2 * 72), &move |_, t| {
        let y = conv2d_forward(&t[0], &t[1], Some(&t[2]), conv)?;
        let g = conv2d_backward(&t[0], &t[1], &t[3], conv, true)?;
        let r = conv2d_backward_relu(&t[0], &t[1], &t[3], conv, true)?;
        Ok(vec![y, conv2d_forward_act(&t[0], &t[1], Some(&t[2]), conv, Activation::Relu)?, g.dx, g.dw, g.db.unwrap(), r.dx])
    });
    let grouped = Conv2dConfig::default().stride(2).padding(1).groups(2);
    add("conv2d grouped, strided", &[&[2, 4, 9, 8], &[4, 2, 3, 3], &[2, 4, 5, 4]], tol(2 * 20), &move |_, t| {
        let g = conv2d_backward(&t[0], &t[1], &t[2], grouped, true)?;
        Ok(vec![conv2d_forward(&t[0], &t[1], None, grouped)?, g.dx, g.dw])
    });
    add("im2col / col2im", &[&[2, 3, 6, 5]], Tolerance::new(1e-6, 1e-6), &move |_, t| {
        let geo = Conv2dGeometry::new(t[0].shape(), &[4, 3, 3, 3], conv)?;
        let cols = im2col(&t[0], &geo)?;
        Ok(vec![col2im(&cols, &geo)?, cols])
    });
    let pool = Pool2dConfig::new(3).stride(2).padding(1);
    add("maxpool fwd / bwd / bwd through ReLU", &[&[2, 3, 9, 9], &[2, 3, 5, 5]], Tolerance::new(1e-6, 0.0), &move |_, t| {
        let (y, m) = maxpool_forward(&t[0], pool)?;
        Ok(vec![y, maxpool_backward(&t[1], &m, &[2, 3, 9, 9], pool)?, maxpool_backward_relu(&t[1], &m, &t[0], pool)?])
    });
    add("avgpool fwd / bwd, adaptive", &[&[2, 3, 9, 9], &[2, 3, 5, 5], &[2, 3, 4, 4]], Tolerance::new(1e-5, 1e-5), &move |_, t| {
        Ok(vec![
            avgpool_forward(&t[0], pool)?,
            avgpool_backward(&t[1], &[2, 3, 9, 9], pool)?,
            avgpool_adaptive_forward(&t[0], [4, 4])?,
            avgpool_adaptive_backward(&t[2], &[2, 3, 9, 9], [4, 4])?,
        ])
    });
    add("batchnorm y / dx / dγ / dβ / running, from f16", &[&[8, 4, 5, 5], &[4], &[4], &[8, 4, 5, 5]], Tolerance::new(1e-4, 1e-4), &|dev, t| {
        let aff = Some(Affine { gamma: &t[1], beta: &t[2] });
        let mut running = Tensor::from_vec(dev, &[2, 4], [vec![0.0; 4], vec![1.0; 4]].concat())?;
        let (y, stats) = batchnorm_forward_train(&t[0], aff, &mut running, BatchNormConfig::default())?;
        let g = batchnorm_backward(&t[0], &t[3], aff, &stats, &running, true, BatchNormConfig::default())?;
        // x kept in f16 (mixed precision): the kernels read the halves.
        let h = wgpu_cnn::ops::batchnorm::batchnorm_backward_half(&t[0].to_half()?, &t[3], aff, &stats, &running, true, BatchNormConfig::default())?;
        Ok(vec![y, g.dx, g.dgamma, g.dbeta, running, h.dx, h.dgamma, h.dbeta])
    });
    add("layernorm fwd / bwd", &[&[6, 20], &[20], &[20], &[6, 20]], Tolerance::new(1e-4, 1e-4), &|_, t| {
        let kind = NormKind::Layer { dims: 1 };
        let (y, stats) = layernorm_forward(&t[0], Some((&t[1], &t[2])), kind, 1e-5)?;
        let g = layernorm_backward(&t[0], &t[3], Some(&t[1]), &stats, kind, 1e-5)?;
        let (dg, db) = g.affine.unwrap();
        Ok(vec![y, g.dx, dg, db])
    });
    let labels: Vec<i64> = (0..12).map(|i| i % 10).collect();
    add("softmax_xent loss / grad, probs", &[&[12, 10]], Tolerance::new(1e-5, 1e-4), &move |_, t| {
        let (l, g) = softmax_xent(&t[0], &labels, CrossEntropyConfig { label_smoothing: 0.1, ..Default::default() })?;
        let (l1, _) = softmax_xent(&t[0].clone().reshape(&[1, 120])?, &[3], CrossEntropyConfig::default())?;
        Ok(vec![l, g, l1, softmax_xent_probs(&t[0], true)?])
    });
    add("softmax fwd / bwd", &[&[6, 33], &[6, 33]], Tolerance::new(1e-5, 1e-4), &|_, t| {
        let y = softmax_forward(&t[0], -1, false)?;
        Ok(vec![softmax_backward(&y, &t[1], -1, false)?, y])
    });
    for act in Activation::ALL {
        add(&format!("{act:?} fwd / bwd"), &[&[1000], &[1000]], Tolerance::new(1e-5, 1e-5), &move |_, t| Ok(vec![activation_forward(&t[0], act)?, activation_backward(&t[0], &t[1], act)?]));
    }
    add("dropout fwd / bwd", &[&[1000]], Tolerance::new(0.0, 0.0), &|_, t| {
        let cfg = DropoutConfig { p: 0.3, seed: 5, step: 1 };
        Ok(vec![dropout_forward(&t[0], cfg, true)?, dropout_backward(&t[0], cfg)?])
    });
    add("bias add / grad, permute", &[&[3, 4, 10], &[4]], Tolerance::new(1e-5, 1e-5), &|_, t| Ok(vec![bias_add(&t[0], &t[1])?, bias_grad(&t[0])?, permute_swap(&t[0], None)?]));
    add("elementwise add / fill / combine / mul", &[&[500], &[500]], Tolerance::new(1e-6, 1e-6), &|_, t| {
        let mut c = t[1].clone();
        elementwise_combine(&mut c, &t[0], 0.5, 2.0)?;
        let mut s = t[1].clone();
        elementwise_combine_sign(&mut s, &t[0], 1.0, 0.1)?;
        let mut f = t[0].clone();
        elementwise_fill(&mut f, 3.0)?;
        let relu = activation_forward(&t[1], Activation::Relu)?;
        let gate = t[1].narrow(0, 50)?.reshape(&[50])?;
        let gated = elementwise_mul(&t[0].clone().reshape(&[50, 10])?, &gate, 1.0)?;
        Ok(vec![elementwise_add(&t[0], &t[1], 1.0, -2.0)?, elementwise_add_relu_backward(&t[0], &t[1], &relu, 1.0, 1.0)?, c, s, f, elementwise_mul(&t[0], &t[1], 0.5)?, gated])
    });
    add("concat / pad / upsample", &[&[2, 3, 4, 4], &[2, 2, 4, 4], &[2, 3, 8, 8]], Tolerance::new(1e-5, 1e-5), &|_, t| {
        let cat = concat_forward(&[&t[0], &t[1]])?;
        let back = concat_backward(&cat, &[3, 2])?;
        let padded = pad_forward(&t[0], [1, 2, 0, 1])?;
        Ok(vec![
            back[0].clone(),
            cat,
            pad_backward(&padded, &[2, 3, 4, 4], [1, 2, 0, 1])?,
            upsample_forward(&t[0], [8, 8], UpsampleMode::Bilinear)?,
            upsample_backward(&t[2], &[2, 3, 4, 4], UpsampleMode::Nearest)?,
        ])
    });
    add("reduce rows / cols, loss, clip", &[&[7, 300], &[7, 300]], Tolerance::new(1e-4, 1e-4), &|_, t| {
        let (l, g) = loss_regression(&t[0], &t[1], RegressionLoss::Mse, Reduction::Mean)?;
        let mut a = t[0].clone();
        clip_global_norm(&mut [&mut a], 1.0)?;
        Ok(vec![reduce_rows(&t[0])?, reduce_cols(&t[0])?, l, g, a])
    });
    add("sgd (momentum, nesterov, wd) x3, adamw x3", &[&[3000], &[3000]], Tolerance::new(1e-5, 1e-5), &|dev, t| {
        let (mut p, mut buf) = (t[0].clone(), Tensor::zeros(dev, &[3000])?);
        let cfg = SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 1e-4, ..SgdConfig::new(0.1) };
        for s in 0..3 {
            optim_sgd_step(&mut p, &t[1], Some(&mut buf), s == 0, &cfg)?;
        }
        let (mut q, mut m, mut v) = (t[0].clone(), Tensor::zeros(dev, &[3000])?, Tensor::zeros(dev, &[3000])?);
        for s in 1..=3 {
            optim_adam_step(&mut q, &t[1], &mut m, &mut v, s, &AdamConfig::adamw(1e-3))?;
        }
        Ok(vec![p, buf, q])
    });
    // Three LeNet-5 training steps from the same weights: the losses and the
    // final weights (the multi-tensor optimiser, fused epilogues, kept
    // columns, dynamic loss scaling decided on the device: a power-of-two
    // scale, exact, that grows after two steps).
    add("LeNet-5: 3 training steps, loss-scaled", &[&[16, 1, 28, 28]], Tolerance::new(2e-4, 2e-3), &|dev, t| {
        let loss_scale = Some(wgpu_cnn::train::LossScale { init_scale: 256.0, growth_interval: 2, ..Default::default() });
        lenet_steps(dev, &t[0], TrainConfig { loss_scale, ..TrainConfig::default() })
    });
    // The same under mixed precision: activations kept for backward in f16
    // (the casts round to nearest even on both devices, bit for bit).
    add("LeNet-5: 3 training steps, mixed precision", &[&[16, 1, 28, 28]], Tolerance::new(2e-4, 2e-3), &|dev, t| {
        lenet_steps(dev, &t[0], TrainConfig { precision: wgpu_cnn::nn::Precision::Mixed, ..TrainConfig::default() })
    });
    (out, built)
}

/// Three LeNet-5 training steps on `x` (batch 16) from fixed weights under
/// `cfg`: the losses, then the weights.
fn lenet_steps(dev: &Device, x: &Tensor, cfg: TrainConfig) -> wgpu_cnn::Result<Vec<Tensor>> {
    let model = models::lenet5(dev, &mut Initializer::new(42, Init::PytorchDefault))?;
    let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) }))?;
    let mut trainer = Trainer::new(model, opt, TrainConfig { progress: false, batch_size: 16, ..cfg }, dev.clone())?;
    let labels: Vec<i64> = (0..16).map(|i| (i * 7) % 10).collect();
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(trainer.train_step(x, &labels)?);
    }
    out.extend(trainer.model.parameters("")?.iter().map(|p| p.value.clone()));
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("doctor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> wgpu_cnn::Result<bool> {
    let start = Instant::now();
    let limits = match args.limits {
        Limits::Adapter => LimitsMode::Adapter,
        Limits::Webgpu => LimitsMode::WebGpu,
    };
    let gpu = Device::gpu_with(&GpuOptions { limits, ..GpuOptions::default() })?;
    let ctx = gpu.gpu_context().expect("a GPU device").clone();
    let l = ctx.limits();
    let n = wgpu_cnn::kernel::NEEDS;
    let rows: Vec<(&str, u64, u64)> = vec![
        ("max_storage_buffers_per_shader_stage", n.storage_buffers_per_stage as u64, l.max_storage_buffers_per_shader_stage as u64),
        ("max_compute_invocations_per_workgroup", n.invocations_per_workgroup as u64, l.max_compute_invocations_per_workgroup as u64),
        ("max_compute_workgroup_size_x", n.workgroup_size_x as u64, l.max_compute_workgroup_size_x as u64),
        ("max_compute_workgroup_size_y", n.workgroup_size_y as u64, l.max_compute_workgroup_size_y as u64),
        ("max_compute_workgroup_storage_size", n.workgroup_storage_bytes as u64, l.max_compute_workgroup_storage_size as u64),
    ];
    let per_dispatch = wgpu_cnn::ops::optim::optim_tensors_per_dispatch(&gpu, true);
    let (checks, mut used) = checks(&gpu, limits);
    // Kernels built on this device or on the per-GEMM-kernel ones.
    used.extend(ctx.kernels_built());
    used.sort_unstable();
    used.dedup();
    let all: Vec<&str> = wgpu_cnn::ops::kernels().iter().map(|k| k.name).collect();
    // Kernels no check reached: the other optimiser path, at most.
    let unreached: Vec<&str> = all.iter().copied().filter(|k| !used.contains(k)).collect();
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok()).collect();
    let adapter = ctx.adapter().to_string();
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let obj = serde_json::json!({
            "adapter": adapter,
            "limits_mode": format!("{limits:?}"),
            "limits": rows.iter().map(|(name, need, have)| serde_json::json!({"limit": name, "needed": need, "offered": have})).collect::<Vec<_>>(),
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_buffer_size": l.max_buffer_size,
            "optimizer_tensors_per_dispatch": per_dispatch,
            "shader_f16": ctx.supports_f16(),
            "checks": checks.iter().map(|c| serde_json::json!({"check": c.name, "max_abs_diff": c.max_diff, "tolerance_abs": c.tolerance.abs, "tolerance_rel": c.tolerance.rel, "ok": c.ok(), "error": c.error})).collect::<Vec<_>>(),
            "kernels": all.len(),
            "kernels_run": used.len(),
            "kernels_not_run": unreached,
            "all_agree": failed.is_empty(),
            "seconds": seconds,
        });
        println!("{obj}");
        return Ok(failed.is_empty());
    }
    println!("adapter: {adapter}");
    println!("limits ({limits:?}):");
    println!("  {:<40} {:>10} {:>12}", "limit", "needed", "offered");
    for (name, need, have) in &rows {
        println!("  {name:<40} {need:>10} {have:>12}");
    }
    println!("  {:<40} {:>10} {:>12}  (larger tensors are bound in windows)", "max_storage_buffer_binding_size", "-", l.max_storage_buffer_binding_size);
    println!("  optimiser: {per_dispatch} tensor(s) a dispatch");
    println!("  f16 arithmetic in shaders (SHADER_F16): {} (mixed precision's f16 storage runs on every adapter)", if ctx.supports_f16() { "offered" } else { "not offered" });
    println!("{:<46} {:>12}  tolerance (abs + rel·|cpu|)", "check", "max |GPU−CPU|");
    for c in &checks {
        let mark = if c.ok() { "ok" } else { "FAILED" };
        println!("{:<46} {:>12.3e}  {:.0e} + {:.0e}  {mark}", c.name, c.max_diff, c.tolerance.abs, c.tolerance.rel);
        if let Some(e) = &c.error {
            println!("    {e}");
        }
    }
    println!("kernels run: {} of {} ({}not run: {})", used.len(), all.len(), "", if unreached.is_empty() { "none".to_string() } else { unreached.join(", ") });
    if failed.is_empty() {
        println!("doctor: all {} kernels agree with the CPU path on {adapter} ({} checks, {seconds:.1} s)", used.len(), checks.len());
    } else {
        println!("doctor: {} of {} checks disagree with the CPU path on {adapter}: {}", failed.len(), checks.len(), failed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "));
    }
    Ok(failed.is_empty())
}
