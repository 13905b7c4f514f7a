//! HF safetensors checkpoints: loading (single file or sharded index, per-expert or stacked expert tensors)
//! into the model's VarStore, and saving back under HF names; [`Qwen3Model::load`] and
//! [`Qwen3Model::save_hf`] live here, so this module depends on `qwen3` and not the other way round.
//!
//! The safetensors header is parsed here rather than through `VarStore::read_safetensors` so that shards
//! load one tensor at a time (no whole-shard buffer) and every failure names the file and the tensor.

use crate::config::Qwen3Config;
use crate::qwen3::{Qwen3Model, add_var, param_shapes};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Largest shard `save_hf` writes before starting a new one (transformers' default `max_shard_size`).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

impl Qwen3Model {
    /// Loads an HF model directory: `config.json` and `model.safetensors` or `model.safetensors.index.json`
    /// with its shards. Errors name the file and the tensor (missing, wrong shape, truncated, wrong dtype).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let vs = VarStore::new(device);
        {
            let _g = tch::no_grad_guard();
            for (name, shape) in param_shapes(&config) {
                add_var(
                    &vs,
                    &name,
                    Tensor::f_empty(shape.as_slice(), (kind, device))?,
                );
            }
        }
        load_hf_weights(dir, &config, &vs)?;
        Self::from_var_store(config, vs, kind)
    }

    /// Copies the weights of the HF folder `dir` (a model of this one's shape) into the parameters in place, one
    /// variable at a time, read by range ([`crate::hf_ranges::HfRanges`]): no second copy of the model. Every
    /// header is checked before anything is copied; a damaged value found later stops the copy with the
    /// weights partly replaced (load again). The parameters keep their storage, so CUDA graphs over them stay
    /// valid.
    pub fn load_weights_in_place(&self, dir: &Path) -> Result<()> {
        let ranges = crate::hf_ranges::HfRanges::open(dir, &self.config)?;
        let _g = tch::no_grad_guard();
        for (name, mut var) in self.vs.variables() {
            let whole = ranges
                .read(&name, 0, var.numel() as i64)?
                .f_to_kind(var.kind())?
                .f_to_device(var.device())?
                .f_view(var.size().as_slice())?;
            var.f_copy_(&whole)
                .with_context(|| format!("{}: copying `{name}`", dir.display()))?;
        }
        Ok(())
    }

    /// Writes `config.json` and the weights under HF names (per-expert tensors un-stacked) as safetensors
    /// (sharded with an index above 5 GB), each file atomically.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        save_hf(self, dir)
    }
}

/// Where an HF tensor lands in the VarStore.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) var: String,
    /// Expert index within a stacked `[E, ..]` variable.
    pub(crate) expert: Option<i64>,
    /// Row range within the (expert's) matrix: gate rows `0..I`, up rows `I..2I` of `gate_up_proj`.
    pub(crate) rows: Option<(i64, i64)>,
    pub(crate) shape: Vec<i64>,
}

/// Expected HF tensors of a config: per-expert names for MoE layers (the hub layout).
pub(crate) fn hf_targets(c: &Qwen3Config) -> Vec<(String, Target)> {
    let mut out = Vec::new();
    for (var, shape) in param_shapes(c) {
        if let Some(prefix) = var.strip_suffix(".gate_up_proj") {
            let (e, i2, h) = (shape[0], shape[1], shape[2]);
            let i = i2 / 2;
            for x in 0..e {
                for (name, rows) in [("gate_proj", (0, i)), ("up_proj", (i, i))] {
                    out.push((
                        format!("{prefix}.{x}.{name}.weight"),
                        Target {
                            var: var.clone(),
                            expert: Some(x),
                            rows: Some(rows),
                            shape: vec![i, h],
                        },
                    ));
                }
            }
        } else if let Some(prefix) = var
            .strip_suffix(".down_proj")
            .filter(|p| p.ends_with(".experts"))
        {
            for x in 0..shape[0] {
                out.push((
                    format!("{prefix}.{x}.down_proj.weight"),
                    Target {
                        var: var.clone(),
                        expert: Some(x),
                        rows: None,
                        shape: vec![shape[1], shape[2]],
                    },
                ));
            }
        } else {
            out.push((
                var.clone(),
                Target {
                    var,
                    expert: None,
                    rows: None,
                    shape,
                },
            ));
        }
    }
    out
}

/// One tensor entry of a safetensors header.
pub(crate) struct Entry {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Parses the header of a safetensors file, checking every tensor's byte range against the file length.
pub(crate) fn read_header(path: &Path) -> Result<(std::fs::File, u64, BTreeMap<String, Entry>)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| anyhow!("{}: truncated file (no safetensors header)", path.display()))?;
    let n = u64::from_le_bytes(n);
    // `n` is read from the file: compared without `8 + n`, which a damaged length would overflow.
    if n > file_len.saturating_sub(8) {
        bail!(
            "{}: truncated file (header of {n} bytes, file holds {file_len})",
            path.display()
        );
    }
    let mut hdr = vec![0u8; n as usize];
    f.read_exact(&mut hdr)?;
    let v: Value = serde_json::from_slice(&hdr)
        .with_context(|| format!("{}: safetensors header is not valid JSON", path.display()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("{}: safetensors header is not an object", path.display()))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut entries = BTreeMap::new();
    for (name, e) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = || {
            anyhow!(
                "{}: tensor `{name}`: malformed header entry {e}",
                path.display()
            )
        };
        let dtype = e
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(bad)?
            .to_string();
        let shape: Vec<i64> = e
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_i64().ok_or_else(bad))
            .collect::<Result<_>>()?;
        let offs = e
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(bad)?;
        let (start, end) = match offs.as_slice() {
            [a, b] => (a.as_u64().ok_or_else(bad)?, b.as_u64().ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        if end > data_len || start > end {
            bail!(
                "{}: truncated file: tensor `{name}` needs bytes {start}..{end} of the data section, which holds {data_len}",
                path.display()
            );
        }
        entries.insert(
            name.clone(),
            Entry {
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    Ok((f, data_start, entries))
}

/// Checks one header entry against the shape it must have; returns its dtype and byte length.
pub(crate) fn check_entry(
    path: &Path,
    name: &str,
    e: &Entry,
    shape: &[i64],
) -> Result<(Kind, usize)> {
    let Some(src_kind) = dtype_kind(&e.dtype) else {
        bail!(
            "{}: tensor `{name}` has dtype {}, expected a floating dtype (F32, BF16, F16)",
            path.display(),
            e.dtype
        );
    };
    if e.shape != shape {
        bail!(
            "{}: tensor `{name}` has shape {:?}, expected {:?}",
            path.display(),
            e.shape,
            shape
        );
    }
    let numel: i64 = e.shape.iter().product();
    let nbytes = (e.end - e.start) as usize;
    if nbytes != numel as usize * src_kind.elt_size_in_bytes() {
        bail!(
            "{}: tensor `{name}`: {nbytes} bytes stored for shape {:?} of {}",
            path.display(),
            e.shape,
            e.dtype
        );
    }
    Ok((src_kind, nbytes))
}

/// Where an HF folder's tensors land among a config's variables: the hub's per-expert names, or a stacked expert
/// tensor stored whole (transformers 5.x in-memory names). Loading and reading by range resolve names through it.
pub(crate) struct TensorMap<'c> {
    config: &'c Qwen3Config,
    pub(crate) targets: HashMap<String, Target>,
    stacked: HashMap<String, Vec<i64>>,
}

impl<'c> TensorMap<'c> {
    pub(crate) fn new(config: &'c Qwen3Config) -> Self {
        TensorMap {
            config,
            targets: hf_targets(config).into_iter().collect(),
            stacked: param_shapes(config)
                .into_iter()
                .filter(|(n, _)| n.contains(".mlp.experts."))
                .collect(),
        }
    }

    /// Where tensor `name` of file `path` lands, and whether it is a stacked tensor covering its whole
    /// variable; None for what loaders skip (rotary `inv_freq`, a tied LM head); an error naming the file for a
    /// tensor that is not part of this model.
    pub(crate) fn resolve(&self, path: &Path, name: &str) -> Result<Option<(Target, bool)>> {
        if let Some(t) = self.targets.get(name) {
            return Ok(Some((t.clone(), false)));
        }
        if let Some(shape) = self.stacked.get(name) {
            let whole = Target {
                var: name.to_string(),
                expert: None,
                rows: None,
                shape: shape.clone(),
            };
            return Ok(Some((whole, true)));
        }
        if name.ends_with(".rotary_emb.inv_freq")
            || (name == "lm_head.weight" && self.config.tie_word_embeddings)
        {
            return Ok(None);
        }
        bail!(
            "{}: unexpected tensor `{name}` (not part of a {} model with this config.json)",
            path.display(),
            self.config.model_type.as_str()
        )
    }
}

/// `n` elements of dtype `kind` at byte `offset` of `f` (tensor `name` of `path`), as a flat tensor of `kind`.
pub(crate) fn read_run(
    f: &mut std::fs::File,
    offset: u64,
    n: i64,
    kind: Kind,
    path: &Path,
    name: &str,
) -> Result<Tensor> {
    let mut buf = vec![0u8; n as usize * kind.elt_size_in_bytes()];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)
        .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
    Ok(Tensor::f_from_data_size(&buf, &[n], kind)?)
}

fn dtype_kind(s: &str) -> Option<Kind> {
    match s {
        "F32" => Some(Kind::Float),
        "BF16" => Some(Kind::BFloat16),
        "F16" => Some(Kind::Half),
        "F64" => Some(Kind::Double),
        _ => None,
    }
}

fn kind_dtype(k: Kind) -> Result<&'static str> {
    Ok(match k {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Double => "F64",
        other => bail!("cannot save parameters of dtype {other:?}"),
    })
}

/// Shards and, for an index, the index path and its `weight_map` (tensor -> file name).
pub(crate) type CheckpointFiles = (Vec<PathBuf>, Option<(PathBuf, HashMap<String, String>)>);

/// The checkpoint files of `dir` and, for an index, which file each tensor is listed in.
pub(crate) fn checkpoint_files(dir: &Path) -> Result<CheckpointFiles> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?,
        )
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing field `weight_map`", index.display()))?;
        let mut files: Vec<String> = Vec::new();
        let mut wm = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                anyhow!("{}: weight_map[{name}] is not a file name", index.display())
            })?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            wm.insert(name.clone(), file.to_string());
        }
        let paths = files.iter().map(|f| dir.join(f)).collect::<Vec<_>>();
        for p in &paths {
            if !p.exists() {
                bail!(
                    "{}: shard {} listed in the index does not exist",
                    index.display(),
                    p.display()
                );
            }
        }
        return Ok((paths, Some((index, wm))));
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok((vec![single], None));
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )
}

/// Loads every expected tensor of `config` from the HF directory into the variables of `vs`.
pub fn load_hf_weights(dir: &Path, config: &Qwen3Config, vs: &VarStore) -> Result<()> {
    let map = TensorMap::new(config);
    let vars = vs.variables();
    let (files, index) = checkpoint_files(dir)?;
    let mut loaded: HashSet<String> = HashSet::new();
    let _g = tch::no_grad_guard();
    for path in &files {
        let (mut f, data_start, entries) = read_header(path)?;
        if let Some((idx_path, wm)) = &index {
            let fname = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((name, _)) = wm
                .iter()
                .find(|(n, file)| **file == fname && !entries.contains_key(*n))
            {
                bail!(
                    "{}: missing tensor `{name}` (listed for this file in {})",
                    path.display(),
                    idx_path.display()
                );
            }
        }
        tracing::debug!(file = %path.display(), tensors = entries.len(), "loading shard");
        for (name, e) in &entries {
            let Some((target, whole)) = map.resolve(path, name)? else {
                continue;
            };
            let (src_kind, _) = check_entry(path, name, e, &target.shape)?;
            let numel: i64 = e.shape.iter().product();
            let src = read_run(&mut f, data_start + e.start, numel, src_kind, path, name)?
                .f_view(e.shape.as_slice())?;
            // NaN / Inf weights make every reply garbage ("!!!!") without any error: refused here. A sum is
            // non-finite exactly when some element is (weights are far from overflowing it in f64).
            if !src.f_sum(Kind::Double)?.double_value(&[]).is_finite() {
                let bad = src.f_isfinite()?.f_logical_not()?.f_sum(Kind::Int64)?;
                bail!(
                    "{}: tensor `{name}` holds {} non-finite values (NaN or Inf): the weights are damaged",
                    path.display(),
                    bad.int64_value(&[])
                );
            }
            let var = vars
                .get(&target.var)
                .ok_or_else(|| anyhow!("internal: no variable {}", target.var))?;
            let mut dst = var.shallow_clone();
            if let Some(x) = target.expert {
                dst = dst.f_select(0, x)?;
            }
            if let Some((s, n)) = target.rows {
                dst = dst.f_narrow(0, s, n)?;
            }
            dst.f_copy_(&src)?;
            if whole {
                // A stacked tensor covers every per-expert name of its variable.
                for (n, t) in &map.targets {
                    if t.var == target.var {
                        loaded.insert(n.clone());
                    }
                }
            } else {
                loaded.insert(name.clone());
            }
        }
    }
    let mut missing: Vec<&String> = map
        .targets
        .keys()
        .filter(|n| !loaded.contains(*n))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        let where_ = match &index {
            Some((p, wm)) => match wm.get(missing[0]) {
                Some(file) => format!("{} (the index lists it in {file})", p.display()),
                None => p.display().to_string(),
            },
            None => files[0].display().to_string(),
        };
        bail!(
            "{where_}: missing tensor `{}`{}",
            missing[0],
            if missing.len() > 1 {
                format!(" and {} more", missing.len() - 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// One tensor to write: HF name and a producer of its contiguous CPU value.
struct OutTensor {
    name: String,
    value: Tensor,
}

fn hf_tensors(model: &Qwen3Model) -> Result<Vec<OutTensor>> {
    hf_tensors_of(model, hf_targets(&model.config))
}

/// The HF tensors of `targets` as views of the model's variables.
fn hf_tensors_of(model: &Qwen3Model, targets: Vec<(String, Target)>) -> Result<Vec<OutTensor>> {
    let vars = model.vs.variables();
    let mut out = Vec::new();
    for (name, target) in targets {
        let var = vars
            .get(&target.var)
            .ok_or_else(|| anyhow!("internal: no variable {}", target.var))?;
        let mut t = var.shallow_clone();
        if let Some(x) = target.expert {
            t = t.f_select(0, x)?;
        }
        if let Some((s, n)) = target.rows {
            t = t.f_narrow(0, s, n)?;
        }
        out.push(OutTensor { name, value: t });
    }
    Ok(out)
}

fn write_safetensors(path: &Path, tensors: &[OutTensor]) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for t in tensors {
        let n = t.value.numel() * t.value.kind().elt_size_in_bytes();
        header.insert(
            t.name.clone(),
            json!({"dtype": kind_dtype(t.value.kind())?, "shape": t.value.size(), "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut hdr = serde_json::to_vec(&Value::Object(header))?;
    while hdr.len() % 8 != 0 {
        hdr.push(b' ');
    }
    spar_core::fsio::write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(hdr.len() as u64).to_le_bytes())?;
        w.write_all(&hdr)?;
        for t in tensors {
            let cpu = tch::no_grad(|| {
                t.value
                    .f_to_device(tch::Device::Cpu)
                    .and_then(|x| x.f_contiguous())
            })
            .map_err(std::io::Error::other)?;
            let n = cpu.numel();
            let mut buf = vec![0u8; n * cpu.kind().elt_size_in_bytes()];
            cpu.f_copy_data_u8(&mut buf, n)
                .map_err(std::io::Error::other)?;
            w.write_all(&buf)?;
        }
        w.flush()
    })
    .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// Saves `config.json` and the weights (HF names, per-expert tensors) into `dir`.
pub fn save_hf(model: &Qwen3Model, dir: &Path) -> Result<()> {
    save_hf_sharded(model, dir, MAX_SHARD_BYTES)
}

/// [`save_hf`] with an explicit shard size: above `max_shard_bytes` the weights go to
/// `model-0000i-of-0000n.safetensors` files and `model.safetensors.index.json`.
pub fn save_hf_sharded(model: &Qwen3Model, dir: &Path, max_shard_bytes: usize) -> Result<()> {
    model.ensure_readable()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors = hf_tensors(model)?;
    let mut shards: Vec<Vec<OutTensor>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for t in tensors {
        let n = t.value.numel() * t.value.kind().elt_size_in_bytes();
        if size + n > max_shard_bytes && !shards.last().is_some_and(|s| s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += n;
        total += n;
        shards.last_mut().expect("one shard exists").push(t);
    }
    let mut written = Vec::new();
    if shards.len() == 1 {
        write_safetensors(&dir.join("model.safetensors"), &shards[0])?;
        written.push("model.safetensors".to_string());
    } else {
        let n = shards.len();
        let mut wm = Map::new();
        for (i, s) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            tracing::info!(shard = %name, "writing");
            write_safetensors(&dir.join(&name), s)?;
            for t in s {
                wm.insert(t.name.clone(), json!(name));
            }
            written.push(name);
        }
        write_index(dir, total, wm, &mut written)?;
    }
    finish_folder(model, dir, &written)
}

/// The end of every save: stale weight files (another shard count) removed, then `config.json`.
fn finish_folder(model: &Qwen3Model, dir: &Path, written: &[String]) -> Result<()> {
    remove_stale_weights(dir, written)?;
    let mut cfg = model.config.clone();
    cfg.torch_dtype = Some(
        match model.kind() {
            Kind::BFloat16 => "bfloat16",
            Kind::Half => "float16",
            _ => "float32",
        }
        .into(),
    );
    spar_core::fsio::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hf_json())?.as_bytes(),
    )?;
    Ok(())
}

/// [`save_hf`] for a model whose parameters a sharding trainer holds (`units`), one unit at a time: each unit is
/// gathered, written as its own file `model-0000i-of-0000n.safetensors` (the root first, then one per decoder
/// layer) and released, so no process ever holds more than one unit whole. Every rank of the sharder's group
/// must call it (the gathers are collectives) with the same `dir`; `(rank, world)`: unit i is written by rank
/// i mod world, so the ranks share the writing. Once every rank has returned Ok, one rank completes the folder
/// with [`finish_hf_by_unit`]. After a failed write a rank goes on gathering (without writing) so that the others
/// are not left waiting, and returns the error at the end.
pub fn save_hf_by_unit(
    model: &Qwen3Model,
    dir: &Path,
    (rank, world): (usize, usize),
    units: &dyn crate::param_units::ParamUnits,
) -> Result<()> {
    let mut failed = std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))
        .err();
    let all = model.units();
    let n = all.len();
    let targets = hf_targets(&model.config);
    for (i, unit) in all.into_iter().enumerate() {
        units.gather(unit)?;
        if i % world.max(1) == rank && failed.is_none() {
            let name = unit_file(i, n);
            tracing::info!(shard = %name, unit = %unit.name(), "writing");
            failed = hf_tensors_of(model, unit_targets(model, &targets, unit))
                .and_then(|tensors| write_safetensors(&dir.join(&name), &tensors))
                .err();
        }
        units.release(unit)?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Completes a folder every rank wrote its units into with [`save_hf_by_unit`]: the index (from the config alone),
/// `config.json`, stale weight files removed.
pub fn finish_hf_by_unit(model: &Qwen3Model, dir: &Path) -> Result<()> {
    let all = model.units();
    let n = all.len();
    let targets = hf_targets(&model.config);
    let elt = model.kind().elt_size_in_bytes();
    let (mut wm, mut written, mut total) = (Map::new(), Vec::new(), 0usize);
    for (i, unit) in all.into_iter().enumerate() {
        let name = unit_file(i, n);
        ensure!(
            dir.join(&name).is_file(),
            "{}: {name} (unit {}) was not written",
            dir.display(),
            unit.name()
        );
        for (hf, t) in unit_targets(model, &targets, unit) {
            total += t.shape.iter().product::<i64>() as usize * elt;
            wm.insert(hf, json!(name));
        }
        written.push(name);
    }
    write_index(dir, total, wm, &mut written)?;
    finish_folder(model, dir, &written)
}

/// The file of unit `i` of `n`.
fn unit_file(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// The HF tensors whose variables belong to `unit`.
fn unit_targets(
    model: &Qwen3Model,
    targets: &[(String, Target)],
    unit: crate::param_units::Unit,
) -> Vec<(String, Target)> {
    let vars: HashSet<String> = model
        .unit_params(unit)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    targets
        .iter()
        .filter(|(_, t)| vars.contains(&t.var))
        .cloned()
        .collect()
}

/// `model.safetensors.index.json`: which file holds each tensor (added to `written`).
fn write_index(
    dir: &Path,
    total: usize,
    weight_map: Map<String, Value>,
    written: &mut Vec<String>,
) -> Result<()> {
    let idx = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    spar_core::fsio::write_atomic(
        &dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&idx)?.as_bytes(),
    )?;
    written.push("model.safetensors.index.json".into());
    Ok(())
}

/// Copies the HF folder `src` (a checkpoint's `model/`) to `dst` as it is: the same files, dtype and bytes, one
/// file at a time, after checking it as [`Qwen3Model::load`] would (every header against `config.json`, every
/// value finite; read in pieces, never a whole model in memory). What `spar export` writes, so a model larger
/// than the machine's memory exports too. Each file is written atomically; stale weight files in `dst` go.
pub fn copy_hf_folder(src: &Path, dst: &Path) -> Result<()> {
    let config = Qwen3Config::from_file(&src.join("config.json"))?;
    let ranges = crate::hf_ranges::HfRanges::open(src, &config)?;
    ranges.check_finite(1 << 24)?;
    let (files, index) = checkpoint_files(src)?;
    let mut names: Vec<String> = Vec::new();
    let copy = |from: &Path, name: &str| -> Result<()> {
        let mut input =
            std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
        spar_core::fsio::write_atomic_with(&dst.join(name), |f| {
            std::io::copy(&mut input, f).map(|_| ())
        })
        .map_err(|e| anyhow!("writing {}: {e}", dst.join(name).display()))
    };
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{}: not a file", f.display()))?;
        copy(f, &name)?;
        names.push(name);
    }
    if let Some((idx, _)) = &index {
        copy(idx, "model.safetensors.index.json")?;
        names.push("model.safetensors.index.json".into());
    }
    remove_stale_weights(dst, &names)?;
    copy(&src.join("config.json"), "config.json")
}

/// Removes weight files of `dir` not in `keep`: stale weights from an earlier save with another shard count
/// would shadow or confuse loaders.
fn remove_stale_weights(dir: &Path, keep: &[String]) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_weights = name.starts_with("model")
            && (name.ends_with(".safetensors") || name == "model.safetensors.index.json");
        if is_weights && !keep.contains(&name) {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing stale {}", e.path().display()))?;
        }
    }
    Ok(())
}
