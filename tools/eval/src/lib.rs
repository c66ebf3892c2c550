//! roomplan-eval: the evaluation conventions of `shared/FORMATS.md` §6, written as code.
//!
//! - [`caption`]: BLEU-1..4, ROUGE-L and CIDEr-D as `pycocoevalcap` computes them, and an
//!   approximation of its PTB tokenisation.

pub mod caption;
