//! Checkpoints in safetensors: weights, batch-norm running statistics,
//! optimiser state, and in the metadata the step, epoch, optimiser step count
//! and a fingerprint of the model and optimiser configuration.
//!
//! Writes are atomic: a temporary file in the same directory is written,
//! fsynced and renamed over the target, so a crash mid-save leaves the
//! previous checkpoint intact (a failed save removes its temporary file).
//! A SHA-256 over every tensor (name, shape, bytes) and the metadata is kept
//! in the metadata and checked on load, so a flipped bit is an error, not a
//! silently different model. Loading checks names, shapes and dtypes and
//! names the offending tensor.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{file_err, FileErrorKind as K, Result};
use crate::nn::{Layer, State};
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
    let mut counters: Vec<(String, String)> = Vec::new();
    for e in trainer.model.state("") {
        match e.state {
            State::Param { value: t, .. } | State::Buffer(t) => put(format!("model.{}", e.name), t)?,
            State::Counter(c) => counters.push((format!("counter.model.{}", e.name), c.to_string())),
        }
    }
    for (name, t) in trainer.optimizer.state_tensors() {
        put(format!("optim.{name}"), t)?;
    }
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("fingerprint", fingerprint(trainer)),
        ("epoch", trainer.epoch.to_string()),
        ("step", trainer.step.to_string()),
        ("epoch_step", trainer.epoch_step.to_string()),
        ("optimizer_steps", trainer.optimizer.steps.to_string()),
        // Parameters whose optimiser state began after the first step, and frozen ones.
        ("optimizer_born", trainer.optimizer.state_born().iter().map(|(n, s)| format!("{n}={s}")).collect::<Vec<_>>().join(";")),
        ("frozen", trainer.model.frozen_names().join(";")),
        // Dynamic loss scaling: scale (its bits), growth tracker, skipped steps.
        ("loss_scale", trainer.loss_scale_state()?.map_or(String::new(), |s| format!("{};{};{}", s.scale.to_bits(), s.growth_tracker, s.skipped_steps))),
        ("seed", trainer.config.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(counters)
    .collect();
    let mut meta = meta;
    let sum = digest(tensors.iter().map(|(n, (s, b))| (n.as_str(), s.as_slice(), b.as_slice())), &meta);
    meta.insert("sha256".to_string(), sum);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (s, b))| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("length matches shape"))).collect();
    let bytes = safetensors::serialize(views, &Some(meta)).or_else(|e| file_err(path, K::Write, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Parses a safetensors file and its metadata; `what` names what it should
/// be ("a checkpoint") in the error when it is not a safetensors file at all.
pub(crate) fn open_safetensors<'a>(path: &Path, bytes: &'a [u8], what: &str) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    use safetensors::SafeTensorError as E;
    let st = SafeTensors::deserialize(bytes).or_else(|e| {
        let kind = match e {
            E::MetadataIncompleteBuffer | E::HeaderTooSmall | E::InvalidHeaderLength => K::Truncated,
            E::HeaderTooLarge | E::ValidationOverflow => K::Overflow,
            E::InvalidHeaderStart => K::BadMagic,
            _ => K::BadHeader,
        };
        file_err(path, kind, format!("not {what}: not a safetensors file ({e})"))
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes).or_else(|e| file_err(path, K::BadHeader, e.to_string()))?;
    Ok((st, meta.metadata().clone().unwrap_or_default()))
}

/// SHA-256 over the metadata (sorted, without the checksum itself) and every
/// tensor in name order: name, shape, bytes.
pub(crate) fn digest<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>, meta: &HashMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut keys: Vec<&String> = meta.keys().filter(|k| k.as_str() != "sha256").collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(meta[k].as_bytes());
        h.update([0]);
    }
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by_key(|t| t.0);
    for (name, shape, bytes) in tensors {
        h.update(name.as_bytes());
        h.update([0]);
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks, before a long run, that `path` can be written: its directory
/// exists and takes a new file (created and removed again). Training
/// examples call it for their checkpoint and plot paths before the first step.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let err = |msg: String| file_err(path, K::Write, msg);
    if path.is_dir() {
        return err("is a directory; give a file name".into());
    }
    if !dir.is_dir() {
        return err(format!("the directory {} does not exist", dir.display()));
    }
    let probe = dir.join(format!(".wgpu-cnn-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => err(e.to_string()),
    }
}

/// Temp file in the same directory → write → fsync → rename → fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per process and per call: two threads saving to one path must not share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    let io = |e: std::io::Error| crate::Error::File { path: path.to_path_buf(), kind: K::Write, msg: e.to_string() };
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all(); // best effort: makes the rename itself durable
    }
    Ok(())
}

/// The format tag saved in the metadata: this format's magic number. v2
/// carries the checksum; v1 files (no checksum) still load.
const FORMAT: &str = "wgpu-cnn checkpoint v2";
const FORMAT_V1: &str = "wgpu-cnn checkpoint v1";

/// Restores a trainer built with the same model and optimiser from `path`.
/// Everything is checked before anything is written: on an error the
/// trainer is unchanged.
pub fn load(path: &Path, trainer: &mut Trainer) -> Result<()> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    load_bytes(path, &bytes, trainer)
}

/// [`load`] on bytes in memory; `path` only labels errors.
pub fn load_bytes(path: &Path, bytes: &[u8], trainer: &mut Trainer) -> Result<()> {
    let (st, meta) = open_safetensors(path, bytes, "a checkpoint")?;
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(FORMAT_V1) => log::warn!("{}: a v1 checkpoint, which has no checksum", path.display()),
        other => return file_err(path, K::BadMagic, format!("format tag {other:?}, expected {FORMAT:?}: not a wgpu-cnn checkpoint")),
    }
    let get = |k: &str| meta.get(k).cloned().ok_or(()).or_else(|_| file_err(path, K::BadHeader, format!("metadata has no `{k}`")));
    let num = |k: &str| -> Result<u64> { get(k)?.parse().or_else(|_| file_err(path, K::BadHeader, format!("metadata `{k}` is not a number"))) };
    let want = fingerprint(trainer);
    let have = get("fingerprint")?;
    if have != want {
        return file_err(path, K::Mismatch, format!("saved for a different model or optimiser:\n  checkpoint: {have}\n  this run:   {want}"));
    }
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let view = st.tensor(name).or_else(|_| file_err(path, K::Mismatch, format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 {
            return file_err(path, K::Mismatch, format!("tensor `{name}` has dtype {:?}, expected F32", view.dtype()));
        }
        if view.shape() != shape {
            return file_err(path, K::Mismatch, format!("tensor `{name}` has shape {:?}, the model expects {shape:?}", view.shape()));
        }
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(view.data()))
    };
    // Pass 1: read and check everything.
    let mut expected: Vec<String> = Vec::new();
    let mut values: Vec<Vec<f32>> = Vec::new();
    let mut params: Vec<(String, Vec<usize>)> = Vec::new();
    let mut counters = Vec::new();
    for e in trainer.model.state("") {
        let name = format!("model.{}", e.name);
        let is_param = matches!(e.state, State::Param { .. });
        match e.state {
            State::Param { value: t, .. } | State::Buffer(t) => {
                values.push(read(&name, t.shape())?);
                expected.push(name);
                if is_param {
                    params.push((e.name, t.shape().to_vec()));
                }
            }
            State::Counter(_) => {
                let v = num(&format!("counter.model.{}", e.name))?;
                counters.push(u32::try_from(v).or_else(|_| file_err(path, K::BadHeader, format!("counter `{}` = {v} is out of range", e.name)))?);
            }
        }
    }
    // Optimiser state: one or two tensors per parameter.
    let adam = matches!(trainer.optimizer.config, OptimizerConfig::Adam(_));
    let mut states = Vec::new();
    for (pname, shape) in &params {
        let s1 = format!("optim.{pname}.state1");
        if st.tensor(&s1).is_err() {
            continue; // a checkpoint taken before the first step has no state
        }
        let v1 = read(&s1, shape)?;
        expected.push(s1);
        let v2 = if adam {
            let s2 = format!("optim.{pname}.state2");
            let v = read(&s2, shape)?;
            expected.push(s2);
            Some(v)
        } else {
            None
        };
        states.push((pname.clone(), shape.clone(), v1, v2));
    }
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(n)) {
        return file_err(path, K::Mismatch, format!("tensor `{extra}` is not part of this model"));
    }
    let (epoch, step, opt_steps) = (num("epoch")?, num("step")?, num("optimizer_steps")?);
    // Batches into an interrupted epoch; files from before it was kept have none.
    let epoch_step = if meta.contains_key("epoch_step") { num("epoch_step")? as usize } else { 0 };
    let opt_steps = u32::try_from(opt_steps).or_else(|_| file_err(path, K::BadHeader, format!("optimizer_steps = {opt_steps} is out of range")))?;
    // Everything has the names, shapes and dtypes this model expects (those
    // errors name the tensor); now the contents must be what was saved.
    if meta.get("format").map(String::as_str) == Some(FORMAT) {
        let tensors: Vec<(String, Vec<usize>, &[u8])> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data())).collect();
        let sum = digest(tensors.iter().map(|(n, s, b)| (n.as_str(), s.as_slice(), *b)), &meta);
        if meta.get("sha256") != Some(&sum) {
            return file_err(path, K::Checksum, "the tensors or metadata do not match the checksum saved with them: the file is corrupt");
        }
    }
    // Dynamic loss scaling's state, when saved: scale bits; growth tracker; skipped steps.
    let loss_scale = match meta.get("loss_scale").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            let parts: Vec<&str> = v.split(';').collect();
            let parsed = match parts[..] {
                [a, b, c] => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()).zip(c.parse::<u64>().ok()),
                _ => None,
            };
            let ((bits, tracker), skipped) = parsed.ok_or_else(|| crate::Error::File { path: path.to_path_buf(), kind: K::BadHeader, msg: format!("metadata `loss_scale` = {v:?} is malformed") })?;
            Some(crate::train::LossScaleState { scale: f32::from_bits(bits), growth_tracker: tracker, skipped_steps: skipped })
        }
    };
    // Pass 2: apply.
    // The same walk as pass 1, so values and counters come back in its order.
    let (mut values, mut counters) = (values.into_iter(), counters.into_iter());
    for e in trainer.model.state("") {
        match e.state {
            State::Param { value: t, .. } | State::Buffer(t) => t.write(&values.next().unwrap_or_default())?,
            State::Counter(c) => *c = counters.next().unwrap_or(*c),
        }
    }
    let dev = trainer.device.clone();
    for (pname, shape, v1, v2) in states {
        let t1 = Tensor::from_vec(&dev, &shape, v1)?;
        let t2 = v2.map(|v| Tensor::from_vec(&dev, &shape, v)).transpose()?;
        trainer.optimizer.insert_state(&pname, t1, t2);
    }
    trainer.epoch = epoch as usize;
    trainer.step = step;
    trainer.epoch_step = epoch_step;
    trainer.optimizer.steps = opt_steps;
    let born = meta.get("optimizer_born").map_or("", String::as_str).split(';').filter(|e| !e.is_empty());
    let born = born.map(|e| e.rsplit_once('=').and_then(|(n, s)| Some((n.to_string(), s.parse().ok()?)))).collect::<Option<_>>();
    trainer.optimizer.set_state_born(born.unwrap_or_default());
    if let Some(parsed) = loss_scale {
        trainer.set_loss_scale_state(parsed)?;
    }
    // Files from before freezing was kept have no list: nothing frozen.
    let frozen: Vec<&str> = meta.get("frozen").map_or("", String::as_str).split(';').filter(|e| !e.is_empty()).collect();
    trainer.model.unfreeze(&[])?;
    for name in frozen {
        // A name this model lacks was caught by the fingerprint; ignore it here.
        let _ = trainer.model.freeze(&[name]);
    }
    Ok(())
}
