//! Where tensors live: the CPU path or a GPU context, and how the
//! GPU adapter is chosen.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// Set to any value to let GPU tests pass without an adapter (they print that
/// they were skipped). CI never sets it.
pub const SKIP_GPU_ENV: &str = "WGPU_CNN_SKIP_GPU_TESTS";

/// How to get an adapter on a machine without a GPU; quoted by errors and tests.
pub const NO_ADAPTER_HELP: &str = "no Vulkan, Metal or DX12 adapter was found. On Linux without a GPU, install Mesa's \
     software Vulkan driver (lavapipe): `sudo apt-get install -y mesa-vulkan-drivers libvulkan1`. \
     To run only the CPU tests, set WGPU_CNN_SKIP_GPU_TESTS=1.";

/// A device that owns tensors and runs ops: the CPU path or a GPU.
/// Cloning is cheap (the GPU context is shared).
#[derive(Clone)]
pub enum Device {
    /// The CPU path: tuned kernels (blocked GEMM, threads), each checked
    /// against its plain ndarray reference twin, the spec every GPU kernel
    /// is checked against too.
    Cpu,
    /// A wgpu device and queue.
    Gpu(Arc<GpuContext>),
}

/// What to ask for when opening a GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Accept a CPU-type adapter (lavapipe, WARP, SwiftShader).
    pub allow_software: bool,
    /// Preference between discrete and integrated GPUs; `WGPU_POWER_PREF`
    /// (`high`/`low`) overrides it.
    pub power_preference: wgpu::PowerPreference,
    /// Case-insensitive substring of the adapter name; `WGPU_ADAPTER_NAME` overrides it.
    pub adapter_name: Option<String>,
    /// Time every dispatch with GPU timestamps (needs TIMESTAMP_QUERY; each
    /// flush then reads the timestamps back). See `GpuContext::profile_report`.
    pub profile: bool,
    /// The longest wait for the GPU (readback, synchronize) before it is an
    /// `Error::Timeout`; `None` waits for ever. Default 120 s.
    pub timeout: Option<std::time::Duration>,
    /// Lower the storage-binding limit below the adapter's (tests use this to
    /// run the chunked paths on any adapter); `None` keeps the adapter's.
    pub max_binding_bytes: Option<u64>,
    /// Lower the workgroups-per-dimension limit below the adapter's (tests use
    /// this to run the folded-grid paths); `None` keeps the adapter's.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Cap a convolution's column matrix at this many bytes (it is also capped
    /// by the binding limit); a batch whose columns are larger runs in chunks
    /// of images. `None` keeps the default (512 MiB). Results do not depend on
    /// it beyond rounding; tests lower it to run the multi-chunk path.
    pub max_chunk_bytes: Option<u64>,
    /// Let ops time their candidate kernels on this adapter at first use per
    /// shape class and keep the fastest (the GEMM does). `WGPU_CNN_AUTOTUNE=0`
    /// turns it off whatever this says. Off, each op uses its fixed choice.
    pub autotune: bool,
    /// Where tuned choices are kept between runs.
    pub tuning_cache: TuningCache,
    /// The most bytes of device buffers this context may create (PyTorch's
    /// `set_per_process_memory_fraction`): past it a request fails with
    /// `Error::OutOfMemory`, as a real out-of-memory would. `None`: no cap
    /// beyond the device's own. `WGPU_CNN_MEMORY_BUDGET` (bytes, or with a
    /// `K`/`M`/`G` suffix) sets it for any run.
    pub memory_budget: Option<u64>,
    /// The limits the device is opened with: the adapter's own (default), or
    /// WebGPU's defaults where the adapter offers more (what a browser or a
    /// low-end GPU gives). `WGPU_CNN_LIMITS=webgpu` (or `adapter`) sets it for any run.
    pub limits: LimitsMode,
    /// Use this GEMM kernel for every GEMM, convolutions' included, instead
    /// of the adapter's default or the tuned choice (`autotune` is then off):
    /// the `doctor` example checks each kernel this way. `None`: choose.
    pub gemm_variant: Option<crate::gpu::GemmVariant>,
}

/// Which limits a device is opened with; ops choose their kernels and work
/// splits from them (see the README's limits table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitsMode {
    /// Everything the adapter offers.
    #[default]
    Adapter,
    /// WebGPU's default limits (`wgpu::Limits::defaults()`: 8 storage buffers
    /// a stage, 128 MiB a binding, 256 MiB a buffer, 16 KiB of workgroup
    /// memory, 256 invocations), or the adapter's where it offers less.
    WebGpu,
}

impl LimitsMode {
    /// `WGPU_CNN_LIMITS` (`webgpu` or `adapter`), if set to one of them.
    pub fn from_env() -> Option<LimitsMode> {
        let v = std::env::var("WGPU_CNN_LIMITS").ok()?;
        match v.trim().to_ascii_lowercase().as_str() {
            "webgpu" => Some(LimitsMode::WebGpu),
            "adapter" | "" => Some(LimitsMode::Adapter),
            _ => {
                log::warn!("WGPU_CNN_LIMITS={v:?} is neither `webgpu` nor `adapter`; ignored");
                None
            }
        }
    }

    /// The limits to open a device with on an adapter offering `adapter`.
    pub fn resolve(self, adapter: &wgpu::Limits) -> wgpu::Limits {
        match self {
            LimitsMode::Adapter => adapter.clone(),
            LimitsMode::WebGpu => wgpu::Limits::defaults().or_worse_values_from(adapter),
        }
    }
}

/// Where a device keeps its tuned choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TuningCache {
    /// `tuning-<adapter>.json` in the platform's cache directory
    /// (`$XDG_CACHE_HOME/wgpu-cnn`, `~/.cache/wgpu-cnn`, …).
    Default,
    /// This file.
    File(std::path::PathBuf),
    /// In memory only, for this device.
    Memory,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_software: true,
            power_preference: wgpu::PowerPreference::HighPerformance,
            adapter_name: None,
            profile: false,
            timeout: Some(std::time::Duration::from_secs(120)),
            max_binding_bytes: None,
            max_workgroups_per_dimension: None,
            max_chunk_bytes: None,
            autotune: true,
            tuning_cache: TuningCache::Default,
            memory_budget: None,
            limits: LimitsMode::Adapter,
            gemm_variant: None,
        }
    }
}

impl Device {
    /// The CPU path.
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// The best GPU adapter, software adapters included. Honours
    /// `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
    pub fn gpu() -> Result<Device> {
        Device::gpu_with(&GpuOptions::default())
    }

    /// A GPU chosen by `opts`.
    pub fn gpu_with(opts: &GpuOptions) -> Result<Device> {
        Ok(Device::Gpu(Arc::new(GpuContext::new(opts)?)))
    }

    /// A hardware GPU when there is one, otherwise the CPU path. Logs the choice.
    pub fn best() -> Device {
        let opts = GpuOptions { allow_software: false, ..GpuOptions::default() };
        match Device::gpu_with(&opts) {
            Ok(dev) => {
                log::info!("using {dev}");
                dev
            }
            Err(e) => {
                log::info!("using the CPU path ({e})");
                Device::Cpu
            }
        }
    }

    /// Whether this is a GPU (hardware or software) rather than the CPU path.
    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// The GPU context, if this is a GPU device.
    pub fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match self {
            Device::Gpu(ctx) => Some(ctx),
            Device::Cpu => None,
        }
    }

    /// Submits recorded GPU work and waits for it; reports any wgpu error
    /// raised meanwhile. A no-op on the CPU path.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(ctx) => ctx.synchronize(),
        }
    }

    pub(crate) fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "CPU (tuned kernels, checked against the ndarray reference)"),
            Device::Gpu(ctx) => write!(f, "{}", ctx.adapter()),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What was chosen, in words: name, backend, type, driver.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name.
    pub name: String,
    /// Vulkan, Metal, DX12, …
    pub backend: wgpu::Backend,
    /// Discrete, integrated, CPU (software), …
    pub device_type: wgpu::DeviceType,
    /// The driver's name.
    pub driver: String,
    /// The driver's version text.
    pub driver_info: String,
}

impl AdapterSummary {
    pub(crate) fn from_info(info: &wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }

    /// A CPU implementation of the API (lavapipe and friends).
    /// Adapter name, backend and driver as a file-name-safe key (tuning files).
    pub fn file_key(&self) -> String {
        format!("{}-{:?}-{}", self.name, self.backend, self.driver_info)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .collect()
    }

    /// Whether the adapter runs on the CPU (lavapipe, WARP): correct, not fast.
    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu::DeviceType::VirtualGpu => "virtual GPU",
            wgpu::DeviceType::Cpu => "SOFTWARE adapter (runs on the CPU; correct but slow)",
            wgpu::DeviceType::Other => "other",
        };
        write!(f, "{} [{:?}, {kind}, driver {} {}]", self.name, self.backend, self.driver, self.driver_info)
    }
}

/// Orders adapters: the best first for the given preference.
fn rank(device_type: wgpu::DeviceType, pref: wgpu::PowerPreference) -> u8 {
    use wgpu::DeviceType as T;
    let low_power = pref == wgpu::PowerPreference::LowPower;
    match device_type {
        T::DiscreteGpu if low_power => 1,
        T::DiscreteGpu => 0,
        T::IntegratedGpu if low_power => 0,
        T::IntegratedGpu => 1,
        T::VirtualGpu => 2,
        T::Other => 3,
        T::Cpu => 4,
    }
}

/// Picks an adapter following wgpu's conventions; errors list what was seen.
pub(crate) fn choose_adapter(instance: &wgpu::Instance, opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HELP.to_string()));
    }
    let seen: Vec<String> = adapters.iter().map(|a| AdapterSummary::from_info(&a.get_info()).to_string()).collect();
    let name = std::env::var("WGPU_ADAPTER_NAME").ok().or_else(|| opts.adapter_name.clone()).map(|n| n.to_lowercase());
    let pref = wgpu::PowerPreference::from_env().unwrap_or(opts.power_preference);
    let mut candidates: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            let name_ok = name.as_ref().is_none_or(|n| info.name.to_lowercase().contains(n));
            let type_ok = opts.allow_software || info.device_type != wgpu::DeviceType::Cpu;
            // Compute shaders are what we need; GL-only adapters are not built in.
            name_ok && type_ok && a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    candidates.sort_by_key(|a| rank(a.get_info().device_type, pref));
    candidates.into_iter().next().ok_or_else(|| {
        let why = match (&name, opts.allow_software) {
            (Some(n), _) => format!("no adapter name contains `{n}`"),
            (None, false) => "only software adapters were found and they were not allowed".to_string(),
            (None, true) => "no adapter supports compute shaders".to_string(),
        };
        Error::NoAdapter(format!("{why}; adapters seen: {}", seen.join("; ")))
    })
}
