//! (issue 5: Qwen3 + LoRA) — module under construction.
