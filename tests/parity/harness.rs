//! What every parity test shares: the GPU device, seeded data, the oracle helpers.

use std::sync::OnceLock;

use rand::{rngs::StdRng, Rng, SeedableRng};
use wgpu_cnn::device::{NO_ADAPTER_HELP, SKIP_GPU_ENV};
use wgpu_cnn::Device;

/// The shared GPU for this test binary. `None` only when the user opted out
/// with WGPU_CNN_SKIP_GPU_TESTS; without an adapter otherwise, the test fails.
pub fn gpu() -> Option<Device> {
    static GPU: OnceLock<Option<Device>> = OnceLock::new();
    GPU.get_or_init(|| {
        if std::env::var_os(SKIP_GPU_ENV).is_some() {
            return None;
        }
        match Device::gpu() {
            Ok(dev) => {
                // Straight to the stream, not eprintln!: libtest captures the macro,
                // and the CI log should say which adapter ran the GPU tests.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "GPU tests run on: {dev}");
                Some(dev)
            }
            Err(e) => panic!("GPU test without an adapter: {e}\n{NO_ADAPTER_HELP}"),
        }
    })
    .clone()
}

/// Runs a GPU test body, or says loudly that it was skipped on request.
pub fn with_gpu(name: &str, body: impl FnOnce(&Device)) {
    match gpu() {
        Some(dev) => body(&dev),
        None => eprintln!("SKIPPED {name}: {SKIP_GPU_ENV} is set"),
    }
}

/// Uniform values in [-1, 1), reproducible from `seed`.
pub fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One test body per device: `$name::cpu`, and `$name::gpu` on the shared GPU.
#[macro_export]
macro_rules! test_device {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$body(&wgpu_cnn::Device::Cpu);
            }
            #[test]
            fn gpu() {
                $crate::harness::with_gpu(concat!(stringify!($name), "::gpu"), |dev| super::$body(dev));
            }
        }
    };
}

/// ⟨a, b⟩ in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Asserts ⟨f(x), y⟩ = ⟨x, fᵀ(y)⟩: a backward pass of a linear op is its adjoint.
#[track_caller]
pub fn assert_adjoint(op: &str, fx: &[f32], y: &[f32], x: &[f32], fty: &[f32]) {
    let (lhs, rhs) = (dot(fx, y), dot(x, fty));
    assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{op}: ⟨f(x), y⟩ = {lhs} but ⟨x, fᵀ(y)⟩ = {rhs}");
}

/// Central differences of a scalar function at every coordinate of `v` (f64 accumulation).
pub fn numeric_grad(v: &[f32], eps: f32, f: &dyn Fn(&[f32]) -> f64) -> Vec<f32> {
    (0..v.len())
        .map(|i| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += eps;
            m[i] -= eps;
            ((f(&p) - f(&m)) / (2.0 * eps as f64)) as f32
        })
        .collect()
}

/// A path in the checkout. Cargo sets `CARGO_MANIFEST_DIR` when it runs a
/// test, so a test binary compiled in another checkout (a cached target
/// directory) still reads this one's fixtures; the compile-time value is
/// the fallback for running the binary by hand.
pub fn repo_path(p: &str) -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), std::path::PathBuf::from);
    root.join(p)
}

/// A tensor from `tests/fixtures/ops.safetensors` (PyTorch reference values,
/// made by `tests/fixtures/make_ops.py`): its shape and values.
pub fn torch_value(key: &str) -> (Vec<usize>, Vec<f32>) {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| std::fs::read(repo_path("tests/fixtures/ops.safetensors")).expect("tests/fixtures/ops.safetensors"));
    let st = safetensors::SafeTensors::deserialize(bytes).expect("a safetensors file");
    let v = st.tensor(key).unwrap_or_else(|_| panic!("fixture `{key}` is missing; rerun tests/fixtures/make_ops.py"));
    (v.shape().to_vec(), bytemuck::pod_collect_to_vec::<u8, f32>(v.data()))
}

/// [`torch_value`] as a tensor on `dev`.
pub fn torch_tensor(dev: &Device, key: &str) -> wgpu_cnn::Tensor {
    let (shape, v) = torch_value(key);
    wgpu_cnn::Tensor::from_vec(dev, &shape, v).unwrap()
}
