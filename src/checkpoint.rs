//! Checkpoints in safetensors: weights, batch-norm running statistics,
//! optimiser state, and in the metadata the step, epoch, optimiser step count
//! and a fingerprint of the model and optimiser configuration.
//!
//! Writes are atomic: a temporary file in the same directory is written,
//! fsynced and renamed over the target, so a crash mid-save leaves the
//! previous checkpoint intact. Loading checks names, shapes and dtypes and
//! names the offending tensor.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{file_err, FileErrorKind as K, Result};
use crate::nn::Layer;
use crate::optim::OptimizerConfig;
use crate::tensor::Tensor;
use crate::train::Trainer;

/// Describes what the checkpoint belongs to: every layer and the optimiser kind.
pub fn fingerprint(trainer: &Trainer) -> String {
    let layers: Vec<String> = trainer.model.layers.iter().map(|l| l.describe()).collect();
    let opt = match trainer.optimizer.config {
        OptimizerConfig::Sgd(c) => format!("SGD(momentum {}, nesterov {})", c.momentum, c.nesterov),
        OptimizerConfig::Adam(c) => format!("Adam(decoupled {})", c.decoupled),
    };
    format!("{} | {opt}", layers.join(" → "))
}

/// Saves the trainer's state to `path` atomically.
pub fn save(path: &Path, trainer: &mut Trainer) -> Result<()> {
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut put = |name: String, t: &Tensor| -> Result<()> {
        let bytes: Vec<u8> = bytemuck::cast_slice(&t.to_vec()?).to_vec();
        tensors.insert(name, (t.shape().to_vec(), bytes));
        Ok(())
    };
    for p in trainer.model.parameters("") {
        put(format!("model.{}", p.name), p.value)?;
    }
    for (name, t) in trainer.model.buffers("") {
        put(format!("model.{name}"), t)?;
    }
    for (name, t) in trainer.optimizer.state_tensors() {
        put(format!("optim.{name}"), t)?;
    }
    let counters: Vec<(String, String)> = trainer.model.counters("").into_iter().map(|(n, v)| (format!("counter.model.{n}"), v.to_string())).collect();
    let meta: HashMap<String, String> = [
        ("format", "wgpu-cnn checkpoint v1".to_string()),
        ("fingerprint", fingerprint(trainer)),
        ("epoch", trainer.epoch.to_string()),
        ("step", trainer.step.to_string()),
        ("optimizer_steps", trainer.optimizer.steps.to_string()),
        ("seed", trainer.config.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(counters)
    .collect();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (s, b))| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("length matches shape"))).collect();
    let bytes = safetensors::serialize(views, &Some(meta)).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Temp file in the same directory → write → fsync → rename → fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| crate::Error::File { path: path.to_path_buf(), kind: K::Io, msg: e.to_string() };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all(); // best effort: makes the rename itself durable
    }
    Ok(())
}

/// Restores a trainer built with the same model and optimiser from `path`.
pub fn load(path: &Path, trainer: &mut Trainer) -> Result<()> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).or_else(|e| {
        let kind = if matches!(e, safetensors::SafeTensorError::MetadataIncompleteBuffer | safetensors::SafeTensorError::HeaderTooSmall) { K::Truncated } else { K::BadHeader };
        file_err(path, kind, format!("not a valid safetensors file: {e}"))
    })?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).or_else(|e| file_err(path, K::BadHeader, e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).cloned().ok_or(()).or_else(|_| file_err(path, K::BadHeader, format!("metadata has no `{k}`")));
    let want = fingerprint(trainer);
    let have = get("fingerprint")?;
    if have != want {
        return file_err(path, K::Mismatch, format!("saved for a different model or optimiser:\n  checkpoint: {have}\n  this run:   {want}"));
    }
    let read = |name: &str, like: &Tensor| -> Result<Vec<f32>> {
        let view = st.tensor(name).or_else(|_| file_err(path, K::Mismatch, format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 {
            return file_err(path, K::Mismatch, format!("tensor `{name}` has dtype {:?}, expected F32", view.dtype()));
        }
        if view.shape() != like.shape() {
            return file_err(path, K::Mismatch, format!("tensor `{name}` has shape {:?}, the model expects {:?}", view.shape(), like.shape()));
        }
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(view.data()))
    };
    let mut expected: Vec<String> = Vec::new();
    for p in trainer.model.parameters("") {
        let name = format!("model.{}", p.name);
        let v = read(&name, p.value)?;
        p.value.write(&v)?;
        expected.push(name);
    }
    for (n, t) in trainer.model.buffers("") {
        let name = format!("model.{n}");
        let v = read(&name, t)?;
        t.write(&v)?;
        expected.push(name);
    }
    // Optimiser state: one or two tensors per parameter.
    let adam = matches!(trainer.optimizer.config, OptimizerConfig::Adam(_));
    let params: Vec<(String, Tensor)> = trainer.model.parameters("").into_iter().map(|p| (p.name, p.value.clone())).collect();
    for (pname, value) in &params {
        let s1 = format!("optim.{pname}.state1");
        if st.tensor(&s1).is_err() {
            continue; // a checkpoint taken before the first step has no state
        }
        let dev = value.device();
        let t1 = Tensor::from_vec(&dev, value.shape(), read(&s1, value)?)?;
        expected.push(s1);
        let t2 = if adam {
            let s2 = format!("optim.{pname}.state2");
            let t = Tensor::from_vec(&dev, value.shape(), read(&s2, value)?)?;
            expected.push(s2);
            Some(t)
        } else {
            None
        };
        trainer.optimizer.insert_state(pname, t1, t2);
    }
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(n)) {
        return file_err(path, K::Mismatch, format!("tensor `{extra}` is not part of this model"));
    }
    let num = |k: &str| -> Result<u64> { get(k)?.parse().or_else(|_| file_err(path, K::BadHeader, format!("metadata `{k}` is not a number"))) };
    for (name, counter) in trainer.model.counters("") {
        *counter = num(&format!("counter.model.{name}"))? as u32;
    }
    trainer.epoch = num("epoch")? as usize;
    trainer.step = num("step")?;
    trainer.optimizer.steps = num("optimizer_steps")? as u32;
    Ok(())
}
