//! Shader checks that need no GPU: naga parses and validates every `.wgsl`;
//! every shader file is owned by one op's kernel declarations; each kernel's
//! declared bindings, params size and overrides agree with its WGSL; and the
//! names follow the stem (`shaders/<stem>.wgsl`, `src/ops/<stem>.rs`,
//! `tests/parity/<stem>.rs`, entry points and public functions `<stem>_…`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
    for def in wgpu_cnn::ops::kernels() {
        check(def);
    }
}

fn check(def: &KernelDef) {
    let module = parse(def.shader);
    let stem = def.shader.stem;
    assert!(
        module.entry_points.iter().any(|ep| ep.name == def.entry && ep.stage == naga::ShaderStage::Compute),
        "{}: no compute entry point `{}` in shaders/{stem}.wgsl",
        def.name,
        def.entry,
    );
    assert!(def.entry == def.shader.stem || def.entry.starts_with(&format!("{stem}_")), "entry point `{}` is not named {stem}_<phase>", def.entry);
    let mut declared = vec![None; def.bindings.len()];
    let mut params_size = None;
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        assert_eq!(rb.group, 0, "{}: bindings live in group 0", def.name);
        let access = match var.space {
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
    assert_eq!(declared, def.bindings, "{}: WGSL bindings vs the kernel's declared bindings", def.name);
    assert_eq!(params_size, Some(def.params_size), "{}: WGSL params struct size vs Rust", def.name);
    assert_eq!(def.params_size % 16, 0, "{}: params padded to 16 bytes", def.name);
    let overrides: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
    for (name, _) in def.constants {
        assert!(overrides.contains(name), "{}: override `{name}` is not declared in the WGSL", def.name);
    }
}
