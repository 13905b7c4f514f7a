//! Fully sharded data parallelism (FSDP / ZeRO-3 style, `[distributed] sharding = "full"`).
//!
//! The model's parameters are cut into units (the root: embedding, final norm, LM head; one per decoder layer,
//! see [`spar_model::param_units`]). Each unit is one flat fp32 vector, zero-padded to a multiple of the world
//! size; rank r owns chunk r of it: the fp32 master weights, their gradient and both Adam moments exist only for
//! that chunk (the optimizer is an [`AdamW`] over the chunks). During an update the whole parameters are freed:
//! the model gathers each unit (all-gather of the chunks, in the model's dtype) just before it uses it and
//! releases it after; backward re-gathers each layer under activation checkpointing, and its gradients are
//! reduce-scattered (summed in fp32) into the owners' chunks while the next layer is recomputed. After the
//! optimizer step every unit is gathered once more and stays whole ("pinned"), because the colocated rollout
//! engine decodes with the full weights of the new policy version, and evaluation and checkpoints read them.
//!
//! Memory on each of N ranks during the update: parameters 1/N (+ one layer and the root whole), fp32 masters,
//! gradients and moments 1/N. Between updates the parameters are whole, as every colocated RL framework keeps
//! them for its engine, unless they are kept sharded at rest (`[distributed] weights_at_rest = "sharded"`,
//! [`AtRest::Sharded`]): then no rank ever holds more than one unit whole. The weights are read chunk by chunk
//! from the HF files ([`spar_model::HfRanges`], for a [`Qwen3Model::stand_in`]) or through the sharder before
//! this one (SFT's, when RL starts), and whoever needs them whole streams them unit by unit
//! ([`spar_model::weights::save_hf_by_unit`]).
//!
//! Every rank must make the same gathers and reductions: the learner pads the ranks' micro-batch counts to the
//! largest ([`crate::batch::MicroBatch::padding`]), and the model never skips a unit on one rank.
use crate::adamw::{AdamW, AdamWConfig};
use anyhow::{Context, Result, ensure};
use spar_dist::{Collectives, ReduceOp, Work};
use spar_model::{HfRanges, ParamUnits, Qwen3Model, Unit};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// One unit's layout and this rank's chunk of it.
struct UnitShard {
    unit: Unit,
    /// The model's parameters of the unit (shallow clones: re-pointing their data re-points the model's).
    params: Vec<(String, Tensor)>,
    /// Their shapes (kept here: a freed parameter's data is a stand-in).
    shapes: Vec<Vec<i64>>,
    /// Elements of the unit (unpadded) and of each of the ranks' chunks.
    numel: i64,
    chunk: i64,
    kind: Kind,
    device: Device,
    /// fp32 master weights of this rank's chunk; a leaf whose `.grad` receives the reduced gradient (the
    /// optimizer's parameter).
    master: Tensor,
}

impl UnitShard {
    fn padded(&self, world: usize) -> i64 {
        self.chunk * world as i64
    }
}

/// A reduce-scatter in flight: its work, the chunk it fills and the flat gradient it reads (kept alive).
struct Pending {
    unit: usize,
    work: Work,
    out: Tensor,
    _input: Tensor,
}

/// What the parameters are between updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtRest {
    /// Whole (gathered after each step) for the colocated engine, evaluation and checkpoints.
    Whole,
    /// This rank's chunks only; units are gathered only while used.
    Sharded,
}

/// Everything that changes or holds tensors (libtorch tensors are `Send` but not `Sync`: one lock).
struct State {
    units: Vec<UnitShard>,
    resident: Vec<bool>,
    /// Every unit whole and kept whole (between updates): gathers and releases are no-ops.
    pinned: bool,
    pending: VecDeque<Pending>,
}

/// The sharded parameters of one model over one group of ranks (see the module documentation).
pub struct ShardedParams {
    group: Arc<dyn Collectives>,
    at_rest: AtRest,
    state: Mutex<State>,
}

/// Reductions in flight at once: one layer's reduce-scatter overlaps the next layer's recomputation.
const MAX_IN_FLIGHT: usize = 2;

impl ShardedParams {
    /// Shards `model`'s parameters (identical on every rank) over `group` and returns the sharder with an AdamW
    /// over this rank's chunks. The weights come unit by unit through the model's current sharder if it has one
    /// (the SFT learner's, when RL starts), else from the HF files of a [`Qwen3Model::stand_in`] (each rank
    /// reads its chunks only), else from the whole parameters. With [`AtRest::Whole`] the model is whole (or
    /// stays whole) until the first [`ShardedParams::reshard`]; with [`AtRest::Sharded`] it is freed here.
    pub fn new(
        model: &Qwen3Model,
        group: Arc<dyn Collectives>,
        config: AdamWConfig,
        at_rest: AtRest,
    ) -> Result<(Arc<Self>, AdamW)> {
        let (rank, world) = (group.rank() as i64, group.world_size() as i64);
        let before = model.param_units();
        let files = match (&before, model.unread_weights()) {
            (None, Some(dir)) => Some((dir.to_path_buf(), HfRanges::open(dir, &model.config)?)),
            _ => None,
        };
        let mut units = Vec::new();
        let _g = tch::no_grad_guard();
        for unit in model.units() {
            let params = model.unit_params(unit);
            ensure!(!params.is_empty(), "unit {} has no parameters", unit.name());
            let (kind, device) = (params[0].1.kind(), params[0].1.device());
            let shapes: Vec<Vec<i64>> = params.iter().map(|(_, t)| t.size()).collect();
            let numel: i64 = shapes.iter().map(|s| shape_numel(s)).sum();
            let chunk = (numel + world - 1) / world;
            let mine = match &files {
                Some((dir, ranges)) => read_chunk(ranges, &params, &shapes, rank * chunk, chunk)
                    .with_context(|| {
                        format!(
                            "reading unit {}'s chunk {rank} from {}",
                            unit.name(),
                            dir.display()
                        )
                    })?
                    .f_to_device(device)?,
                None => {
                    if let Some(b) = &before {
                        b.gather(unit)?;
                    }
                    let flat = flatten(
                        params.iter().map(|(_, t)| Some(t.shallow_clone())),
                        &params,
                        &shapes,
                    )?;
                    let mine = pad(&flat, chunk * world)?
                        .f_narrow(0, rank * chunk, chunk)?
                        .f_contiguous()?
                        .f_detach_copy()?;
                    if let Some(b) = &before {
                        b.release(unit)?;
                    }
                    mine
                }
            };
            let master = mine.f_set_requires_grad(true)?;
            units.push(UnitShard {
                unit,
                params,
                shapes,
                numel,
                chunk,
                kind,
                device,
                master,
            });
        }
        // Give every chunk a defined gradient once (zeros), so reductions can add into `.grad` in place.
        let zero = tch::with_grad(|| -> Result<Tensor> {
            let mut s = Tensor::f_zeros([], (Kind::Float, units[0].device))?;
            for u in &units {
                s = s.f_add(&u.master.f_sum(Kind::Float)?.f_mul_scalar(0.0)?)?;
            }
            Ok(s)
        })?;
        zero.f_backward()?;
        let adamw = AdamW::from_named(
            units
                .iter()
                .map(|u| (shard_name(u.unit), u.master.shallow_clone()))
                .collect(),
            config,
        );
        let n = units.len();
        let me = Arc::new(ShardedParams {
            group,
            at_rest,
            state: Mutex::new(State {
                units,
                resident: vec![true; n],
                pinned: true,
                pending: VecDeque::new(),
            }),
        });
        if at_rest == AtRest::Sharded || files.is_some() {
            // Stand-ins, or nothing whole to keep: every unit freed until used (whole: gathered once).
            me.reshard()?;
            if at_rest == AtRest::Whole {
                me.unshard()?;
            }
        }
        Ok((me, adamw))
    }

    /// What the parameters are between updates.
    pub fn at_rest(&self) -> AtRest {
        self.at_rest
    }

    /// Puts the parameters in their state between updates (after a step, or an update that took none): whole
    /// and kept whole, or only this rank's chunks.
    pub fn settle(&self) -> Result<()> {
        match self.at_rest {
            AtRest::Whole => self.ensure_whole(),
            AtRest::Sharded => {
                ensure!(
                    self.state().pending.is_empty(),
                    "settling with gradient reductions in flight"
                );
                self.reshard()
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees every whole parameter (the start of an update: from here on units are gathered as used).
    pub fn reshard(&self) -> Result<()> {
        let mut st = self.state();
        st.pinned = false;
        for i in 0..st.units.len() {
            if st.resident[i] {
                free(&st.units[i])?;
                st.resident[i] = false;
            }
        }
        Ok(())
    }

    /// Gathers every unit from the current masters and keeps them whole (after an optimizer step: the rollout
    /// engine, evaluation and checkpoints read the whole new weights).
    pub fn unshard(&self) -> Result<()> {
        let mut st = self.state();
        ensure!(
            st.pending.is_empty(),
            "unshard with gradient reductions in flight"
        );
        for i in 0..st.units.len() {
            fill(&*self.group, &st.units[i])?;
            st.resident[i] = true;
        }
        st.pinned = true;
        Ok(())
    }

    /// [`ShardedParams::unshard`] unless the parameters are whole and kept whole already.
    pub fn ensure_whole(&self) -> Result<()> {
        if self.state().pinned {
            return Ok(());
        }
        self.unshard()
    }

    /// Moves this rank's fp32 master chunks and their gradients to `device` in place (the optimizer's parameters
    /// keep their identity; see [`crate::adamw::AdamW::move_state`] for the moments). Used by
    /// `trainer.offload_optimizer` between updates, when the weights are whole and the masters are not read.
    pub fn move_masters(&self, device: Device) -> Result<()> {
        let st = self.state();
        ensure!(
            st.pending.is_empty(),
            "moving the masters with gradient reductions in flight"
        );
        let _g = tch::no_grad_guard();
        for u in &st.units {
            let mut master = u.master.shallow_clone();
            let mut grad = master.grad();
            master.f_set_data(&master.f_to_device(device)?)?;
            if grad.defined() {
                grad.f_set_data(&grad.f_to_device(device)?)?;
            }
        }
        Ok(())
    }

    /// Waits for every reduce-scatter in flight and adds their chunks into the masters' gradients.
    pub fn finish_grads(&self) -> Result<()> {
        let mut st = self.state();
        while let Some(p) = st.pending.pop_front() {
            complete(&st.units, p)?;
        }
        Ok(())
    }

    /// Saves this rank's chunks (masters, moments, step) as `dir/rank-<r>.safetensors` and, on rank 0, the
    /// layout as `dir/manifest.json`. Written under a temporary name and renamed.
    pub fn save_shard(&self, dir: &Path, adamw: &AdamW) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut named = adamw.state_tensors();
        let st = self.state();
        for u in &st.units {
            named.push((
                format!("master.{}", shard_name(u.unit)),
                u.master.f_detach()?.f_to_device(Device::Cpu)?,
            ));
        }
        let rank = self.group.rank();
        let file = dir.join(format!("rank-{rank}.safetensors"));
        let tmp = dir.join(format!(".rank-{rank}.safetensors.tmp"));
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("writing optimizer shard {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("moving {}", file.display()))?;
        if rank == 0 {
            spar_core::fsio::write_atomic(
                &dir.join("manifest.json"),
                &serde_json::to_vec_pretty(&self.manifest(&st.units))?,
            )?;
        }
        Ok(())
    }

    /// Loads this rank's chunks (masters, moments, step) from checkpoint `dir`'s sharded optimizer state, written
    /// by any number of ranks over the same parameters, reading only the slices of the ranks' files that overlap
    /// this rank's chunks: its own file alone when the world size is the same, a re-cut otherwise. No rank holds
    /// the whole state, so a run sharded at rest resumes on as many, fewer or more ranks. Returns false, loading
    /// nothing, when `dir` has no sharded state or its parameters differ (the caller then cuts the chunks out of
    /// the whole state, [`ShardedParams::load_whole_state`]).
    pub fn load_chunks(&self, adamw: &mut AdamW, dir: &Path) -> Result<bool> {
        let Some((odir, saved)) = read_manifest(dir)? else {
            return Ok(false);
        };
        let (rank, world) = (self.group.rank() as i64, self.group.world_size());
        let st = self.state();
        let ours = self.manifest(&st.units);
        let same_params = saved.units.len() == ours.units.len()
            && saved
                .units
                .iter()
                .zip(&ours.units)
                .all(|(a, b)| a.name == b.name && a.numel == b.numel && a.params == b.params);
        if !same_params || saved.world_size == 0 {
            return Ok(false);
        }
        let file = |r: usize| odir.join(format!("rank-{r}.safetensors"));
        let mut chunks: HashMap<String, Tensor> = HashMap::new();
        chunks.insert(
            "step".into(),
            spar_model::read_safetensors_tensor(&file(0), "step")?,
        );
        let _g = tch::no_grad_guard();
        for (u, old) in st.units.iter().zip(&saved.units) {
            let name = shard_name(u.unit);
            let runs = vec![old.chunk; saved.world_size];
            for prefix in ["m", "v", "master"] {
                let key = format!("{prefix}.{name}");
                let chunk = read_span(rank * u.chunk, u.chunk, u.numel, &runs, |r, at, n| {
                    spar_model::read_safetensors_range(&file(r), &key, at, n)
                })?;
                if prefix == "master" {
                    let mut m = u.master.shallow_clone();
                    m.f_copy_(&chunk.f_to_device(u.device)?)?;
                } else {
                    chunks.insert(key, chunk);
                }
            }
        }
        adamw.load_named(&chunks, &odir)?;
        if saved.world_size != world {
            eprintln!(
                "[train] rank {rank}: optimizer chunks re-cut from {} rank(s) to {world}, reading only this \
                 rank's slices",
                saved.world_size
            );
        }
        Ok(true)
    }

    fn manifest(&self, units: &[UnitShard]) -> Manifest {
        Manifest {
            world_size: self.group.world_size(),
            units: units
                .iter()
                .map(|u| ManifestUnit {
                    name: shard_name(u.unit),
                    numel: u.numel,
                    chunk: u.chunk,
                    params: u
                        .params
                        .iter()
                        .zip(&u.shapes)
                        .map(|((n, _), s)| (n.clone(), s.clone()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Restores the masters and moments from optimizer state in whole-parameter naming (`m.<param>`,
    /// `v.<param>`, `master.<param>`, `step`; see [`read_whole_state`]), cutting this rank's chunks out of it.
    /// Parameters without a `master.` entry (fp32 ones in a data-parallel checkpoint) take the model's
    /// current (just loaded, whole) weights.
    pub fn load_whole_state(
        &self,
        adamw: &mut AdamW,
        named: &HashMap<String, Tensor>,
        from: &Path,
    ) -> Result<()> {
        let (rank, world) = (self.group.rank() as i64, self.group.world_size());
        let mut chunks: HashMap<String, Tensor> = HashMap::new();
        if let Some(step) = named.get("step") {
            chunks.insert("step".into(), step.shallow_clone());
        }
        let _g = tch::no_grad_guard();
        let st = self.state();
        for u in &st.units {
            let cut = |prefix: &str, fallback: bool| -> Result<Tensor> {
                let parts = u.params.iter().map(|(n, t)| {
                    named
                        .get(&format!("{prefix}.{n}"))
                        .map(|x| x.shallow_clone())
                        .or_else(|| fallback.then(|| t.shallow_clone()))
                });
                let parts: Vec<Option<Tensor>> = parts.collect();
                if let Some(i) = parts.iter().position(|p| p.is_none()) {
                    anyhow::bail!(
                        "{}: optimizer state has no tensor `{prefix}.{}`",
                        from.display(),
                        u.params[i].0
                    );
                }
                let flat = flatten(parts.into_iter(), &u.params, &u.shapes).with_context(|| {
                    format!("{}: `{prefix}` of unit {}", from.display(), u.unit.name())
                })?;
                Ok(pad(&flat, u.padded(world))?
                    .f_narrow(0, rank * u.chunk, u.chunk)?
                    .f_contiguous()?)
            };
            let name = shard_name(u.unit);
            chunks.insert(format!("m.{name}"), cut("m", false)?);
            chunks.insert(format!("v.{name}"), cut("v", false)?);
            // Sharded at rest the parameters are stand-ins: the masters must come from the state.
            let master = cut("master", self.at_rest == AtRest::Whole)?;
            let mut m = u.master.shallow_clone();
            m.f_copy_(&master.f_to_device(u.device)?)?;
        }
        adamw.load_named(&chunks, from)
    }
}

impl ParamUnits for ShardedParams {
    fn gather(&self, unit: Unit) -> Result<()> {
        let i = unit.index();
        let mut st = self.state();
        if st.pinned || st.resident[i] {
            return Ok(());
        }
        fill(&*self.group, &st.units[i])?;
        st.resident[i] = true;
        Ok(())
    }

    fn release(&self, unit: Unit) -> Result<()> {
        let i = unit.index();
        let mut st = self.state();
        if st.pinned || !st.resident[i] {
            return Ok(());
        }
        free(&st.units[i])?;
        st.resident[i] = false;
        Ok(())
    }

    fn reduce_grads(&self, unit: Unit, grads: Vec<Option<Tensor>>) -> Result<()> {
        let i = unit.index();
        let mut st = self.state();
        let u = &st.units[i];
        ensure!(
            grads.len() == u.params.len(),
            "unit {}: {} gradients for {} parameters",
            unit.name(),
            grads.len(),
            u.params.len()
        );
        let _g = tch::no_grad_guard();
        let flat = pad(
            &flatten(grads.into_iter(), &u.params, &u.shapes)?,
            u.padded(self.group.world_size()),
        )?;
        let mut out = Tensor::f_zeros([u.chunk], (Kind::Float, u.device))?;
        let work = self
            .group
            .reduce_scatter_tensor(&mut out, &flat, ReduceOp::Sum)
            .with_context(|| format!("reducing the gradients of unit {}", unit.name()))?;
        st.pending.push_back(Pending {
            unit: i,
            work,
            out,
            _input: flat,
        });
        while st.pending.len() > MAX_IN_FLIGHT {
            let p = st.pending.pop_front().expect("non-empty");
            complete(&st.units, p)?;
        }
        Ok(())
    }
}

/// Waits for reduce-scatter `p` and adds its chunk into the master's gradient.
fn complete(units: &[UnitShard], p: Pending) -> Result<()> {
    p.work.wait()?;
    let _g = tch::no_grad_guard();
    let mut g = units[p.unit].master.grad();
    let _ = g.f_add_(&p.out)?;
    Ok(())
}

/// All-gathers unit `u`'s chunks (cast to the model's dtype) and re-points its parameters into the result.
fn fill(group: &dyn Collectives, u: &UnitShard) -> Result<()> {
    let world = group.world_size();
    let _g = tch::no_grad_guard();
    let mine = u.master.f_detach()?.f_to_kind(u.kind)?.f_contiguous()?;
    let mut whole = Tensor::f_empty([u.padded(world)], (u.kind, u.device))?;
    group
        .all_gather_into_tensor(&mut whole, &mine)?
        .wait()
        .with_context(|| format!("gathering unit {}", u.unit.name()))?;
    let mut at = 0i64;
    for ((_, p), shape) in u.params.iter().zip(&u.shapes) {
        let n = shape_numel(shape);
        let mut p = p.shallow_clone();
        p.f_set_data(&whole.f_narrow(0, at, n)?.f_view(shape.as_slice())?)?;
        at += n;
    }
    Ok(())
}

/// Points unit `u`'s parameters at a one-element stand-in (their whole copy is freed once nothing else holds
/// it). A zero-stride expand keeps each parameter's shape, which the model reads.
fn free(u: &UnitShard) -> Result<()> {
    let _g = tch::no_grad_guard();
    for ((_, p), shape) in u.params.iter().zip(&u.shapes) {
        let mut p = p.shallow_clone();
        let stub = Tensor::f_zeros([1], (u.kind, u.device))?.f_expand(shape.as_slice(), false)?;
        p.f_set_data(&stub)?;
    }
    Ok(())
}

/// Writes `model` as a transformers folder into `dir`. Every rank calls it with the same `dir`; `writer` marks the
/// one rank that completes the folder. With a sharder that keeps the weights sharded at rest, the units are
/// gathered one at a time and the ranks share the writing (unit i by rank i mod N,
/// [`spar_model::weights::save_hf_by_unit`]); a rank's failure stops every rank. Otherwise the weights are whole
/// and the writer saves them alone (the others return at once).
pub fn save_policy(
    model: &Qwen3Model,
    dir: &Path,
    writer: bool,
    sharded: Option<&ShardedParams>,
) -> Result<()> {
    let Some(sh) = sharded.filter(|s| s.at_rest() == AtRest::Sharded) else {
        return if writer { model.save_hf(dir) } else { Ok(()) };
    };
    let group = &*sh.group;
    let wrote =
        spar_model::weights::save_hf_by_unit(model, dir, (group.rank(), group.world_size()), sh);
    if spar_dist::any_rank(group, wrote.is_err())? {
        wrote.with_context(|| format!("writing this rank's units into {}", dir.display()))?;
        anyhow::bail!(
            "another rank failed to write its units into {}",
            dir.display()
        );
    }
    if writer {
        spar_model::weights::finish_hf_by_unit(model, dir)?;
    }
    Ok(())
}

/// What a rank holds with the weights sharded at rest over `world` ranks, in GB: its fp32 masters, their
/// gradient and both Adam moments (16 bytes per parameter, divided by the ranks), and whole in `kind` during an
/// update the root unit and the largest layer. (`spar train` prints it; the cluster recipes' headers use it.)
pub fn at_rest_memory(
    config: &spar_model::Qwen3Config,
    kind: Kind,
    world: usize,
) -> (f64, f64, f64) {
    let mut units: std::collections::BTreeMap<String, i64> = Default::default();
    for (name, shape) in spar_model::qwen3::param_shapes(config) {
        let unit = match name.strip_prefix("model.layers.") {
            Some(rest) => rest.split('.').next().unwrap_or_default().to_string(),
            None => "root".into(),
        };
        *units.entry(unit).or_default() += shape.iter().product::<i64>();
    }
    let total: i64 = units.values().sum();
    let elt = kind.elt_size_in_bytes() as f64;
    let root = units.get("root").copied().unwrap_or(0);
    let layer = units
        .iter()
        .filter(|(k, _)| *k != "root")
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    (
        16.0 * total as f64 / world.max(1) as f64 / 1e9,
        root as f64 * elt / 1e9,
        layer as f64 * elt / 1e9,
    )
}

/// Elements `lo .. lo + chunk` of a unit's flat vector (its `params` in order, then zero padding), read from
/// the HF files.
fn read_chunk(
    ranges: &HfRanges,
    params: &[(String, Tensor)],
    shapes: &[Vec<i64>],
    lo: i64,
    chunk: i64,
) -> Result<Tensor> {
    let runs: Vec<i64> = shapes.iter().map(|s| shape_numel(s)).collect();
    read_span(lo, chunk, lo + chunk, &runs, |i, at, n| {
        ranges.read(&params[i].0, at, n)
    })
}

/// Elements `lo .. lo + chunk` of a flat vector stored as consecutive runs of the lengths `runs` (parameters in
/// HF files, or the chunks of an optimizer state's rank files), as fp32 on the CPU: `read(run, offset in it,
/// count)` gives each overlapping piece, and what lies past `end` (the vector's real length) or past the last
/// run is zero padding.
fn read_span(
    lo: i64,
    chunk: i64,
    end: i64,
    runs: &[i64],
    mut read: impl FnMut(usize, i64, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let hi = (lo + chunk).min(end);
    let mut parts = Vec::new();
    let (mut at, mut got) = (0i64, 0i64);
    for (i, &len) in runs.iter().enumerate() {
        let (a, b) = (lo.max(at), hi.min(at + len));
        if a < b {
            parts.push(read(i, a - at, b - a)?);
            got += b - a;
        }
        at += len;
    }
    if got < chunk {
        parts.push(Tensor::f_zeros([chunk - got], (Kind::Float, Device::Cpu))?);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// The optimizer's name of a unit's chunk.
fn shard_name(unit: Unit) -> String {
    format!("shard.{}", unit.name())
}

fn shape_numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

/// The parameters' values (or zeros where None) as one flat fp32 vector, in `params` order.
fn flatten(
    values: impl Iterator<Item = Option<Tensor>>,
    params: &[(String, Tensor)],
    shapes: &[Vec<i64>],
) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(params.len());
    for ((v, (name, p)), shape) in values.zip(params).zip(shapes) {
        let part = match v {
            Some(v) => {
                ensure!(
                    v.numel() as i64 == shape_numel(shape),
                    "`{name}`: {:?} where {:?} was expected",
                    v.size(),
                    shape
                );
                v.f_to_device(p.device())?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])?
            }
            None => Tensor::f_zeros([shape_numel(shape)], (Kind::Float, p.device()))?,
        };
        parts.push(part);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// `flat` zero-padded to `len` elements.
fn pad(flat: &Tensor, len: i64) -> Result<Tensor> {
    let n = flat.numel() as i64;
    ensure!(n <= len, "padding {n} elements to {len}");
    if n == len {
        return Ok(flat.shallow_clone());
    }
    let zeros = Tensor::f_zeros([len - n], (flat.kind(), flat.device()))?;
    Ok(Tensor::f_cat(&[flat, &zeros], 0)?)
}

/// The layout of a sharded optimizer checkpoint (`optimizer/manifest.json`).
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct Manifest {
    world_size: usize,
    units: Vec<ManifestUnit>,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct ManifestUnit {
    name: String,
    numel: i64,
    chunk: i64,
    params: Vec<(String, Vec<i64>)>,
}

/// Checkpoint `dir`'s `optimizer/` folder and its manifest; None when the checkpoint is not sharded.
fn read_manifest(dir: &Path) -> Result<Option<(std::path::PathBuf, Manifest)>> {
    let odir = dir.join("optimizer");
    let mpath = odir.join("manifest.json");
    if !mpath.exists() {
        return Ok(None);
    }
    let saved: Manifest = serde_json::from_slice(
        &std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?,
    )
    .with_context(|| format!("parsing {}", mpath.display()))?;
    Ok(Some((odir, saved)))
}

/// Whether `dir` (a checkpoint) holds a sharded optimizer state (`optimizer/manifest.json`).
pub fn is_sharded_checkpoint(dir: &Path) -> bool {
    dir.join("optimizer").join("manifest.json").exists()
}

/// The optimizer state of checkpoint `dir` in whole-parameter naming (`step`, `m.<param>`, `v.<param>`,
/// `master.<param>` in fp32), from either layout: a data-parallel `optimizer.safetensors` as it is, or a
/// sharded `optimizer/` (every rank's chunks joined, padding dropped, cut back into parameters). This is what
/// lets a checkpoint resume on another world size or in the other mode. It holds the whole state in memory.
pub fn read_whole_state(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let Some((odir, manifest)) = read_manifest(dir)? else {
        let path = dir.join("optimizer.safetensors");
        return Ok(Tensor::read_safetensors(&path)
            .with_context(|| format!("reading optimizer state {}", path.display()))?
            .into_iter()
            .collect());
    };
    let mpath = odir.join("manifest.json");
    let mut ranks = Vec::with_capacity(manifest.world_size);
    for r in 0..manifest.world_size {
        let p = odir.join(format!("rank-{r}.safetensors"));
        let t: HashMap<String, Tensor> = Tensor::read_safetensors(&p)
            .with_context(|| {
                format!(
                    "reading optimizer shard {} (the checkpoint was written by {} ranks)",
                    p.display(),
                    manifest.world_size
                )
            })?
            .into_iter()
            .collect();
        ranks.push((p, t));
    }
    let mut out = HashMap::new();
    let step = ranks[0]
        .1
        .get("step")
        .with_context(|| format!("{}: no `step`", ranks[0].0.display()))?;
    out.insert("step".to_string(), step.shallow_clone());
    for u in &manifest.units {
        for prefix in ["m", "v", "master"] {
            let key = format!("{prefix}.{}", u.name);
            let mut parts = Vec::with_capacity(ranks.len());
            for (p, t) in &ranks {
                let x = t
                    .get(&key)
                    .with_context(|| format!("{}: no tensor `{key}`", p.display()))?;
                ensure!(
                    x.numel() as i64 == u.chunk,
                    "{}: `{key}` has {} elements, the manifest says {}",
                    p.display(),
                    x.numel(),
                    u.chunk
                );
                parts.push(x.shallow_clone());
            }
            let flat = Tensor::f_cat(&parts, 0)?.f_narrow(0, 0, u.numel)?;
            let mut at = 0i64;
            for (name, shape) in &u.params {
                let n = shape_numel(shape);
                out.insert(
                    format!("{prefix}.{name}"),
                    flat.f_narrow(0, at, n)?
                        .f_view(shape.as_slice())?
                        .f_contiguous()?,
                );
                at += n;
            }
            ensure!(
                at == u.numel,
                "{}: unit {} lists {at} elements, the manifest says {}",
                mpath.display(),
                u.name,
                u.numel
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The 235B recipe header's arithmetic, from the published Qwen3-235B-A22B config: 64 ranks hold 59 GB of
    /// optimizer state each; an update gathers the 2.5 GB root and 5 GB layers in bf16.
    #[test]
    fn the_235b_recipes_memory_arithmetic() {
        let c = spar_model::Qwen3Config::from_json_str(
            r#"{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":4096,"intermediate_size":12288,
                "num_hidden_layers":94,"num_attention_heads":64,"num_key_value_heads":4,"head_dim":128,
                "num_experts":128,"num_experts_per_tok":8,"moe_intermediate_size":1536,"decoder_sparse_step":1,
                "mlp_only_layers":[],"tie_word_embeddings":false}"#,
            "Qwen3-235B-A22B",
        )
        .unwrap();
        let (state, root, layer) = super::at_rest_memory(&c, tch::Kind::BFloat16, 64);
        assert!((state - 58.8).abs() < 0.5, "{state}");
        assert!((root - 2.49).abs() < 0.05, "{root}");
        assert!((layer - 4.98).abs() < 0.05, "{layer}");
    }
}
