//! Batch assembly, losses (PPO/GSPO/segment-GSPO, SFT, distillation), AdamW, checkpoints, training loop
