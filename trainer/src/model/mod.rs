//! The networks: the frozen VGGT aggregator ([`vggt`], loaded by [`vggt_load`], fed by
//! [`vggt_input`]), the trainable [`perceiver`] and [`geometry_head`], the frozen [`qwen3`] decoder
//! with [`lora`] adapters (frozen weights without gradients through [`frozen`], frozen bf16 weights
//! on the CPU through [`bf16_linear`]; fused attention, RMSNorm, projections with a backward in
//! [`kernels`]; the aggregator's forward-only fused kernels in [`kernels_infer`]), their fusion
//! ([`fused`]), the tokenizer and ChatML template ([`chat`]) and model files on disk or in the
//! Hugging Face cache ([`hub`]).

pub mod bf16_linear;
pub mod chat;
pub mod frozen;
pub mod fused;
pub mod geometry_head;
pub mod hub;
pub mod init;
pub mod kernels;
pub mod kernels_infer;
pub mod lora;
pub mod perceiver;
pub mod qwen3;
pub mod vggt;
pub mod vggt_input;
pub mod vggt_load;
