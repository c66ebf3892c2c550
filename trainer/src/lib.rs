//! roomplan-trainer: the fused VGGT → Perceiver → Qwen3 (+LoRA) model in candle.

// Language side (issue 5).
pub mod frozen;
pub mod qwen3;
pub mod lora;
pub mod chat;
pub mod hub;
pub mod parity_qwen3;
// Parity report shared by the Qwen3 and VGGT checks.
pub mod parity;

// Vision side and fusion (issue 6).
pub mod vggt;
pub mod vggt_load;
pub mod vggt_input;
pub mod perceiver;
pub mod geometry_head;
pub mod fused;
pub mod optim;
pub mod parity_vggt;
