//! What the examples share: the `--device` choice and how it picks a device.
#![allow(dead_code)]

use clap::ValueEnum;
use wgpu_cnn::{Device, GpuOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    /// A hardware GPU if there is one, otherwise the CPU path (never lavapipe).
    Auto,
    /// The best GPU adapter, software ones (lavapipe) included.
    Gpu,
    /// The CPU reference path.
    Cpu,
}

/// Opens the device `arg` asks for (`profile`: GPU timestamp queries on).
pub fn open_device(arg: DeviceArg, profile: bool) -> wgpu_cnn::Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu => Device::gpu_with(&GpuOptions { profile, ..GpuOptions::default() })?,
        DeviceArg::Auto => match Device::gpu_with(&GpuOptions { allow_software: false, profile, ..GpuOptions::default() }) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("no hardware GPU ({e}); using the CPU path. Pass --device gpu to use a software adapter.");
                Device::Cpu
            }
        },
    })
}

/// Logging from RUST_LOG (default: warnings), then `run`; an error prints
/// one line and exits 1.
pub fn main_with<A>(args: A, run: impl FnOnce(A) -> wgpu_cnn::Result<()>) -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
