//! Weights-only files for inference and for moving models to and from
//! PyTorch: safetensors holding a model's parameters and batch-norm
//! statistics under PyTorch's `state_dict` names, with what a user of the
//! model needs (model name, input shape, class names, mean/std) in the
//! metadata.
//!
//! The names are PyTorch's for the same module structure: `Sequential`
//! children are numbered, residual blocks hold `body` and `shortcut`, and a
//! batch-norm layer has `weight`, `bias`, `running_mean`, `running_var` and
//! `num_batches_tracked` (an i64 scalar, written as 0 and ignored on load).
//! So `load_state_dict(strict=True)` takes a file written here, and a file from
//! `safetensors.torch.save_file(model.state_dict(), path)` loads here.
//!
//! Checkpoints (`crate::checkpoint`) are the other format: they also hold the
//! optimiser state and resume training.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::checkpoint::{digest, open_safetensors, write_atomic};
use crate::error::{file_err, FileErrorKind as K, Result};
use crate::nn::{Layer, State};
use crate::tensor::Tensor;

/// This format's tag in the metadata.
pub const FORMAT: &str = "wgpu-cnn weights v1";

/// What a model's user needs besides its weights; all optional, since a file
/// written by PyTorch carries none of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightsMeta {
    /// A built-in model name (`nn::models::NAMES`), when the model is one.
    pub model: Option<String>,
    /// `[channels, height, width]` of one input image.
    pub input: Option<[usize; 3]>,
    /// Class names by index (empty: unnamed).
    pub classes: Vec<String>,
    /// Per-channel normalisation applied to pixels in [0, 1] (empty: none).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (empty: none).
    pub std: Vec<f32>,
    /// The shorter side is resized to this before the centre crop (see
    /// [`crate::data::folder::Preprocess::resize`]).
    pub resize: Option<usize>,
}

/// A batch-norm layer's `[2, c]` running statistics (mean; variance) are
/// PyTorch's two buffers; the count of batches only exists there.
const RUNNING: &str = "running_stats";

/// Where one PyTorch `state_dict` entry comes from.
enum Source<'a> {
    Tensor(&'a Tensor),
    /// Row `0` (mean) or `1` (variance) of a batch-norm's `[2, c]` statistics.
    Running(&'a Tensor, usize),
    /// `num_batches_tracked`: not kept here, written as 0.
    Count,
}

/// The model's state as PyTorch names it: (name, shape, source).
fn entries(model: &mut dyn Layer) -> Vec<(String, Vec<usize>, Source<'_>)> {
    let mut out = Vec::new();
    for e in model.state("") {
        match e.state {
            State::Param { value, .. } => out.push((e.name, value.shape().to_vec(), Source::Tensor(value))),
            State::Buffer(t) => match e.name.strip_suffix(RUNNING) {
                Some(prefix) if t.ndim() == 2 && t.shape()[0] == 2 => {
                    let c = t.shape()[1];
                    out.push((format!("{prefix}running_mean"), vec![c], Source::Running(t, 0)));
                    out.push((format!("{prefix}running_var"), vec![c], Source::Running(t, 1)));
                    out.push((format!("{prefix}num_batches_tracked"), vec![], Source::Count));
                }
                _ => out.push((e.name, t.shape().to_vec(), Source::Tensor(t))),
            },
            // Dropout's mask counter only matters for resuming training (checkpoints).
            State::Counter(_) => {}
        }
    }
    out
}

/// The names and shapes of the `state_dict` PyTorch would have for the
/// same module structure, in the model's order (`num_batches_tracked` is `[]`).
pub fn state_dict_layout(model: &mut dyn Layer) -> Vec<(String, Vec<usize>)> {
    entries(model).into_iter().map(|(n, s, _)| (n, s)).collect()
}

/// The model's state as PyTorch names it, with values.
fn state_dict(model: &mut dyn Layer) -> Result<Vec<(String, Vec<usize>, Values)>> {
    entries(model)
        .into_iter()
        .map(|(n, s, src)| {
            let v = match src {
                Source::Tensor(t) => Values::F32(t.to_vec()?),
                Source::Running(t, row) => {
                    let c = t.shape()[1];
                    Values::F32(t.to_vec()?[row * c..(row + 1) * c].to_vec())
                }
                Source::Count => Values::I64(0),
            };
            Ok((n, s, v))
        })
        .collect()
}

enum Values {
    F32(Vec<f32>),
    I64(i64),
}

impl Values {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => bytemuck::cast_slice(v).to_vec(),
            Values::I64(v) => v.to_le_bytes().to_vec(),
        }
    }
}

/// Saves `model`'s weights and batch-norm statistics to `path` atomically.
pub fn save_weights(path: &Path, model: &mut dyn Layer, meta: &WeightsMeta) -> Result<()> {
    let entries = state_dict(model)?;
    let tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = entries
        .into_iter()
        .map(|(n, s, v)| {
            let dtype = if matches!(v, Values::I64(_)) { Dtype::I64 } else { Dtype::F32 };
            (n, s, dtype, v.bytes())
        })
        .collect();
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("format".into(), FORMAT.into());
    if let Some(model) = &meta.model {
        m.insert("model".into(), model.clone());
    }
    if let Some([c, h, w]) = meta.input {
        m.insert("input".into(), format!("{c},{h},{w}"));
    }
    if !meta.classes.is_empty() {
        m.insert("classes".into(), serde_json::to_string(&meta.classes).expect("strings serialise"));
    }
    if let Some(r) = meta.resize {
        m.insert("resize".into(), r.to_string());
    }
    if !meta.mean.is_empty() || !meta.std.is_empty() {
        m.insert("mean".into(), serde_json::to_string(&meta.mean).expect("floats serialise"));
        m.insert("std".into(), serde_json::to_string(&meta.std).expect("floats serialise"));
    }
    let sum = digest(tensors.iter().map(|(n, s, _, b)| (n.as_str(), s.as_slice(), b.as_slice())), &m);
    m.insert("sha256".into(), sum);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("length matches shape"))).collect();
    let bytes = safetensors::serialize(views, &Some(m)).or_else(|e| file_err(path, K::Write, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads only the metadata of a weights file (to pick the model to build).
pub fn read_meta(path: &Path) -> Result<WeightsMeta> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    let (_, meta) = open_safetensors(path, &bytes, "a weights file")?;
    parse_meta(path, &meta)
}

fn parse_meta(path: &Path, meta: &HashMap<String, String>) -> Result<WeightsMeta> {
    let bad = |k: &str, v: &str| crate::Error::File { path: path.to_path_buf(), kind: K::BadHeader, msg: format!("metadata `{k}` = {v:?} is malformed") };
    let input = match meta.get("input") {
        None => None,
        Some(v) => {
            let dims: Vec<usize> = v.split(',').map(|d| d.trim().parse()).collect::<std::result::Result<_, _>>().map_err(|_| bad("input", v))?;
            let [c, h, w]: [usize; 3] = dims.try_into().map_err(|_| bad("input", v))?;
            Some([c, h, w])
        }
    };
    let json = |k: &str| -> Result<Option<serde_json::Value>> { meta.get(k).map(|v| serde_json::from_str(v).map_err(|_| bad(k, v))).transpose() };
    let floats = |k: &str| -> Result<Vec<f32>> {
        match json(k)? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_value::<Vec<f32>>(v).map_err(|_| bad(k, &meta[k])),
        }
    };
    let classes = match json("classes")? {
        None => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<String>>(v).map_err(|_| bad("classes", &meta["classes"]))?,
    };
    let (mean, std) = (floats("mean")?, floats("std")?);
    if mean.len() != std.len() || std.iter().any(|s| !(*s > 0.0)) {
        return file_err(path, K::BadHeader, format!("mean {mean:?} and std {std:?} must have one entry per channel and std > 0"));
    }
    let resize = meta.get("resize").map(|v| v.trim().parse::<usize>().map_err(|_| bad("resize", v))).transpose()?;
    Ok(WeightsMeta { model: meta.get("model").cloned(), input, classes, mean, std, resize })
}

/// Loads weights saved by [`save_weights`] or by PyTorch
/// (`safetensors.torch.save_file(model.state_dict(), path)`) into `model`,
/// which must have the same structure. Every name, shape and dtype is checked
/// before anything is written: the error lists missing and unexpected names
/// and wrong shapes, and `model` is unchanged. Returns the file's metadata.
pub fn load_weights(path: &Path, model: &mut dyn Layer) -> Result<WeightsMeta> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    load_weights_bytes(path, &bytes, model)
}

/// [`load_weights`] on bytes in memory; `path` only labels errors.
pub fn load_weights_bytes(path: &Path, bytes: &[u8], model: &mut dyn Layer) -> Result<WeightsMeta> {
    load_impl(path, bytes, model, false).map(|(meta, _)| meta)
}

/// A head that [`load_weights_finetune`] left freshly initialised because the
/// file's has another class count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadReplaced {
    /// The head's name prefix (`"fc"`, `"classifier.6"`).
    pub prefix: String,
    /// The file's class count.
    pub from: usize,
    /// The model's.
    pub to: usize,
}

impl std::fmt::Display for HeadReplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "head '{}' replaced: {} → {} classes", self.prefix, self.from, self.to)
    }
}

/// [`load_weights`] for fine-tuning: when the model's head (the layer that
/// holds its last parameter, [`crate::nn::head_prefix`]) has another class
/// count than the file's, the head keeps its fresh initialisation and the
/// replacement is returned; everything else must load exactly, as in
/// [`load_weights`].
pub fn load_weights_finetune(path: &Path, model: &mut dyn Layer) -> Result<(WeightsMeta, Option<HeadReplaced>)> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    load_impl(path, &bytes, model, true)
}

fn load_impl(path: &Path, bytes: &[u8], model: &mut dyn Layer, replace_head: bool) -> Result<(WeightsMeta, Option<HeadReplaced>)> {
    let head = if replace_head { crate::nn::head_prefix(model).filter(|h| !h.is_empty()) } else { None };
    let mut replaced: Option<HeadReplaced> = None;
    let (st, meta) = open_safetensors(path, bytes, "a weights file")?;
    if let Some(f) = meta.get("format").filter(|f| f.as_str() != FORMAT) {
        let hint = if f.starts_with("wgpu-cnn checkpoint") { " (a training checkpoint: load it with checkpoint::load)" } else { "" };
        return file_err(path, K::BadMagic, format!("format tag {f:?}, expected {FORMAT:?}{hint}"));
    }
    let info = parse_meta(path, &meta)?;
    let want: Vec<(String, Vec<usize>, bool)> = entries(model).into_iter().map(|(n, s, src)| (n, s, matches!(src, Source::Count))).collect();
    let mut problems = Vec::new();
    let mut values: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, shape, count) in &want {
        let Ok(view) = st.tensor(name) else {
            if !count {
                problems.push(format!("missing `{name}` {shape:?}"));
            }
            continue;
        };
        if *count {
            continue; // num_batches_tracked: accepted, not used
        }
        // The head's rows are its classes: another count leaves it freshly initialised.
        let in_head = head.as_deref().is_some_and(|h| crate::nn::name_matches(name, h));
        if in_head && view.shape().len() == shape.len() && !shape.is_empty() && view.shape()[1..] == shape[1..] && view.shape()[0] != shape[0] {
            let r = HeadReplaced { prefix: head.clone().unwrap_or_default(), from: view.shape()[0], to: shape[0] };
            if replaced.as_ref().is_some_and(|old| *old != r) {
                problems.push(format!("`{name}` has shape {:?}, the model expects {shape:?}", view.shape()));
            }
            replaced = Some(r);
            continue;
        }
        if view.shape() != shape.as_slice() {
            problems.push(format!("`{name}` has shape {:?}, the model expects {shape:?}", view.shape()));
            continue;
        }
        let data = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(view.data()),
            Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(view.data()).into_iter().map(|x| x as f32).collect(),
            d => {
                problems.push(format!("`{name}` has dtype {d:?}; F32 or F64 expected"));
                continue;
            }
        };
        values.insert(name.clone(), data);
    }
    let known: Vec<&str> = want.iter().map(|(n, ..)| n.as_str()).collect();
    let mut extra: Vec<String> = st.names().into_iter().filter(|n| !known.contains(&n.as_str())).cloned().collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|n| format!("unexpected `{n}` (not part of this model)")));
    if !problems.is_empty() {
        const SHOWN: usize = 16;
        let more = problems.len().saturating_sub(SHOWN);
        problems.truncate(SHOWN);
        if more > 0 {
            problems.push(format!("… and {more} more"));
        }
        return file_err(path, K::Mismatch, format!("these weights are not for this model:\n  {}", problems.join("\n  ")));
    }
    if let Some(sum) = meta.get("sha256") {
        let tensors: Vec<(String, Vec<usize>, &[u8])> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data())).collect();
        if &digest(tensors.iter().map(|(n, s, b)| (n.as_str(), s.as_slice(), *b)), &meta) != sum {
            return file_err(path, K::Checksum, "the tensors or metadata do not match the checksum saved with them: the file is corrupt");
        }
    }
    if let Some(r) = &replaced {
        // The whole head or none of it: a weight replaced and a bias loaded would not match.
        if let Some(n) = values.keys().find(|n| crate::nn::name_matches(n, &r.prefix)) {
            return file_err(path, K::Mismatch, format!("these weights are not for this model: `{n}` fits the model's head, but the head's other tensors have {} classes, not {}", r.from, r.to));
        }
    }
    // Everything checked; now write.
    for e in model.state("") {
        match e.state {
            // A replaced head keeps its fresh initialisation.
            State::Param { .. } if !values.contains_key(&e.name) => {}
            State::Param { value: t, .. } => t.write(&values[&e.name])?,
            State::Buffer(t) => match e.name.strip_suffix(RUNNING) {
                Some(prefix) if t.ndim() == 2 && t.shape()[0] == 2 => {
                    let mut v = values[&format!("{prefix}running_mean")].clone();
                    v.extend_from_slice(&values[&format!("{prefix}running_var")]);
                    t.write(&v)?;
                }
                _ => t.write(&values[&e.name])?,
            },
            State::Counter(_) => {}
        }
    }
    Ok((info, replaced))
}
