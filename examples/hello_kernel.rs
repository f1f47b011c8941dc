//! The host API in one page: open a device, upload, run a kernel, read back,
//! and check the GPU against its CPU twin.
//!
//!     cargo run --release --example hello_kernel
use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
use wgpu_cnn::{Device, Tensor, Tolerance};

#[path = "common/mod.rs"]
mod common;

/// The host API on one page: tensors, one kernel, a readback.
#[derive(clap::Parser, Debug)]
#[command(about = "The host API on one page: tensors, one kernel, a readback")]
struct Args {}

fn main() -> std::process::ExitCode {
    common::main_with(<Args as clap::Parser>::parse(), |_| run())
}

fn run() -> wgpu_cnn::Result<()> {
    // 1. A device: the best GPU wgpu can see (lavapipe counts), else say why.
    let gpu = Device::gpu()?;
    println!("adapter: {gpu}");

    // 2. Tensors are f32, row-major, and live on one device.
    let (m, k, n) = (3, 4, 2);
    let a_host: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
    let b_host: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
    let a = Tensor::from_vec(&gpu, &[m, k], a_host.clone())?;
    let b = Tensor::from_vec(&gpu, &[k, n], b_host.clone())?;

    // 3. Ops record dispatches into one command encoder; nothing runs yet.
    let c = gemm(&a, &b, GemmConfig::default())?;
    // Aᵀ·A with a transpose flag instead of a copy: [k, m] · [m, k].
    let gram = gemm(&a, &a, GemmConfig { trans_a: true, ..GemmConfig::default() })?;

    // 4. Reading back submits the pending work once and waits for it.
    let c_gpu = c.to_vec()?;
    println!("C = A·B = {c_gpu:?} (shape {:?}); AᵀA has shape {:?}", c.shape(), gram.shape());

    // 5. The same op on the CPU reference path is the spec the GPU must match.
    let cpu = Device::cpu();
    let a_cpu = Tensor::from_vec(&cpu, &[m, k], a_host)?;
    let b_cpu = Tensor::from_vec(&cpu, &[k, n], b_host)?;
    let c_cpu = gemm(&a_cpu, &b_cpu, GemmConfig::default())?.to_vec()?;
    Tolerance::new(1e-5, 1e-5).assert("gemm", &c_gpu, &c_cpu);
    println!("GPU matches the CPU reference");

    // 6. Bad input is an error that names the op and the shapes, not a panic.
    if let Err(e) = gemm(&a, &a, GemmConfig::default()) {
        println!("as expected: {e}");
    }
    Ok(())
}
