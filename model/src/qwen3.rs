//! Qwen3 / Qwen3-MoE decoder in tch, numerically following transformers' `Qwen3ForCausalLM` /
//! `Qwen3MoeForCausalLM`: pre-norm blocks, q/k RMSNorm per head before RoPE, GQA attention through SDPA,
//! SwiGLU MLP or the stacked-expert MoE block, final RMSNorm and (optionally tied) LM head.

use crate::cache::KvCache;
use crate::config::Qwen3Config;
use crate::expert_parallel::{ExpertExchange, moe_forward_expert_parallel};
use crate::moe::{MoeWeights, moe_forward};
use crate::param_units::{GradsReady, ParamUnits, Unit};
use crate::rope::{Rope, apply_rotary_folded, fold_rotate_half_sign};
use crate::token_logprobs::LmHead;
use anyhow::{Context, Result, ensure};
use spar_kernels::rms_norm;
use std::path::Path;
use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Inputs of one forward pass. Build with [`ForwardInput::new`] and the builder methods.
pub struct ForwardInput<'a> {
    /// `[B, T]` int64 token ids.
    pub input_ids: &'a Tensor,
    /// `[B, T]` RoPE positions. None: derived — from the cache lengths (`len + 0..T` per row), else restarting
    /// at each new `seq_ids` value, else `cumsum(attention_mask) - 1` (so left padding starts real tokens at 0),
    /// else `0..T`.
    pub position_ids: Option<&'a Tensor>,
    /// `[B, T]` 1 = real token, 0 = padding (left or right). Padding keys are never attended to.
    pub attention_mask: Option<&'a Tensor>,
    /// `[B, T]` packed sequences: a token attends only to earlier tokens with the same id. Ids of one row must
    /// be contiguous runs (one sequence after another).
    pub seq_ids: Option<&'a Tensor>,
    /// Incremental decoding: row i appends to slot `select_slots[i]` (or slot i).
    pub cache: Option<&'a mut KvCache>,
    /// `[B, T, n_moe_layers, k]` int64 expert choices to use instead of the router's top-k (routing replay).
    pub forced_experts: Option<&'a Tensor>,
    /// Stop before the vocabulary projection: the output's `hidden` holds the final normalised hidden states
    /// and `logits` is empty (`[B, T, 0]`); see [`crate::token_logprobs()`].
    pub hidden_only: bool,
}

impl<'a> ForwardInput<'a> {
    /// Plain causal forward of `input_ids` (`[B, T]` int64).
    pub fn new(input_ids: &'a Tensor) -> Self {
        ForwardInput {
            input_ids,
            position_ids: None,
            attention_mask: None,
            seq_ids: None,
            cache: None,
            forced_experts: None,
            hidden_only: false,
        }
    }
    /// Sets explicit RoPE positions `[B, T]`.
    pub fn positions(mut self, p: &'a Tensor) -> Self {
        self.position_ids = Some(p);
        self
    }
    /// Sets the padding mask `[B, T]` (1 = real token).
    pub fn mask(mut self, m: &'a Tensor) -> Self {
        self.attention_mask = Some(m);
        self
    }
    /// Sets packed-sequence ids `[B, T]`.
    pub fn seq_ids(mut self, s: &'a Tensor) -> Self {
        self.seq_ids = Some(s);
        self
    }
    /// Decodes against a KV cache.
    pub fn cache(mut self, c: &'a mut KvCache) -> Self {
        self.cache = Some(c);
        self
    }
    /// Replays expert choices `[B, T, n_moe_layers, k]`.
    pub fn forced_experts(mut self, f: &'a Tensor) -> Self {
        self.forced_experts = Some(f);
        self
    }
    /// Returns the final normalised hidden states instead of the logits (see [`ForwardInput::hidden_only`]).
    pub fn hidden_only(mut self) -> Self {
        self.hidden_only = true;
        self
    }
}

/// Outputs of one forward pass.
pub struct ForwardOutput {
    /// `[B, T, vocab]` in the model dtype; `[B, T, 0]` with [`ForwardInput::hidden_only`].
    pub logits: Tensor,
    /// With [`ForwardInput::hidden_only`]: [`LmHead::Hidden`], the `[B, T, H]` final hidden states after the last
    /// RMSNorm and the head's weight (a copy when parameter units released it after this forward); None
    /// otherwise.
    pub head: Option<LmHead>,
    /// Per MoE layer `[B*T, num_experts]` router logits (model dtype), for the aux loss.
    pub router_logits: Vec<Tensor>,
    /// `[B, T, n_moe_layers, k]` int64 experts chosen (or forced); None for dense models.
    pub routed_experts: Option<Tensor>,
    /// With activation checkpointing: what [`Qwen3Model::backward`] needs to recompute the layers; with
    /// [`Qwen3Model::set_grads_ready`]: each layer's graph, cut at the layer boundaries.
    pub(crate) tape: Option<CheckpointTape>,
}

impl ForwardOutput {
    /// Whether this output's backward goes layer by layer (activation checkpointing, or a gradient hook set):
    /// then call [`Qwen3Model::backward`] rather than `loss.backward()`.
    pub fn is_checkpointed(&self) -> bool {
        self.tape.is_some()
    }
}

/// A forward cut at the layer boundaries (see [`Qwen3Model::backward`]): each layer's input and output are
/// separate leaves, so backward runs one layer at a time. A checkpointed forward saves only the inputs and
/// recomputes each layer; a staged one (gradient hook set, no checkpointing) keeps each layer's graph.
pub(crate) struct CheckpointTape {
    embed_out: Tensor,
    steps: Vec<TapeStep>,
    cos: Tensor,
    /// The sign-folded sine (`fold_rotate_half_sign`).
    sin: Tensor,
    attn: AttnMask,
}

struct TapeStep {
    layer: usize,
    input: Tensor,
    out_leaf: Tensor,
    router_leaf: Option<Tensor>,
    experts: Option<Tensor>,
    /// Staged (not checkpointed): the layer's output and router logits with their graph.
    kept: Option<(Tensor, Option<Tensor>)>,
}

pub(crate) struct Attention {
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) o: Tensor,
    pub(crate) q_norm: Tensor,
    pub(crate) k_norm: Tensor,
}

pub(crate) enum Mlp {
    Dense {
        gate: Tensor,
        up: Tensor,
        down: Tensor,
    },
    Moe {
        weights: MoeWeights,
        index: usize,
    },
}

pub(crate) struct Layer {
    pub(crate) index: usize,
    pub(crate) input_ln: Tensor,
    pub(crate) post_ln: Tensor,
    pub(crate) attn: Attention,
    pub(crate) mlp: Mlp,
}

/// How queries see keys in one forward.
enum AttnMask {
    /// Plain causal attention over the batch's own tokens (SDPA `is_causal`, flash-eligible).
    Causal,
    /// Explicit boolean mask `[B, 1, Tq, Tk]`, true = may attend.
    Mask(Tensor),
}

impl Clone for AttnMask {
    fn clone(&self) -> Self {
        match self {
            AttnMask::Causal => AttnMask::Causal,
            AttnMask::Mask(m) => AttnMask::Mask(m.shallow_clone()),
        }
    }
}

/// Where a cached forward writes and reads.
struct CachePlan {
    slot_idx: Tensor,
    write_pos: Tensor,
    read_len: i64,
    contiguous_from: Option<i64>,
    slot_list: Tensor,
}

/// A Qwen3 / Qwen3-MoE causal LM. Parameters live in `vs` under transformers' names (`model.layers.3.self_attn
/// .q_proj.weight`, ...), except the experts of MoE layers, stacked as transformers 5.x keeps them in memory:
/// `model.layers.L.mlp.experts.gate_up_proj` `[E, 2I, H]` and `model.layers.L.mlp.experts.down_proj` `[E, H, I]`.
pub struct Qwen3Model {
    pub config: Qwen3Config,
    pub vs: VarStore,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Option<Tensor>,
    pub(crate) rope: Rope,
    kind: Kind,
    device: Device,
    checkpointing: bool,
    /// Fully sharded training's hooks (see [`crate::param_units`]); None: the parameters are always whole.
    units: Option<Arc<dyn ParamUnits>>,
    /// Plain data parallelism's hook (see [`crate::param_units::GradsReady`]); None: backward says nothing.
    grads_ready: Option<Arc<dyn GradsReady>>,
    /// Expert parallelism's group (see [`crate::expert_parallel`]); None: every rank computes every expert.
    expert_parallel: Option<Arc<dyn ExpertExchange>>,
    /// With `units` or `grads_ready`: each unit's parameters in [`Qwen3Model::unit_params`] order, looked up
    /// once (backward hands every unit's gradients over in this order).
    unit_tensors: Vec<Vec<Tensor>>,
    /// Set by [`Qwen3Model::stand_in`]: the parameters are one-element stand-ins and the weights are still in this
    /// HF folder, for a sharding trainer to read its chunks from (see [`crate::hf_ranges`]).
    unread_weights: Option<std::path::PathBuf>,
}

/// Shape of every parameter in `vs`, by name (the VarStore layout described on [`Qwen3Model`]).
pub fn param_shapes(c: &Qwen3Config) -> Vec<(String, Vec<i64>)> {
    let h = c.hidden_size as i64;
    let (nh, nkv, d) = c.attention_dims();
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size as i64, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![nh * d, h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![nkv * d, h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![nkv * d, h]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, nh * d]));
        v.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
        v.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        if c.is_moe_layer(l) {
            let (e, i) = (c.num_experts as i64, c.moe_intermediate_size as i64);
            v.push((format!("{p}.mlp.gate.weight"), vec![e, h]));
            v.push((format!("{p}.mlp.experts.gate_up_proj"), vec![e, 2 * i, h]));
            v.push((format!("{p}.mlp.experts.down_proj"), vec![e, h, i]));
        } else {
            let i = c.intermediate_size as i64;
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size as i64, h]));
    }
    v
}

/// Registers a trainable variable under a dotted name (VarStore paths take one component per `.`).
pub(crate) fn add_var(vs: &VarStore, name: &str, t: Tensor) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().unwrap_or(name);
    let mut p = vs.root();
    for c in parts {
        p = p.sub(c);
    }
    let _ = p.add(last, t, true);
}

fn is_norm(name: &str) -> bool {
    name.ends_with("layernorm.weight") || name.ends_with("norm.weight")
}

impl Qwen3Model {
    /// A model with transformers' initialisation (normal(0, 0.02) matrices, unit norms), seeded.
    pub fn random(config: Qwen3Config, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        config.validate()?;
        // libtorch has one global generator: hold it from seeding to the last draw so that concurrent callers
        // (threads, parallel tests) cannot interleave their draws and break "same seed, same weights".
        static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _rng = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = VarStore::new(device);
        {
            let _g = tch::no_grad_guard();
            for (name, shape) in param_shapes(&config) {
                // Draw on the CPU in float32 so a seed gives the same weights on every device and dtype.
                let t = if is_norm(&name) {
                    Tensor::f_ones(shape.as_slice(), (Kind::Float, Device::Cpu))?
                } else {
                    Tensor::f_randn(shape.as_slice(), (Kind::Float, Device::Cpu))?
                        .f_mul_scalar(0.02)?
                };
                add_var(&vs, &name, t.f_to_kind(kind)?.f_to_device(device)?);
            }
        }
        Self::from_var_store(config, vs, kind)
    }

    /// Builds the model over a VarStore whose variables follow [`param_shapes`].
    pub fn from_var_store(config: Qwen3Config, vs: VarStore, kind: Kind) -> Result<Self> {
        if vs.device().is_cuda() {
            crate::attention_backend::configure_for_cuda();
        }
        let vars = vs.variables();
        let get = |n: &str| -> Result<Tensor> {
            vars.get(n)
                .map(|t| t.shallow_clone())
                .with_context(|| format!("variable store lacks parameter `{n}`"))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let mut moe_index = 0;
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let attn = Attention {
                q: get(&format!("{p}.self_attn.q_proj.weight"))?,
                k: get(&format!("{p}.self_attn.k_proj.weight"))?,
                v: get(&format!("{p}.self_attn.v_proj.weight"))?,
                o: get(&format!("{p}.self_attn.o_proj.weight"))?,
                q_norm: get(&format!("{p}.self_attn.q_norm.weight"))?,
                k_norm: get(&format!("{p}.self_attn.k_norm.weight"))?,
            };
            let mlp = if config.is_moe_layer(l) {
                let weights = MoeWeights {
                    router: get(&format!("{p}.mlp.gate.weight"))?,
                    gate_up: get(&format!("{p}.mlp.experts.gate_up_proj"))?,
                    down: get(&format!("{p}.mlp.experts.down_proj"))?,
                };
                moe_index += 1;
                Mlp::Moe {
                    weights,
                    index: moe_index - 1,
                }
            } else {
                Mlp::Dense {
                    gate: get(&format!("{p}.mlp.gate_proj.weight"))?,
                    up: get(&format!("{p}.mlp.up_proj.weight"))?,
                    down: get(&format!("{p}.mlp.down_proj.weight"))?,
                }
            };
            layers.push(Layer {
                index: l,
                input_ln: get(&format!("{p}.input_layernorm.weight"))?,
                post_ln: get(&format!("{p}.post_attention_layernorm.weight"))?,
                attn,
                mlp,
            });
        }
        let device = vs.device();
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight")?)
        };
        Ok(Qwen3Model {
            embed: get("model.embed_tokens.weight")?,
            norm: get("model.norm.weight")?,
            lm_head,
            rope: Rope::new(&config, device)?,
            layers,
            config,
            vs,
            kind,
            device,
            checkpointing: false,
            units: None,
            grads_ready: None,
            expert_parallel: None,
            unit_tensors: Vec::new(),
            unread_weights: None,
        })
    }

    /// The model of the HF folder `dir` with none of its weights read: every parameter is a one-element
    /// stand-in expanded to its shape (no memory), and [`Qwen3Model::unread_weights`] names `dir`. For a fully
    /// sharded trainer that keeps the weights sharded at rest: each rank reads only its chunks from the files
    /// ([`crate::hf_ranges::HfRanges`]) and makes each unit whole only while it is used. Until a sharder's
    /// [`ParamUnits`] are set, forwards and saves refuse to run.
    pub fn stand_in(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        config.validate()?;
        let vs = VarStore::new(device);
        {
            let _g = tch::no_grad_guard();
            for (name, shape) in param_shapes(&config) {
                let stub =
                    Tensor::f_zeros([1], (kind, device))?.f_expand(shape.as_slice(), false)?;
                add_var(&vs, &name, stub);
            }
        }
        let mut model = Self::from_var_store(config, vs, kind)?;
        model.unread_weights = Some(dir.to_path_buf());
        Ok(model)
    }

    /// Makes a [`Qwen3Model::stand_in`] stand for the weights of another HF folder of the same shape (a
    /// checkpoint's), still unread. Errors for a model that holds its weights or whose sharder does.
    pub fn stand_in_for(&mut self, dir: &Path) -> Result<()> {
        ensure!(
            self.unread_weights.is_some() && self.units.is_none(),
            "{}: only a model with no weights read (a stand-in) can stand for another folder's",
            dir.display()
        );
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        ensure!(
            crate::qwen3::param_shapes(&config) == crate::qwen3::param_shapes(&self.config),
            "{}: the weights there have another shape than the model's",
            dir.display()
        );
        self.unread_weights = Some(dir.to_path_buf());
        Ok(())
    }

    /// The HF folder whose weights a [`Qwen3Model::stand_in`] has not read (None: the parameters hold them).
    pub fn unread_weights(&self) -> Option<&Path> {
        self.unread_weights.as_deref()
    }

    /// The sharding trainer's hooks, if set (a new sharder reads the weights through the one before it).
    pub fn param_units(&self) -> Option<Arc<dyn ParamUnits>> {
        self.units.clone()
    }

    /// Errors when the parameters are stand-ins nothing gathers (a bug: reading them would give zeros).
    pub(crate) fn ensure_readable(&self) -> Result<()> {
        if let (Some(dir), None) = (&self.unread_weights, &self.units) {
            anyhow::bail!(
                "the model of {} holds stand-ins, not weights (loaded for a trainer that keeps them sharded at \
                 rest), and no sharder gathers them",
                dir.display()
            );
        }
        Ok(())
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Dtype of the parameters and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Turns activation checkpointing on or off. When on, a forward with autograd enabled keeps only each
    /// layer's input; [`Qwen3Model::backward`] recomputes every layer (with the same expert choices) while
    /// back-propagating.
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Whether activation checkpointing is on.
    pub fn activation_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// Hands the parameters to a sharding trainer (None: back to always whole). With hooks set, every forward
    /// gathers each unit before use and releases it after, and a forward that records autograd is
    /// activation-checkpointed (see [`crate::param_units`]).
    pub fn set_param_units(&mut self, units: Option<Arc<dyn ParamUnits>>) {
        self.units = units;
        self.cache_unit_tensors();
    }

    /// Sets the hook that backward tells as it finishes each unit's gradients (plain data parallelism, see
    /// [`crate::param_units::GradsReady`]; None: off). With a hook set, a forward that records autograd and is
    /// not checkpointed is staged: cut into one graph per layer, so that backward runs a layer at a time and
    /// can call the hook between layers (same memory and arithmetic as one graph).
    pub fn set_grads_ready(&mut self, hook: Option<Arc<dyn GradsReady>>) {
        self.grads_ready = hook;
        self.cache_unit_tensors();
    }

    /// Divides the MoE layers' experts among `group`'s ranks for the forwards that record autograd without a KV
    /// cache (training's; see [`crate::expert_parallel`]); None: off. Every rank of the group must then run
    /// those forwards, and their backwards, in step. Decoding and no-grad forwards use the whole experts.
    pub fn set_expert_parallel(&mut self, group: Option<Arc<dyn ExpertExchange>>) -> Result<()> {
        if let Some(g) = &group {
            let e = self.config.num_experts;
            anyhow::ensure!(
                self.layers.iter().any(|l| matches!(l.mlp, Mlp::Moe { .. })),
                "expert parallelism needs a MoE model; this one has no MoE layer"
            );
            anyhow::ensure!(
                g.size() >= 1 && e.is_multiple_of(g.size()),
                "expert parallelism: {e} experts do not divide among {} ranks",
                g.size()
            );
        }
        self.expert_parallel = group;
        Ok(())
    }

    fn cache_unit_tensors(&mut self) {
        self.unit_tensors = if self.units.is_some() || self.grads_ready.is_some() {
            self.units()
                .into_iter()
                .map(|u| self.unit_params(u).into_iter().map(|(_, t)| t).collect())
                .collect()
        } else {
            Vec::new()
        };
    }

    /// Tells the gradient hook (if any) that this backward is done with `unit`.
    fn grads_done(&self, unit: Unit) -> Result<()> {
        match &self.grads_ready {
            Some(h) => h.ready(unit, &self.unit_tensors[unit.index()]),
            None => Ok(()),
        }
    }

    /// The parameter units: the root, then every decoder layer.
    pub fn units(&self) -> Vec<Unit> {
        std::iter::once(Unit::Root)
            .chain((0..self.layers.len()).map(Unit::Layer))
            .collect()
    }

    /// `unit`'s parameters by name, in name order (the order of [`ParamUnits::reduce_grads`]). The tensors are
    /// the model's own (shallow clones: re-pointing one's data re-points the model's).
    pub fn unit_params(&self, unit: Unit) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| match unit {
                Unit::Root => !name.starts_with("model.layers."),
                Unit::Layer(l) => name.starts_with(&format!("model.layers.{l}.")),
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn gather(&self, unit: Unit) -> Result<()> {
        match &self.units {
            Some(u) => u.gather(unit),
            None => Ok(()),
        }
    }

    fn release(&self, unit: Unit) -> Result<()> {
        match &self.units {
            Some(u) => u.release(unit),
            None => Ok(()),
        }
    }

    /// The token embedding matrix `[vocab, H]` (also the LM head when tied).
    pub fn embed_weight(&self) -> &Tensor {
        &self.embed
    }

    /// Runs the model.
    pub fn forward(&self, input: ForwardInput<'_>) -> Result<ForwardOutput> {
        let ForwardInput {
            input_ids,
            position_ids,
            attention_mask,
            seq_ids,
            mut cache,
            forced_experts,
            hidden_only,
        } = input;
        self.ensure_readable()?;
        let size = input_ids.size();
        ensure!(size.len() == 2, "input_ids must be [B, T], got {size:?}");
        ensure!(
            input_ids.kind() == Kind::Int64,
            "input_ids must be int64, got {:?}",
            input_ids.kind()
        );
        let (b, t) = (size[0], size[1]);
        ensure!(b > 0 && t > 0, "input_ids is empty ({size:?})");
        for (name, x) in [
            ("position_ids", position_ids),
            ("attention_mask", attention_mask),
            ("seq_ids", seq_ids),
        ] {
            if let Some(x) = x {
                ensure!(
                    x.size() == size,
                    "{name} must have the shape of input_ids {size:?}, got {:?}",
                    x.size()
                );
            }
        }
        let n_moe = self.config.moe_layers().len() as i64;
        let k = self.config.num_experts_per_tok as i64;
        if let Some(f) = forced_experts {
            ensure!(
                n_moe > 0,
                "forced_experts given but the model has no MoE layers"
            );
            ensure!(
                f.size() == [b, t, n_moe, k],
                "forced_experts must be [B, T, n_moe_layers, k] = {:?}, got {:?}",
                [b, t, n_moe, k],
                f.size()
            );
            ensure!(f.kind() == Kind::Int64, "forced_experts must be int64");
            if f.device() == Device::Cpu {
                let (lo, hi) = (f.f_min()?.int64_value(&[]), f.f_max()?.int64_value(&[]));
                ensure!(
                    lo >= 0 && hi < self.config.num_experts as i64,
                    "forced_experts holds expert ids outside 0..{}",
                    self.config.num_experts
                );
            }
        }
        let dev = self.device;
        let ids = input_ids.f_to_device(dev)?;
        self.gather(Unit::Root)?;

        // Cache bookkeeping (host lengths) and the attention mask.
        let mut plan = None;
        let mut new_lens = Vec::new();
        let (positions, attn) = if let Some(cache) = cache.as_deref_mut() {
            ensure!(
                seq_ids.is_none(),
                "seq_ids (packed sequences) cannot be combined with a KV cache"
            );
            ensure!(
                cache.device() == dev,
                "KV cache is on {:?}, model on {dev:?}",
                cache.device()
            );
            let slots = cache.row_slots(b as usize)?;
            let valid: Vec<i64> = match attention_mask {
                None => vec![t; b as usize],
                Some(m) => {
                    // One small read of the mask: appends must be right-padded (valid prefix per row).
                    let m = m.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?;
                    let flat: Vec<i64> = Vec::<i64>::try_from(m.f_reshape([-1])?)?;
                    flat.chunks(t as usize)
                        .enumerate()
                        .map(|(r, row)| {
                            let n = row.iter().take_while(|x| **x != 0).count();
                            ensure!(row[n..].iter().all(|x| *x == 0), "with a KV cache attention_mask must be right padding (row {r} has a 0 before a 1)");
                            Ok(n as i64)
                        })
                        .collect::<Result<_>>()?
                }
            };
            let lens: Vec<i64> = slots.iter().map(|s| cache.len(*s) as i64).collect();
            let read_len = lens.iter().map(|l| l + t).max().unwrap_or(t);
            ensure!(
                read_len as usize <= cache.max_len(),
                "KV cache overflow: a slot would hold {read_len} tokens, max_len is {}",
                cache.max_len()
            );
            let lens_t = Tensor::from_slice(&lens).f_to_device(dev)?;
            let valid_t = Tensor::from_slice(&valid).f_to_device(dev)?;
            let ar = Tensor::f_arange(t, (Kind::Int64, dev))?;
            let write_pos = lens_t.f_unsqueeze(1)?.f_add(&ar.f_unsqueeze(0)?)?; // [B, T]
            let keys = Tensor::f_arange(read_len, (Kind::Int64, dev))?.f_view([1, 1, read_len])?;
            let qpos = write_pos.f_unsqueeze(-1)?; // [B, T, 1]
            let end = lens_t.f_add(&valid_t)?.f_view([b, 1, 1])?;
            let m = keys
                .f_le_tensor(&qpos)?
                .f_logical_and(&keys.f_lt_tensor(&end)?)?
                .f_logical_or(&keys.f_eq_tensor(&qpos)?)?;
            let phys: Vec<i64> = slots.iter().map(|s| cache.physical(*s) as i64).collect();
            let contiguous_from = phys.windows(2).all(|w| w[1] == w[0] + 1).then(|| phys[0]);
            let slot_list = Tensor::from_slice(&phys).f_to_device(dev)?;
            plan = Some(CachePlan {
                slot_idx: slot_list.f_unsqueeze(1)?,
                write_pos: write_pos.shallow_clone(),
                read_len,
                contiguous_from,
                slot_list,
            });
            new_lens = slots
                .iter()
                .zip(lens.iter().zip(&valid))
                .map(|(s, (l, v))| (*s, (l + v) as usize))
                .collect();
            let pos = match position_ids {
                Some(p) => p.f_to_device(dev)?,
                None => write_pos,
            };
            (pos, AttnMask::Mask(m.f_unsqueeze(1)?))
        } else {
            let pos = match (position_ids, seq_ids, attention_mask) {
                (Some(p), _, _) => p.f_to_device(dev)?,
                (None, Some(s), _) => positions_from_seq_ids(&s.f_to_device(dev)?)?,
                (None, None, Some(m)) => m
                    .f_to_device(dev)?
                    .f_to_kind(Kind::Int64)?
                    .f_cumsum(1, Kind::Int64)?
                    .f_sub_scalar(1)?
                    .f_clamp_min(0)?,
                (None, None, None) => Tensor::f_arange(t, (Kind::Int64, dev))?
                    .f_unsqueeze(0)?
                    .f_expand([b, t], false)?,
            };
            let attn = if seq_ids.is_none() && attention_mask.is_none() {
                AttnMask::Causal
            } else {
                let ar = Tensor::f_arange(t, (Kind::Int64, dev))?;
                let causal = ar
                    .f_view([1, t])?
                    .f_le_tensor(&ar.f_view([t, 1])?)?
                    .f_unsqueeze(0)?; // [1, Tq, Tk]
                let mut m = causal;
                if let Some(s) = seq_ids {
                    let s = s.f_to_device(dev)?;
                    m = m.f_logical_and(&s.f_unsqueeze(2)?.f_eq_tensor(&s.f_unsqueeze(1)?)?)?;
                }
                if let Some(am) = attention_mask {
                    let key_ok = am.f_to_device(dev)?.f_ne(0)?.f_unsqueeze(1)?; // [B, 1, Tk]
                    m = m.f_logical_and(&key_ok)?;
                }
                // Padding queries would see no key at all (NaN rows); let every query see itself.
                let eye = Tensor::f_eye(t, (Kind::Bool, dev))?.f_unsqueeze(0)?;
                AttnMask::Mask(m.f_logical_or(&eye)?.f_unsqueeze(1)?)
            };
            (pos, attn)
        };
        let (cos, sin) = self.rope.cos_sin(&positions, self.kind)?;
        // Every layer rotates with the sign-folded sine (see `apply_rotary_folded`).
        let sin = fold_rotate_half_sign(&sin)?;
        let forced_flat = match forced_experts {
            Some(f) => Some(f.f_to_device(dev)?.f_reshape([b * t, n_moe, k])?),
            None => None,
        };

        let autograd = cache.is_none() && grad_enabled()?;
        let checkpoint = (self.checkpointing || self.units.is_some()) && autograd;
        let staged = !checkpoint && self.grads_ready.is_some() && autograd;
        let mut router_logits = Vec::new();
        let mut experts = Vec::new();
        let (hidden, tape) = if checkpoint || staged {
            let embed_out = ids.f_embedding_as(&self.embed, self.pad_idx())?;
            let embed_leaf = embed_out.f_detach()?.f_set_requires_grad(true)?;
            let mut x = embed_leaf.shallow_clone();
            let mut steps = Vec::with_capacity(self.layers.len());
            for (l, layer) in self.layers.iter().enumerate() {
                let forced = self.forced_for(layer, forced_flat.as_ref())?;
                self.gather(Unit::Layer(l))?;
                let run = || {
                    self.layer_forward(layer, &x, &cos, &sin, &attn, None, forced.as_ref(), true)
                };
                // Checkpointed: keep no graph (backward recomputes the layer); staged: keep this layer's.
                let (out, moe) = if checkpoint {
                    tch::no_grad(run)?
                } else {
                    run()?
                };
                self.release(Unit::Layer(l))?;
                let out_leaf = out.f_detach()?.f_set_requires_grad(true)?;
                let (router_leaf, chosen, router_graph) = match moe {
                    Some((rl, ex)) => {
                        let leaf = rl.f_detach()?.f_set_requires_grad(true)?;
                        router_logits.push(leaf.shallow_clone());
                        experts.push(ex.shallow_clone());
                        (Some(leaf), Some(ex), Some(rl))
                    }
                    None => (None, None, None),
                };
                steps.push(TapeStep {
                    layer: l,
                    input: x,
                    out_leaf: out_leaf.shallow_clone(),
                    router_leaf,
                    experts: chosen,
                    kept: staged.then_some((out, router_graph)),
                });
                x = out_leaf;
            }
            let tape = CheckpointTape {
                embed_out,
                steps,
                cos: cos.shallow_clone(),
                sin: sin.shallow_clone(),
                attn: attn.clone(),
            };
            (x, Some(tape))
        } else {
            let mut x = ids.f_embedding_as(&self.embed, self.pad_idx())?;
            for (l, layer) in self.layers.iter().enumerate() {
                let forced = self.forced_for(layer, forced_flat.as_ref())?;
                let cache_step = match (cache.as_deref_mut(), plan.as_ref()) {
                    (Some(c), Some(p)) => Some((c, p)),
                    _ => None,
                };
                self.gather(Unit::Layer(l))?;
                let (out, moe) = self.layer_forward(
                    layer,
                    &x,
                    &cos,
                    &sin,
                    &attn,
                    cache_step,
                    forced.as_ref(),
                    autograd,
                )?;
                self.release(Unit::Layer(l))?;
                if let Some((rl, ex)) = moe {
                    router_logits.push(rl);
                    experts.push(ex);
                }
                x = out;
            }
            (x, None)
        };
        if let Some(c) = cache {
            for (s, l) in new_lens {
                c.set_len(s, l);
            }
        }
        let (logits, head) = if hidden_only {
            let normed = rms_norm(&hidden, &self.norm, self.config.rms_norm_eps)?;
            let empty = Tensor::f_empty([b, t, 0], (self.kind, dev))?;
            let w = self.lm_head_weight();
            // Released units lose their storage: keep a copy of the head for the caller.
            let weight = if self.units.is_some() && tape.is_none() {
                w.f_detach()?.copy()
            } else {
                w.shallow_clone()
            };
            let head = LmHead::Hidden {
                hidden: normed,
                weight,
            };
            (empty, Some(head))
        } else {
            (self.head(&hidden)?, None)
        };
        if tape.is_none() {
            // No backward follows (a checkpointed forward keeps the root whole until its backward).
            self.release(Unit::Root)?;
        }
        let routed_experts = if experts.is_empty() {
            None
        } else {
            Some(Tensor::f_stack(&experts, 1)?.f_view([b, t, n_moe, k])?)
        };
        Ok(ForwardOutput {
            logits,
            head,
            router_logits,
            routed_experts,
            tape,
        })
    }

    /// Back-propagates `loss` (a scalar computed from `out`) into the parameters' `.grad`. Without
    /// checkpointing this is `loss.backward()`. With it, after `loss.backward()` fills the gradients of the
    /// last hidden state and the router logits, each layer is recomputed from its saved input (same forced
    /// experts) and its gradient pushed through, last layer first, then the embedding. A staged forward (see
    /// [`Qwen3Model::set_grads_ready`]) goes the same way through its kept graphs, and the hook hears of each
    /// unit as soon as its gradients are complete.
    pub fn backward(&self, loss: &Tensor, out: &ForwardOutput) -> Result<()> {
        if let (Some(units), Some(tape)) = (&self.units, &out.tape) {
            return self.backward_sharded(&**units, loss, tape);
        }
        loss.f_backward()?;
        let Some(tape) = &out.tape else { return Ok(()) };
        let mut upstream: Option<Tensor> = None; // grad of the current step's output, once known
        for step in tape.steps.iter().rev() {
            let g_out = match upstream.take() {
                Some(g) => Some(g),
                None => defined_grad(&step.out_leaf),
            };
            let g_router = step.router_leaf.as_ref().and_then(defined_grad);
            if g_out.is_some() || g_router.is_some() {
                let (input, surrogate) = match &step.kept {
                    Some((y, rl)) => (
                        step.input.shallow_clone(),
                        vjp_surrogate(y, rl.as_ref(), g_out.as_ref(), g_router.as_ref())?,
                    ),
                    None => self.recompute(tape, step, g_out.as_ref(), g_router.as_ref())?,
                };
                surrogate.f_backward()?;
                upstream = defined_grad(&input);
            }
            self.grads_done(Unit::Layer(step.layer))?;
        }
        if let Some(g) = upstream {
            tape.embed_out.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
        }
        self.grads_done(Unit::Root)
    }

    /// Recomputes a checkpointed layer from its saved input (same expert choices) and returns that input (now a
    /// leaf that requires grad) and the scalar whose gradient is the layer's vector-Jacobian product with
    /// `g_out` (its output's gradient) and `g_router` (its router logits').
    fn recompute(
        &self,
        tape: &CheckpointTape,
        step: &TapeStep,
        g_out: Option<&Tensor>,
        g_router: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let input = step.input.f_detach()?.f_set_requires_grad(true)?;
        let (y, moe) = self.layer_forward(
            &self.layers[step.layer],
            &input,
            &tape.cos,
            &tape.sin,
            &tape.attn,
            None,
            step.experts.as_ref(),
            true,
        )?;
        let rl = moe.map(|(rl, _)| rl);
        Ok((input, vjp_surrogate(&y, rl.as_ref(), g_out, g_router)?))
    }

    /// [`Qwen3Model::backward`] under fully sharded training: the same recomputation, but every gradient is
    /// taken with `autograd.grad` semantics (nothing accumulates in `.grad`) and handed to `units` unit by
    /// unit, each layer gathered just before its recomputation and released after. Every unit is gathered and
    /// reduced on every rank, even one whose share left it without gradient (collectives must match).
    fn backward_sharded(
        &self,
        units: &dyn ParamUnits,
        loss: &Tensor,
        tape: &CheckpointTape,
    ) -> Result<()> {
        let root = &self.unit_tensors[Unit::Root.index()];
        let last = match tape.steps.last() {
            Some(s) => s.out_leaf.shallow_clone(),
            None => tape.embed_out.shallow_clone(),
        };
        // The loss reaches the last hidden state, the router logits (aux loss) and the root's head weights.
        let routers: Vec<(usize, Tensor)> = tape
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.router_leaf.as_ref().map(|r| (i, r.shallow_clone())))
            .collect();
        let mut inputs = vec![last];
        inputs.extend(routers.iter().map(|(_, r)| r.shallow_clone()));
        inputs.extend(root.iter().map(|t| t.shallow_clone()));
        let mut grads = grads_of(loss, &inputs)?.into_iter();
        let mut upstream = grads.next().flatten();
        let mut router_grads: Vec<Option<Tensor>> = nones(tape.steps.len());
        for (i, _) in &routers {
            router_grads[*i] = grads.next().flatten();
        }
        let mut root_grads: Vec<Option<Tensor>> = grads.collect();
        for (i, step) in tape.steps.iter().enumerate().rev() {
            let unit = Unit::Layer(step.layer);
            units.gather(unit)?;
            let params = &self.unit_tensors[unit.index()];
            let g_out = upstream.take();
            let g_router = router_grads[i].take();
            let layer_grads = if g_out.is_none() && g_router.is_none() {
                nones(params.len())
            } else {
                let (input, surrogate) =
                    self.recompute(tape, step, g_out.as_ref(), g_router.as_ref())?;
                let mut inputs = vec![input];
                inputs.extend(params.iter().map(|t| t.shallow_clone()));
                let mut g = grads_of(&surrogate, &inputs)?;
                upstream = g.remove(0);
                g
            };
            units.reduce_grads(unit, layer_grads)?;
            units.release(unit)?;
        }
        // The embedding lookup's gradient joins the root's (tied embeddings: the head's too).
        if let Some(g) = upstream {
            let s = tape.embed_out.f_mul(&g)?.f_sum(Kind::Float)?;
            for (acc, g) in root_grads.iter_mut().zip(grads_of(&s, root)?) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(b)) => Some(a.f_add(&b)?),
                    (a, b) => a.or(b),
                };
            }
        }
        units.reduce_grads(Unit::Root, root_grads)?;
        units.release(Unit::Root)
    }

    pub(crate) fn pad_idx(&self) -> i64 {
        self.config
            .pad_token_id
            .map(|p| p as i64)
            .filter(|p| (*p as usize) < self.config.vocab_size)
            .unwrap_or(-1)
    }

    fn forced_for(&self, layer: &Layer, forced: Option<&Tensor>) -> Result<Option<Tensor>> {
        match (&layer.mlp, forced) {
            (Mlp::Moe { index, .. }, Some(f)) => Ok(Some(f.f_select(1, *index as i64)?)),
            _ => Ok(None),
        }
    }

    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.config.rms_norm_eps)?;
        Ok(x.f_linear(self.lm_head_weight(), None::<Tensor>)?)
    }

    /// Whether attention of `t` new tokens over cached keys stacks each KV head's query heads along the query
    /// axis (a mask `n_rep` times taller: `n_rep * t` entries a key, 4 bytes each once SDPA makes it additive)
    /// rather than copying the cached keys and values per query head (`2 * heads * head_dim` elements a key).
    /// Turns of a consultation stack; a long prompt's chunk copies.
    pub fn stacks_query_heads(&self, t: usize) -> bool {
        let c = &self.config;
        let n_rep = c.num_attention_heads / c.num_key_value_heads.max(1);
        let copy_bytes = 2 * c.num_attention_heads * c.head_dim * self.kind.elt_size_in_bytes();
        n_rep > 1 && n_rep * t * 4 <= copy_bytes
    }

    /// The LM head's weight `[vocab, H]` (the embedding when tied): logits = normalised hidden @ weight^T.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// One decoder layer; returns the new hidden state and, for MoE layers, (router logits, chosen experts).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin_folded: &Tensor,
        attn: &AttnMask,
        cache: Option<(&mut KvCache, &CachePlan)>,
        forced: Option<&Tensor>,
        training: bool,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let eps = self.config.rms_norm_eps;
        let (b, t, h) = x.size3()?;
        let h_in = rms_norm(x, &layer.input_ln, eps)?;
        let a = self.attention(layer, &h_in, cos, sin_folded, attn, cache)?;
        let x = x.f_add(&a)?;
        let h2 = rms_norm(&x, &layer.post_ln, eps)?;
        match &layer.mlp {
            Mlp::Dense { gate, up, down } => {
                let y = h2
                    .f_linear(gate, None::<Tensor>)?
                    .f_silu()?
                    .f_mul(&h2.f_linear(up, None::<Tensor>)?)?
                    .f_linear(down, None::<Tensor>)?;
                Ok((x.f_add(&y)?, None))
            }
            Mlp::Moe { weights, .. } => {
                let flat = h2.f_reshape([b * t, h])?;
                let (k, norm) = (
                    self.config.num_experts_per_tok as i64,
                    self.config.norm_topk_prob,
                );
                let o = match (&self.expert_parallel, training) {
                    (Some(ep), true) => {
                        moe_forward_expert_parallel(weights, &flat, k, norm, forced, true, &**ep)?
                    }
                    _ => moe_forward(weights, &flat, k, norm, forced)?,
                };
                Ok((
                    x.f_add(&o.hidden.f_view([b, t, h])?)?,
                    Some((o.router_logits, o.experts)),
                ))
            }
        }
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin_folded: &Tensor,
        mask: &AttnMask,
        cache: Option<(&mut KvCache, &CachePlan)>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.size3()?;
        let (nh, nkv, d) = c.attention_dims();
        let eps = c.rms_norm_eps;
        let a = &layer.attn;
        let q = rms_norm(
            &x.f_linear(&a.q, None::<Tensor>)?.f_view([b, t, nh, d])?,
            &a.q_norm,
            eps,
        )?
        .f_transpose(1, 2)?;
        let k = rms_norm(
            &x.f_linear(&a.k, None::<Tensor>)?.f_view([b, t, nkv, d])?,
            &a.k_norm,
            eps,
        )?
        .f_transpose(1, 2)?;
        let v = x
            .f_linear(&a.v, None::<Tensor>)?
            .f_view([b, t, nkv, d])?
            .f_transpose(1, 2)?;
        let q = apply_rotary_folded(&q, cos, sin_folded)?;
        let mut k = apply_rotary_folded(&k, cos, sin_folded)?;
        let mut v = v;
        let cached = cache.is_some();
        if let Some((cache, plan)) = cache {
            let li = layer.index;
            let idx = [
                Some(plan.slot_idx.shallow_clone()),
                Some(plan.write_pos.shallow_clone()),
            ];
            let _g = tch::no_grad_guard();
            let _ = cache.k[li].f_index_put_(&idx, &k.f_transpose(1, 2)?.f_detach()?, false)?;
            let _ = cache.v[li].f_index_put_(&idx, &v.f_transpose(1, 2)?.f_detach()?, false)?;
            // Narrow to the keys read before gathering scattered slots: the gather copies `read_len` positions
            // of each row, not the slot's whole `max_len` (a turn of a 2k-token history in an 8k-slot cache).
            let read = |c: &Tensor| -> Result<Tensor> {
                let window = c.f_narrow(1, 0, plan.read_len)?;
                let rows = match plan.contiguous_from {
                    Some(s) => window.f_narrow(0, s, b)?,
                    None => window.f_index_select(0, &plan.slot_list)?,
                };
                Ok(rows.f_transpose(1, 2)?)
            };
            k = read(&cache.k[li])?;
            v = read(&cache.v[li])?;
        }
        let n_rep = nh / nkv;
        let o = match mask {
            // A few new tokens over long cached keys: no copy of the keys per query head.
            AttnMask::Mask(m) if cached && self.stacks_query_heads(t as usize) => {
                grouped_query_attention(&q, &k, &v, &stack_mask(m, n_rep)?)?
            }
            AttnMask::Mask(m) => {
                // With an explicit mask on CUDA the memory-efficient kernel runs, which has no GQA: expanding
                // the KV heads keeps it eligible (packed training rows, or a caller's padding mask: T = S, where
                // stacking the queries would grow the mask instead; right-padded training rows pass no mask).
                let (k, v, gqa) = if n_rep > 1 && self.device.is_cuda() {
                    (repeat_kv(&k, n_rep)?, repeat_kv(&v, n_rep)?, false)
                } else {
                    (k, v, n_rep > 1)
                };
                Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, gqa)?
            }
            AttnMask::Causal => Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                true,
                None,
                n_rep > 1,
            )?,
        };
        Ok(o.f_transpose(1, 2)?
            .f_reshape([b, t, nh * d])?
            .f_linear(&a.o, None::<Tensor>)?)
    }
}

trait EmbeddingExt {
    fn f_embedding_as(&self, weight: &Tensor, pad: i64) -> Result<Tensor>;
}

impl EmbeddingExt for Tensor {
    fn f_embedding_as(&self, weight: &Tensor, pad: i64) -> Result<Tensor> {
        Ok(Tensor::f_embedding(weight, self, pad, false, false)?)
    }
}

/// Attention of `q: [B, H, T, D]` over `k, v: [B, Hkv, S, D]` (`H = Hkv * n_rep`, query head `h` reads KV head
/// `h / n_rep`), with each KV head's `n_rep` query heads stacked along the query axis (`[B, Hkv, n_rep * T, D]`)
/// under `stacked_mask: [B or 1, 1, n_rep * T, S]` ([`stack_mask`] of the `[.., T, S]` mask). SDPA then needs
/// neither GQA support, which its masked CUDA kernel lacks, nor a copy of the keys and values per query head:
/// for a turn of T new tokens over S cached ones that copy is `n_rep` times the whole history's keys and values,
/// per layer.
pub(crate) fn grouped_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    stacked_mask: &Tensor,
) -> Result<Tensor> {
    let (b, h, t, d) = q.size4()?;
    let hkv = k.size()[1];
    let stacked = q.f_reshape([b, hkv, h / hkv * t, d])?;
    let o = Tensor::f_scaled_dot_product_attention(
        &stacked,
        k,
        v,
        Some(stacked_mask),
        0.0,
        false,
        None,
        false,
    )?;
    Ok(o.f_reshape([b, h, t, d])?)
}

/// The attention mask `[.., T, S]` of [`grouped_query_attention`]'s stacked queries: repeated `n_rep` times along
/// the query axis (row `r * T + i` is query `i`'s).
pub(crate) fn stack_mask(mask: &Tensor, n_rep: i64) -> Result<Tensor> {
    Ok(mask.f_repeat([1, 1, n_rep, 1])?)
}

fn repeat_kv(x: &Tensor, n_rep: i64) -> Result<Tensor> {
    let (b, h, t, d) = x.size4()?;
    Ok(x.f_unsqueeze(2)?
        .f_expand([b, h, n_rep, t, d], false)?
        .f_reshape([b, h * n_rep, t, d])?)
}

/// Gradients of scalar `y` with respect to `inputs` (None where `y` does not depend on one), without
/// accumulating into any `.grad` (`torch.autograd.grad`).
fn grads_of(y: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
    let wanted: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].requires_grad())
        .collect();
    let mut out = nones(inputs.len());
    if !y.requires_grad() || wanted.is_empty() {
        return Ok(out);
    }
    let picked: Vec<&Tensor> = wanted.iter().map(|&i| &inputs[i]).collect();
    let grads = Tensor::f_run_backward(&[y], &picked, false, false)?;
    for (i, g) in wanted.into_iter().zip(grads) {
        out[i] = g.defined().then_some(g);
    }
    Ok(out)
}

/// The scalar whose gradient is a layer's vector-Jacobian product: `sum(y * g_out) + sum(router * g_router)`.
fn vjp_surrogate(
    y: &Tensor,
    router: Option<&Tensor>,
    g_out: Option<&Tensor>,
    g_router: Option<&Tensor>,
) -> Result<Tensor> {
    let mut surrogate = Tensor::f_zeros([], (Kind::Float, y.device()))?;
    if let Some(g) = g_out {
        surrogate = surrogate.f_add(&y.f_mul(g)?.f_sum(Kind::Float)?)?;
    }
    if let (Some(g), Some(rl)) = (g_router, router) {
        surrogate = surrogate.f_add(&rl.f_mul(g)?.f_sum(Kind::Float)?)?;
    }
    Ok(surrogate)
}

fn nones(n: usize) -> Vec<Option<Tensor>> {
    (0..n).map(|_| None).collect()
}

fn defined_grad(t: &Tensor) -> Option<Tensor> {
    let g = t.grad();
    g.defined().then_some(g)
}

/// Whether autograd records operations right now (false inside `tch::no_grad`).
fn grad_enabled() -> Result<bool> {
    let probe = Tensor::f_zeros([1], (Kind::Float, Device::Cpu))?.f_set_requires_grad(true)?;
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

/// Positions restarting at 0 wherever `seq_ids` changes along a row: `t - start(t)`, computed on the device.
pub fn positions_from_seq_ids(seq_ids: &Tensor) -> Result<Tensor> {
    let (b, t) = seq_ids.size2()?;
    let dev = seq_ids.device();
    let ar = Tensor::f_arange(t, (Kind::Int64, dev))?
        .f_unsqueeze(0)?
        .f_expand([b, t], false)?;
    let prev = Tensor::f_cat(
        &[&seq_ids.f_narrow(1, 0, 1)?, &seq_ids.f_narrow(1, 0, t - 1)?],
        1,
    )?;
    let starts = seq_ids.f_ne_tensor(&prev)?;
    let start_idx = ar.f_mul(&starts.f_to_kind(Kind::Int64)?)?; // index where a run starts, else 0
    let (run_start, _) = start_idx.f_cummax(1)?;
    Ok(ar.f_sub(&run_start)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turns stack their query heads, long chunks copy the keys: the break-even of the two costs' bytes.
    #[test]
    fn short_turns_stack_query_heads_and_long_chunks_do_not() {
        let cfg = |kv: usize| {
            crate::config::Qwen3Config::from_json_str(
                &format!(
                    r#"{{"model_type":"qwen3","vocab_size":32,"hidden_size":32,"intermediate_size":32,
                    "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":{kv},"head_dim":8}}"#
                ),
                "t",
            )
            .unwrap()
        };
        let m = Qwen3Model::random(cfg(2), Device::Cpu, Kind::Float, 0).unwrap();
        // 2 * 4 heads * 8 dims * 4 bytes = 256 bytes of keys and values a key; 2 * t * 4 bytes of mask.
        assert!(m.stacks_query_heads(1) && m.stacks_query_heads(32));
        assert!(!m.stacks_query_heads(33));
        let mha = Qwen3Model::random(cfg(4), Device::Cpu, Kind::Float, 0).unwrap();
        assert!(!mha.stacks_query_heads(1), "no GQA, nothing to stack");
    }

    /// Stacking each KV head's query heads along the query axis gives what expanding the KV heads gives, under a
    /// mask that differs per batch row (a ragged turn over histories of different lengths).
    #[test]
    fn stacked_query_heads_match_expanded_kv_heads() {
        tch::manual_seed(3);
        let (b, hkv, n_rep, t, s, d) = (2, 2, 3, 4, 9, 8);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([b, t, hkv * n_rep, d], opts).transpose(1, 2);
        let k = Tensor::randn([b, hkv, s, d], opts);
        let v = Tensor::randn([b, hkv, s, d], opts);
        // Row 0 holds 5 keys before its 4 new tokens, row 1 holds 3 and has 2 new (2 padding queries).
        let mut m = vec![false; (b * t * s) as usize];
        for (r, (held, new)) in [(5i64, 4i64), (3, 2)].into_iter().enumerate() {
            for i in 0..t {
                for j in 0..s {
                    let visible = j <= held + i && j < held + new;
                    m[(r as i64 * t * s + i * s + j) as usize] = visible || j == held + i;
                }
            }
        }
        let mask = Tensor::from_slice(&m).view([b, 1, t, s]);
        let stacked =
            grouped_query_attention(&q, &k, &v, &stack_mask(&mask, n_rep).unwrap()).unwrap();
        let expanded = Tensor::scaled_dot_product_attention(
            &q,
            &repeat_kv(&k, n_rep).unwrap(),
            &repeat_kv(&v, n_rep).unwrap(),
            Some(&mask),
            0.0,
            false,
            None,
            false,
        );
        assert_eq!(stacked.size(), [b, hkv * n_rep, t, d]);
        let diff = (&stacked - &expanded).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "max difference {diff}");
    }
}
