//! roomplan-eval: the evaluation conventions of `shared/FORMATS.md` §6, written as code.
//!
//! - [`caption`]: BLEU-1..4, ROUGE-L and CIDEr-D as `pycocoevalcap` computes them, and an
//!   approximation of its PTB tokenisation.
//! - [`actions`]: stage-3 RoomPlan action predictions against their targets (valid, exact, correct
//!   within tolerances).

pub mod actions;
pub mod caption;
