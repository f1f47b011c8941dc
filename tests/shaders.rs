//! Shader checks that need no GPU: naga parses and validates every `.wgsl`;
//! every shader file is owned by one op's kernel declarations; each kernel's
//! declared bindings, params size and overrides agree with its WGSL; and the
//! names follow the stem (`shaders/<stem>.wgsl`, `src/ops/<stem>.rs`,
//! `tests/parity/<stem>.rs`, entry points and public functions `<stem>_…`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, StorageAccess};
use wgpu_cnn::kernel::{Access, KernelDef, Shader};

fn parse(shader: &Shader) -> naga::Module {
    let module = naga::front::wgsl::parse_str(shader.source)
        .unwrap_or_else(|e| panic!("shaders/{}.wgsl: {}", shader.stem, e.emit_to_string(shader.source)));
    Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("shaders/{}.wgsl: {}", shader.stem, e.emit_to_string(shader.source)));
    module
}

/// The shaders the kernels use, by stem.
fn shaders() -> BTreeMap<&'static str, &'static Shader> {
    wgpu_cnn::ops::kernels().iter().map(|k| (k.shader.stem, k.shader)).collect()
}

/// The checkout: cargo sets `CARGO_MANIFEST_DIR` when it runs a test (a
/// binary from a cached target directory may have been compiled elsewhere).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

#[test]
fn every_shader_validates() {
    for shader in shaders().values() {
        parse(shader);
    }
}

#[test]
fn every_file_is_owned_and_tested() {
    let files: BTreeSet<String> = std::fs::read_dir(root().join("shaders"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let used: BTreeSet<String> = shaders().keys().map(|s| s.to_string()).collect();
    assert_eq!(files, used, "shaders/*.wgsl and the shaders of ops::kernels() differ");
    for (stem, shader) in shaders() {
        let on_disk = std::fs::read_to_string(root().join(format!("shaders/{stem}.wgsl"))).unwrap();
        assert_eq!(on_disk, shader.source, "the Shader named `{stem}` does not embed shaders/{stem}.wgsl");
        assert!(root().join(format!("src/ops/{stem}.rs")).exists(), "shaders/{stem}.wgsl has no src/ops/{stem}.rs");
        assert!(root().join(format!("tests/parity/{stem}.rs")).exists(), "shaders/{stem}.wgsl has no tests/parity/{stem}.rs");
        // The op's file declares its own shader: kernels live beside their wrapper.
        let op = std::fs::read_to_string(root().join(format!("src/ops/{stem}.rs"))).unwrap();
        assert!(op.contains(&format!("shaders/{stem}.wgsl")), "src/ops/{stem}.rs does not declare shaders/{stem}.wgsl");
    }
}

#[test]
fn names_follow_the_stem() {
    let kernels = wgpu_cnn::ops::kernels();
    let mut seen = BTreeSet::new();
    for k in &kernels {
        assert!(seen.insert(k.name), "two kernels are named `{}` (the pipeline cache key)", k.name);
        let stem = k.shader.stem;
        assert!(k.name == stem || k.name.starts_with(&format!("{stem}_")), "kernel `{}` of shaders/{stem}.wgsl is not named {stem}_<phase>", k.name);
    }
    // Every public free function of src/ops/<stem>.rs (and of its submodules,
    // src/ops/<stem>/*.rs) is `<stem>` or `<stem>_…`.
    for entry in std::fs::read_dir(root().join("src/ops")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "mod" {
            continue;
        }
        let files: Vec<std::path::PathBuf> = if path.is_dir() { std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect() } else { vec![path.clone()] };
        for file in files {
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let Some(rest) = line.strip_prefix("pub fn ") else { continue };
                let name = rest.split(['(', '<']).next().unwrap();
                assert!(name == stem || name.starts_with(&format!("{stem}_")), "{}: public function `{name}` is not named {stem}_<phase>", file.display());
            }
        }
    }
}

#[test]
fn kernel_declarations_match_their_wgsl() {
    // Every mismatch in one report.
    let failures: Vec<String> = wgpu_cnn::ops::kernels()
        .into_iter()
        .filter_map(|def| std::panic::catch_unwind(|| check(def)).err())
        .map(|e| e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
        .collect();
    assert!(failures.is_empty(), "{} kernel declarations disagree with their WGSL:\n{}", failures.len(), failures.join("\n"));
}

fn check(def: &KernelDef) {
    let module = parse(def.shader);
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty()).validate(&module).unwrap();
    let stem = def.shader.stem;
    let ep = module.entry_points.iter().position(|ep| ep.name == def.entry && ep.stage == naga::ShaderStage::Compute);
    let ep = ep.unwrap_or_else(|| panic!("{}: no compute entry point `{}` in shaders/{stem}.wgsl", def.name, def.entry));
    let uses = info.get_entry_point(ep);
    assert!(def.entry == def.shader.stem || def.entry.starts_with(&format!("{stem}_")), "entry point `{}` is not named {stem}_<phase>", def.entry);
    let mut declared = vec![None; def.bindings.len()];
    let mut params_size = None;
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        assert_eq!(rb.group, 0, "{}: bindings live in group 0", def.name);
        // A binding this entry point never touches is `Unused`: left out of
        // its layout, so it does not count against the storage-buffer limit.
        let access = match var.space {
            _ if uses[handle].is_empty() => Access::Unused,
            AddressSpace::Uniform => {
                params_size = Some(module.types[var.ty].inner.size(module.to_ctx()) as usize);
                Access::Uniform
            }
            AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => Access::ReadWrite,
            AddressSpace::Storage { .. } => Access::Read,
            other => panic!("{}: unexpected address space {other:?}", def.name),
        };
        let slot = declared.get_mut(rb.binding as usize).unwrap_or_else(|| panic!("{}: binding {} not in its declaration", def.name, rb.binding));
        *slot = Some(access);
    }
    let declared: Vec<Access> = declared.into_iter().map(|a| a.expect("binding gap")).collect();
    assert_eq!(declared, def.bindings, "{}: WGSL bindings (as its entry point uses them) vs the kernel's declared bindings", def.name);
    assert_eq!(params_size, Some(def.params_size), "{}: WGSL params struct size vs Rust", def.name);
    assert_eq!(def.params_size % 16, 0, "{}: params padded to 16 bytes", def.name);
    let overrides: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
    for (name, _) in def.constants {
        assert!(overrides.contains(name), "{}: override `{name}` is not declared in the WGSL", def.name);
    }
}

/// A kernel's module with its override constants applied, as wgpu builds
/// its pipeline: what the backends' writers are given.
fn specialised(def: &KernelDef) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = parse(def.shader);
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty()).validate(&module).unwrap();
    let mut constants = naga::back::PipelineConstants::default();
    for (name, value) in def.constants {
        constants.insert(name.to_string(), *value);
    }
    let (m, i) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((naga::ShaderStage::Compute, def.entry)), &constants)
        .unwrap_or_else(|e| panic!("{}: overrides {:?}: {e}", def.name, def.constants));
    (m.into_owned(), i.into_owned())
}

/// Every kernel, with the override values the library uses, through naga's
/// SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12) writers, as wgpu translates
/// it on each backend; the SPIR-V is also checked by `spirv-val` where it is
/// installed (`scripts/test.sh` installs Debian's spirv-tools). Every failure
/// in one report, naming the kernel, its overrides and the backend.
#[test]
fn every_kernel_translates_for_every_backend() {
    let spirv_val = std::process::Command::new("spirv-val").arg("--version").output().is_ok_and(|o| o.status.success());
    if !spirv_val {
        eprintln!("spirv-val not found: SPIR-V is written but not validated (apt-get install spirv-tools)");
    }
    let dir = std::env::temp_dir().join(format!("wgpu-cnn-spv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for def in wgpu_cnn::ops::kernels() {
        let (module, info) = specialised(def);
        let what = |backend: &str, e: String| format!("{} (entry {}, overrides {:?}) for {backend}: {e}", def.name, def.entry, def.constants);
        let spv_opts = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
        let pipe = naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: def.entry.to_string() };
        match naga::back::spv::write_vec(&module, &info, &spv_opts, Some(&pipe)) {
            Err(e) => failures.push(what("SPIR-V", e.to_string())),
            Ok(words) if spirv_val => {
                let file = dir.join(format!("{}.spv", def.name));
                std::fs::write(&file, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
                let out = std::process::Command::new("spirv-val").args(["--target-env", "vulkan1.1"]).arg(&file).output().unwrap();
                if !out.status.success() {
                    failures.push(what("SPIR-V (spirv-val)", String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)));
                }
            }
            Ok(_) => {}
        }
        let msl_opts = naga::back::msl::Options { lang_version: (2, 4), ..Default::default() };
        let msl_pipe = naga::back::msl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, def.entry.to_string())), ..Default::default() };
        if let Err(e) = naga::back::msl::write_string(&module, &info, &msl_opts, &msl_pipe) {
            failures.push(what("MSL", e.to_string()));
        }
        let hlsl_opts = naga::back::hlsl::Options { shader_model: naga::back::hlsl::ShaderModel::V6_0, ..Default::default() };
        let hlsl_pipe = naga::back::hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, def.entry.to_string())) };
        let mut hlsl = String::new();
        if let Err(e) = naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe).write(&module, &info, None) {
            failures.push(what("HLSL", e.to_string()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} translations failed:\n{}", failures.len(), failures.join("\n"));
}

/// What a kernel needs of a device: storage buffers a stage, workgroup size
/// and invocations, workgroup memory (after its overrides).
fn needs(def: &KernelDef) -> (u32, [u32; 3], u32) {
    let (module, info) = specialised(def);
    let ep = module.entry_points.iter().position(|e| e.name == def.entry).unwrap();
    let uses = info.get_entry_point(ep);
    let shared: u32 = module
        .global_variables
        .iter()
        .filter(|(h, v)| v.space == AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
        .sum();
    (def.used_storage_bindings() as u32, module.entry_points[ep].workgroup_size, shared)
}

/// Kernels with a fallback for devices they do not fit, and the fallback.
const FALLBACKS: &[(&str, &str)] = &[("optim_sgd_step", "optim_sgd_step_two"), ("optim_adam_step", "optim_adam_step_two")];

/// `kernel::NEEDS` is exactly the most any kernel needs (fallbacks taken),
/// and that is within WebGPU's default limits, so every op runs under
/// `WGPU_CNN_LIMITS=webgpu`. Prints the table the README's limits section gives.
#[test]
fn needs_match_the_kernels_and_fit_webgpu() {
    let kernels = wgpu_cnn::ops::kernels();
    let mut most = wgpu_cnn::kernel::Needs { storage_buffers_per_stage: 0, invocations_per_workgroup: 0, workgroup_size_x: 0, workgroup_size_y: 0, workgroup_storage_bytes: 0 };
    for def in &kernels {
        let (storage, size, shared) = needs(def);
        println!("{:<28} storage buffers {storage:>2}  workgroup {:>3}×{:<2} ({:>3} invocations)  workgroup memory {shared:>5} B", def.name, size[0], size[1], size[0] * size[1] * size[2]);
        if let Some((_, fallback)) = FALLBACKS.iter().find(|(k, _)| *k == def.name) {
            assert!(kernels.iter().any(|k| k.name == *fallback), "{}'s fallback {fallback} is not a kernel", def.name);
            continue;
        }
        most.storage_buffers_per_stage = most.storage_buffers_per_stage.max(storage);
        most.invocations_per_workgroup = most.invocations_per_workgroup.max(size.iter().product());
        most.workgroup_size_x = most.workgroup_size_x.max(size[0]);
        most.workgroup_size_y = most.workgroup_size_y.max(size[1]);
        most.workgroup_storage_bytes = most.workgroup_storage_bytes.max(shared);
    }
    assert_eq!(most, wgpu_cnn::kernel::NEEDS, "kernel::NEEDS vs the kernels' own needs");
    let webgpu = wgpu::Limits::defaults();
    assert_eq!(wgpu_cnn::kernel::short_of(&webgpu), None, "WebGPU's default limits must cover every kernel (or its fallback)");
    let mut low = webgpu.clone();
    low.max_storage_buffers_per_shader_stage = 4;
    let e = wgpu_cnn::kernel::short_of(&low).unwrap();
    assert!(e.contains("max_storage_buffers_per_shader_stage is 4") && e.contains("at least 8"), "{e}");
}
