//! Element ranges of the model's variables read straight from an HF folder, without loading whole tensors: what
//! a fully sharded trainer that never holds the whole model ([`crate::Qwen3Model::stand_in`]) reads its chunks
//! with.
//!
//! Every HF tensor is one contiguous run of elements of the variable it lands in (VarStore layout, flattened):
//! a dense weight is its whole variable; expert `x`'s `gate_proj` is rows `0..I` of `gate_up_proj[x]`, its
//! `up_proj` rows `I..2I`, its `down_proj` all of `down_proj[x]`. So any range of a variable is a few byte
//! ranges of a few files. Headers are checked as [`crate::Qwen3Model::load`] checks them (dtype, shape, length;
//! a variable no tensor covers is named), and every range read is checked for NaN / Inf.
use crate::config::Qwen3Config;
use crate::qwen3::param_shapes;
use crate::weights::{TensorMap, check_entry, checkpoint_files, read_header, read_run};
use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One HF tensor as a run of a variable's elements.
struct Piece {
    /// First element of the run within the flattened variable.
    at: i64,
    numel: i64,
    file: PathBuf,
    /// Absolute byte offset of the tensor's data in `file`.
    offset: u64,
    kind: Kind,
    name: String,
}

/// The HF folder's tensors indexed by variable (see the module documentation).
pub struct HfRanges {
    pieces: HashMap<String, Vec<Piece>>,
}

impl HfRanges {
    /// Reads the headers of `dir`'s safetensors files (no tensor data) and checks that they cover every
    /// variable of `config`.
    pub fn open(dir: &Path, config: &Qwen3Config) -> Result<Self> {
        let shapes: HashMap<String, Vec<i64>> = param_shapes(config).into_iter().collect();
        let map = TensorMap::new(config);
        let (files, _) = checkpoint_files(dir)?;
        let mut pieces: HashMap<String, Vec<Piece>> = HashMap::new();
        for path in &files {
            let (_, data_start, entries) = read_header(path)?;
            for (name, e) in &entries {
                let Some((t, _)) = map.resolve(path, name)? else {
                    continue;
                };
                // Experts are `[E, rows, cols]` variables: expert x starts x matrices in.
                let at = match t.expert {
                    Some(x) => {
                        let (rows, row) = (shapes[&t.var][1], shapes[&t.var][2]);
                        x * rows * row + t.rows.map_or(0, |(first, _)| first * row)
                    }
                    None => 0,
                };
                let (kind, _) = check_entry(path, name, e, &t.shape)?;
                pieces.entry(t.var).or_default().push(Piece {
                    at,
                    numel: t.shape.iter().product(),
                    file: path.clone(),
                    offset: data_start + e.start,
                    kind,
                    name: name.clone(),
                });
            }
        }
        // Every element of every variable covered exactly once.
        for (var, shape) in &shapes {
            let list = pieces.entry(var.clone()).or_default();
            list.sort_by_key(|p| p.at);
            let mut next = 0i64;
            for p in list.iter() {
                ensure!(
                    p.at == next,
                    "{}: `{}` and the tensors before it cover variable `{var}` from element {} where {next} \
                     was expected (a tensor is missing or listed twice)",
                    dir.display(),
                    p.name,
                    p.at
                );
                next += p.numel;
            }
            let numel: i64 = shape.iter().product();
            if next != numel {
                bail!(
                    "{}: missing tensor for `{var}` (elements {next}..{numel} of it are in no file)",
                    dir.display()
                );
            }
        }
        Ok(HfRanges { pieces })
    }

    /// Reads every variable once, in pieces of at most `piece` elements, failing on the first non-finite value
    /// (what loading checks, without holding a whole tensor).
    pub fn check_finite(&self, piece: i64) -> Result<()> {
        let mut vars: Vec<(&String, i64)> = self
            .pieces
            .iter()
            .map(|(v, ps)| (v, ps.iter().map(|p| p.numel).sum()))
            .collect();
        vars.sort();
        for (var, numel) in vars {
            let mut at = 0;
            while at < numel {
                let n = piece.max(1).min(numel - at);
                let _checked = self.read(var, at, n)?;
                at += n;
            }
        }
        Ok(())
    }

    /// Elements `start .. start + n` of variable `var` (flattened), as fp32 on the CPU.
    pub fn read(&self, var: &str, start: i64, n: i64) -> Result<Tensor> {
        let list = self
            .pieces
            .get(var)
            .with_context(|| format!("no variable `{var}`"))?;
        let mut parts = Vec::new();
        let end = start + n;
        for p in list.iter().filter(|p| p.at < end && p.at + p.numel > start) {
            let (from, to) = (start.max(p.at), end.min(p.at + p.numel));
            let elt = p.kind.elt_size_in_bytes() as u64;
            let mut f = std::fs::File::open(&p.file)
                .with_context(|| format!("opening {}", p.file.display()))?;
            let offset = p.offset + (from - p.at) as u64 * elt;
            let t = read_run(&mut f, offset, to - from, p.kind, &p.file, &p.name)?
                .f_to_kind(Kind::Float)?;
            if !t.f_sum(Kind::Double)?.double_value(&[]).is_finite() {
                bail!(
                    "{}: tensor `{}` holds non-finite values (NaN or Inf): the weights are damaged",
                    p.file.display(),
                    p.name
                );
            }
            parts.push(t);
        }
        let out = if parts.is_empty() {
            Tensor::f_zeros([0], (Kind::Float, tch::Device::Cpu))?
        } else {
            Tensor::f_cat(&parts, 0)?
        };
        ensure!(
            out.numel() as i64 == n,
            "variable `{var}`: elements {start}..{end} asked, {} exist",
            out.numel()
        );
        Ok(out)
    }
}

/// Elements `start .. start + n` of the (flattened) tensor `name` of the safetensors file `path`, as fp32 on the
/// CPU, reading only those bytes (an optimizer shard's slice when a checkpoint is re-cut for another world size).
pub fn read_safetensors_range(path: &Path, name: &str, start: i64, n: i64) -> Result<Tensor> {
    let (mut f, data_start, entries) = read_header(path)?;
    let e = entries
        .get(name)
        .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    let shape = e.shape.clone();
    let (kind, _) = check_entry(path, name, e, &shape)?;
    let numel: i64 = shape.iter().product();
    ensure!(
        start >= 0 && n >= 0 && start + n <= numel,
        "{}: elements {start}..{} of `{name}` asked, it holds {numel}",
        path.display(),
        start + n
    );
    let offset = data_start + e.start + start as u64 * kind.elt_size_in_bytes() as u64;
    Ok(read_run(&mut f, offset, n, kind, path, name)?.f_to_kind(Kind::Float)?)
}

/// Tensor `name` of the safetensors file `path` in its own dtype, reading only its bytes (a checkpoint's `step`
/// beside gigabytes of optimizer state).
pub fn read_safetensors_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let (mut f, data_start, entries) = read_header(path)?;
    let e = entries
        .get(name)
        .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    let kind = match e.dtype.as_str() {
        "I64" => Kind::Int64,
        _ => check_entry(path, name, e, &e.shape)?.0,
    };
    let numel: i64 = e.shape.iter().product();
    ensure!(
        (e.end - e.start) as usize == numel as usize * kind.elt_size_in_bytes(),
        "{}: tensor `{name}`: {} bytes stored for shape {:?} of {}",
        path.display(),
        e.end - e.start,
        e.shape,
        e.dtype
    );
    Ok(
        read_run(&mut f, data_start + e.start, numel, kind, path, name)?
            .f_view(e.shape.as_slice())?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Qwen3Model;
    use tch::Device;

    fn moe_config() -> Qwen3Config {
        Qwen3Config::from_json_str(
            r#"{"model_type":"qwen3_moe","vocab_size":64,"hidden_size":16,"intermediate_size":32,
                "moe_intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
                "head_dim":8,"num_experts":4,"num_experts_per_tok":2,"decoder_sparse_step":1,
                "mlp_only_layers":[1],"tie_word_embeddings":false}"#,
            "test",
        )
        .unwrap()
    }

    /// Any range of any variable equals the same range of the whole loaded model, from one file and from a
    /// folder of many small shards (ranges crossing tensors and files).
    #[test]
    fn ranges_equal_the_whole_loaded_variables() {
        let model = Qwen3Model::random(moe_config(), Device::Cpu, Kind::BFloat16, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (sub, shard) in [("one", usize::MAX), ("many", 3000)] {
            let d = dir.path().join(sub);
            crate::weights::save_hf_sharded(&model, &d, shard).unwrap();
            let ranges = HfRanges::open(&d, &model.config).unwrap();
            let loaded = Qwen3Model::load(&d, Device::Cpu, Kind::Float).unwrap();
            for (var, t) in loaded.vs.variables() {
                let flat = t.reshape([-1]);
                let numel = flat.numel() as i64;
                for (s, n) in [
                    (0, numel),
                    (1, numel - 2),
                    (numel / 3, numel / 2),
                    (numel - 1, 1),
                ] {
                    let got = ranges.read(&var, s, n).unwrap();
                    assert!(got.equal(&flat.narrow(0, s, n)), "{sub}: {var} [{s}, +{n})");
                }
            }
        }
    }

    /// `copy_hf_folder` (what `spar export` does): the same files byte for byte, in their own dtype, from a
    /// folder of many shards; a folder holding a NaN is refused naming the tensor, and nothing is written.
    #[test]
    fn an_exported_folder_is_the_checked_files_as_they_are() {
        let model = Qwen3Model::random(moe_config(), Device::Cpu, Kind::BFloat16, 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        crate::weights::save_hf_sharded(&model, &src, 3000).unwrap();
        crate::weights::copy_hf_folder(&src, &dst).unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(&src).unwrap() {
            let name = e.unwrap().file_name();
            let (a, b) = (
                std::fs::read(src.join(&name)).unwrap(),
                std::fs::read(dst.join(&name)).unwrap(),
            );
            assert!(a == b, "{name:?} differs");
            n += 1;
        }
        assert!(n > 3, "only {n} files");
        let back = Qwen3Model::load(&dst, Device::Cpu, Kind::BFloat16).unwrap();
        assert_eq!(back.vs.variables().len(), model.vs.variables().len());

        let bad = dir.path().join("bad");
        let broken = Qwen3Model::random(moe_config(), Device::Cpu, Kind::Float, 4).unwrap();
        tch::no_grad(|| {
            let _ = broken.vs.variables()["model.norm.weight"]
                .shallow_clone()
                .fill_(f64::NAN);
        });
        crate::weights::save_hf(&broken, &bad).unwrap();
        let out = dir.path().join("out");
        let err = crate::weights::copy_hf_folder(&bad, &out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.norm.weight") && err.contains("non-finite"),
            "{err}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let model = Qwen3Model::random(moe_config(), Device::Cpu, Kind::Float, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        crate::weights::save_hf(&model, dir.path()).unwrap();
        let file = dir.path().join("model.safetensors");
        let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n != "model.layers.0.mlp.experts.2.up_proj.weight")
            .collect();
        Tensor::write_safetensors(&kept, &file).unwrap();
        let err = HfRanges::open(dir.path(), &model.config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model.layers.0.mlp.experts.gate_up_proj"),
            "{err}"
        );
    }
}
