//! Max |GPU − CPU twin| for every kernel on a training-sized shape: the
//! figures behind "every GPU kernel agrees with its CPU reference".
//!
//!     cargo run --release --example parity_report
use wgpu_cnn::ops::activation::{activation_backward, activation_forward, Activation};
use wgpu_cnn::ops::avgpool::{avgpool_backward, avgpool_forward};
use wgpu_cnn::ops::batchnorm::{batchnorm_backward, batchnorm_forward_train, Affine, BatchNormConfig};
use wgpu_cnn::ops::conv2d::{conv2d_backward, conv2d_forward};
use wgpu_cnn::ops::dropout::{dropout_forward, DropoutConfig};
use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
use wgpu_cnn::ops::maxpool::{maxpool_backward, maxpool_forward};
use wgpu_cnn::ops::optim::{optim_adam_step, optim_sgd_step, AdamConfig, SgdConfig};
use wgpu_cnn::ops::softmax_xent::{softmax_xent, CrossEntropyConfig};
use wgpu_cnn::{Conv2dConfig, Device, Pool2dConfig, Tensor, Tolerance};

fn data(shape: &[usize], seed: u64) -> Vec<f32> {
    common::lcg_values(shape.iter().product(), seed)
}

/// Runs `f` on both devices with the same inputs and prints the max difference of each output.
fn report(name: &str, shape: &str, inputs: &[(&[usize], u64)], f: impl Fn(&Device, &[Tensor]) -> Vec<Tensor>, gpu: &Device) {
    let run = |dev: &Device| {
        let ts: Vec<Tensor> = inputs.iter().map(|(s, seed)| Tensor::from_vec(dev, s, data(s, *seed)).unwrap()).collect();
        f(dev, &ts).iter().map(|t| t.to_vec().unwrap()).collect::<Vec<_>>()
    };
    let (c, g) = (run(&Device::Cpu), run(gpu));
    let diffs: Vec<String> = c.iter().zip(&g).map(|(c, g)| format!("{:.2e}", Tolerance::max_abs_diff(g, c))).collect();
    println!("{name:<28} {shape:<34} {}", diffs.join(" / "));
}

#[path = "common/mod.rs"]
mod common;

/// Max |GPU − CPU| per kernel on training-sized shapes.
#[derive(clap::Parser, Debug)]
#[command(about = "Max |GPU − CPU| per kernel on training-sized shapes")]
struct Args {}

fn main() -> std::process::ExitCode {
    common::main_with(<Args as clap::Parser>::parse(), |_| run())
}

fn run() -> wgpu_cnn::Result<()> {
    let gpu = Device::gpu()?;
    println!("adapter: {gpu}\n{:<28} {:<34} max |GPU − CPU| per output", "kernel", "shape");
    let conv = Conv2dConfig::default().padding(1);
    report("gemm", "256x384x320", &[(&[256, 320], 1), (&[320, 384], 2)], |_, t| vec![gemm(&t[0], &t[1], GemmConfig::default()).unwrap()], &gpu);
    report("conv2d fwd / dx / dw / db", "x[16,16,16,16] w[32,16,3,3] p1", &[(&[16, 16, 16, 16], 3), (&[32, 16, 3, 3], 4), (&[32], 5), (&[16, 32, 16, 16], 6)], |_, t| {
        let y = conv2d_forward(&t[0], &t[1], Some(&t[2]), conv).unwrap();
        let g = conv2d_backward(&t[0], &t[1], &t[3], conv, true).unwrap();
        vec![y, g.dx, g.dw, g.db.unwrap()]
    }, &gpu);
    let pool = Pool2dConfig::new(3).stride(2).padding(1);
    report("maxpool fwd / bwd", "[16,16,28,28] k3 s2 p1", &[(&[16, 16, 28, 28], 7), (&[16, 16, 14, 14], 8)], |_, t| {
        let (y, m) = maxpool_forward(&t[0], pool).unwrap();
        let dx = maxpool_backward(&t[1], &m, &[16, 16, 28, 28], pool).unwrap();
        vec![y, dx]
    }, &gpu);
    report("avgpool fwd / bwd", "[16,16,28,28] k3 s2 p1", &[(&[16, 16, 28, 28], 9), (&[16, 16, 14, 14], 10)], |_, t| {
        vec![avgpool_forward(&t[0], pool).unwrap(), avgpool_backward(&t[1], &[16, 16, 28, 28], pool).unwrap()]
    }, &gpu);
    report("batchnorm y/dx/dγ/dβ/running", "[64,32,14,14]", &[(&[64, 32, 14, 14], 11), (&[32], 12), (&[32], 13), (&[64, 32, 14, 14], 14)], |dev, t| {
        let aff = Some(Affine { gamma: &t[1], beta: &t[2] });
        let mut running = Tensor::from_vec(dev, &[2, 32], [vec![0.0; 32], vec![1.0; 32]].concat()).unwrap();
        let (y, stats) = batchnorm_forward_train(&t[0], aff, &mut running, BatchNormConfig::default()).unwrap();
        let g = batchnorm_backward(&t[0], &t[3], aff, &stats, &running, true, BatchNormConfig::default()).unwrap();
        vec![y, g.dx, g.dgamma, g.dbeta, running]
    }, &gpu);
    let labels: Vec<i64> = (0..256).map(|i| i % 10).collect();
    report("softmax_xent loss / grad", "[256,10], smoothing 0.1", &[(&[256, 10], 15)], |_, t| {
        let (l, g) = softmax_xent(&t[0], &labels, CrossEntropyConfig { label_smoothing: 0.1, ..Default::default() }).unwrap();
        vec![l, g]
    }, &gpu);
    for act in Activation::ALL {
        report(&format!("{act:?} fwd / bwd"), "[1000000]", &[(&[1_000_000], 16), (&[1_000_000], 17)], |_, t| {
            vec![activation_forward(&t[0], act).unwrap(), activation_backward(&t[0], &t[1], act).unwrap()]
        }, &gpu);
    }
    report("dropout p=0.5", "[1000000]", &[(&[1_000_000], 18)], |_, t| vec![dropout_forward(&t[0], DropoutConfig { p: 0.5, seed: 1, step: 2 }, true).unwrap()], &gpu);
    report("sgd (nesterov, wd) x3", "[1000000]", &[(&[1_000_000], 19), (&[1_000_000], 20)], |dev, t| {
        let (mut p, mut buf) = (t[0].clone(), Tensor::zeros(dev, &[1_000_000]).unwrap());
        let cfg = SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 1e-4, ..SgdConfig::new(0.1) };
        (0..3).for_each(|s| optim_sgd_step(&mut p, &t[1], Some(&mut buf), s == 0, &cfg).unwrap());
        vec![p]
    }, &gpu);
    report("adamw x3", "[1000000]", &[(&[1_000_000], 21), (&[1_000_000], 22)], |dev, t| {
        let (mut p, mut m, mut v) = (t[0].clone(), Tensor::zeros(dev, &[1_000_000]).unwrap(), Tensor::zeros(dev, &[1_000_000]).unwrap());
        (1..=3).for_each(|s| optim_adam_step(&mut p, &t[1], &mut m, &mut v, s, &AdamConfig::adamw(1e-3)).unwrap());
        vec![p]
    }, &gpu);
    Ok(())
}
