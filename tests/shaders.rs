//! Shader checks that need no GPU: naga parses and validates every `.wgsl`,
//! the registry matches the files, and each kernel's declared bindings and
//! params size agree with its WGSL.

use std::collections::BTreeSet;
use std::path::Path;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, StorageAccess};
use wgpu_cnn::kernel::{Access, KernelId, Shader};

fn parse(shader: Shader) -> naga::Module {
    let module = naga::front::wgsl::parse_str(shader.source())
        .unwrap_or_else(|e| panic!("shaders/{}.wgsl: {}", shader.stem(), e.emit_to_string(shader.source())));
    Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("shaders/{}.wgsl: {}", shader.stem(), e.emit_to_string(shader.source())));
    module
}

#[test]
fn every_shader_validates() {
    for &shader in Shader::ALL {
        parse(shader);
    }
}

#[test]
fn every_file_is_registered_and_tested() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: BTreeSet<String> = std::fs::read_dir(root.join("shaders"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let registered: BTreeSet<String> = Shader::ALL.iter().map(|s| s.stem().to_string()).collect();
    assert_eq!(files, registered, "shaders/*.wgsl and kernel::Shader::ALL differ");
    for stem in &files {
        assert!(root.join(format!("src/ops/{stem}.rs")).exists(), "shaders/{stem}.wgsl has no src/ops/{stem}.rs");
        assert!(root.join(format!("tests/parity/{stem}.rs")).exists(), "shaders/{stem}.wgsl has no tests/parity/{stem}.rs");
    }
    for &shader in Shader::ALL {
        assert!(KernelId::ALL.iter().any(|k| k.spec().shader == shader), "no kernel uses shaders/{}.wgsl", shader.stem());
    }
}

#[test]
fn kernel_specs_match_their_wgsl() {
    for &id in KernelId::ALL {
        let spec = id.spec();
        let module = parse(spec.shader);
        assert!(
            module.entry_points.iter().any(|ep| ep.name == spec.entry && ep.stage == naga::ShaderStage::Compute),
            "{}: no compute entry point `{}` in shaders/{}.wgsl",
            spec.name,
            spec.entry,
            spec.shader.stem()
        );
        let mut declared = vec![None; spec.bindings.len()];
        let mut params_size = None;
        for (_, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            assert_eq!(rb.group, 0, "{}: bindings live in group 0", spec.name);
            let access = match var.space {
                AddressSpace::Uniform => {
                    params_size = Some(module.types[var.ty].inner.size(module.to_ctx()) as usize);
                    Access::Uniform
                }
                AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => Access::ReadWrite,
                AddressSpace::Storage { .. } => Access::Read,
                other => panic!("{}: unexpected address space {other:?}", spec.name),
            };
            let slot = declared.get_mut(rb.binding as usize).unwrap_or_else(|| panic!("{}: binding {} not in spec", spec.name, rb.binding));
            *slot = Some(access);
        }
        let declared: Vec<Access> = declared.into_iter().map(|a| a.expect("binding gap")).collect();
        assert_eq!(declared, spec.bindings, "{}: WGSL bindings vs KernelSpec::bindings", spec.name);
        assert_eq!(params_size, Some(spec.params_size), "{}: WGSL params struct size vs Rust", spec.name);
        assert_eq!(spec.params_size % 16, 0, "{}: params padded to 16 bytes", spec.name);
        let overrides: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        for (name, _) in spec.constants {
            assert!(overrides.contains(name), "{}: override `{name}` is not declared in the WGSL", spec.name);
        }
    }
}
