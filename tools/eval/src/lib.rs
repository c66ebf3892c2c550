//! roomplan-eval: the evaluation conventions of `shared/FORMATS.md` §6, written as code.
//!
//! - [`caption`]: BLEU-1..4, ROUGE-L and CIDEr-D as `pycocoevalcap` computes them, and an
//!   approximation of its PTB tokenisation.
//! - [`answers`]: answer matching — ScanQA EM@1/EM@10 (raw), LEO's `clean_answer` with EM and
//!   refined EM, SQA3D top-1 and question types, the predecessor's exact match, and aggregates.
//! - [`meteor`]: METEOR 1.5 through the official jar, as pycocoevalcap runs it.
//! - [`references`]: the official ScanQA / SQA3D annotation files as references.
//! - [`table`]: the whole table of one set of questions (all of the above) and per-question scores.
//! - [`actions`]: stage-3 RoomPlan action predictions against their targets (valid, exact, correct
//!   within tolerances).

pub mod actions;
pub mod answers;
pub mod caption;
pub mod meteor;
pub mod references;
pub mod table;
