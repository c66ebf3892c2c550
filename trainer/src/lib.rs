//! roomplan-trainer: the fused VGGT → Perceiver + geometry head → Qwen3 (+LoRA) model in candle,
//! and the `train` binary's experiments, data loading, loop and checkpoints.
//!
//! - [`model`]: the networks and what feeds them (tokenizer and chat template, VGGT image input,
//!   checkpoint loading from folders and the Hugging Face cache);
//! - [`train`]: experiment files and pins, the shard loader, the optimizer and schedule, the loop,
//!   checkpoints, metrics and prediction;
//! - [`parity`]: checks against golden tensors of the official implementations.

pub mod model;
pub mod parity;
pub mod train;
