//! The training data path and the gradients it produces, on the fixture world: the epoch order
//! does not depend on loader threads, prompts and labels are what the model is told, every
//! trainable variable gets a gradient through the loop's own pieces and no frozen one does.

mod common;
mod world;

use std::sync::Arc;

use candle_core::Device;
use roomplan_trainer::model::chat::IGNORE_INDEX;
use roomplan_trainer::model::qwen3;
use roomplan_trainer::train::data::{truncate_prompt, Corpus, Cursor, Loader};
use roomplan_trainer::train::experiment;
use roomplan_trainer::train::optim::AdamW;
use roomplan_trainer::train::run::param_groups;
use roomplan_trainer::train::setup::assemble;

fn setup() -> (tempfile::TempDir, experiment::Experiment) {
    let dir = tempfile::tempdir().unwrap();
    let w = world::build(dir.path());
    let exp = experiment::load(&w.experiment, &[]).unwrap().experiment;
    (dir, exp)
}

#[test]
fn batches_do_not_depend_on_loader_threads_and_resume_from_a_cursor() {
    let (_dir, exp) = setup();
    let asm = assemble(&exp, &Device::Cpu).unwrap();
    let corpus = Arc::new(Corpus::new(&exp, asm.tokenizer.clone(), &exp.data.datasets).unwrap());
    assert_eq!(corpus.epoch_len(), 12);
    let ids = |threads: usize, cursor: Cursor, n: usize| {
        let mut loader = Loader::start(corpus.clone(), cursor, 3, threads, 2).unwrap();
        (0..n)
            .map(|_| {
                let b = loader.next_batch().unwrap();
                let views: Vec<usize> = b.examples.iter().map(|e| e.images.dims()[0]).collect();
                (b.examples.iter().map(|e| e.sample_id.clone()).collect::<Vec<_>>(), views, b.next)
            })
            .collect::<Vec<_>>()
    };
    let one = ids(1, Cursor::default(), 6);
    assert_eq!(one, ids(3, Cursor::default(), 6));
    // 12 samples, micro-batches of 3: the fifth batch starts epoch 1 at position 0.
    assert_eq!(one[3].2, Cursor { epoch: 1, position: 0 });
    assert_eq!(ids(2, one[1].2, 4), one[2..6].to_vec());
    // Each epoch holds every training sample once (one dataset: no mixture draws repeat).
    let mut first: Vec<String> = one[..4].iter().flat_map(|b| b.0.clone()).collect();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 12);
    // The epochs are ordered differently, and view dropout changes some view counts.
    assert_ne!(one[..4].iter().map(|b| &b.0).collect::<Vec<_>>(), one[4..].iter().map(|b| &b.0).collect::<Vec<_>>());
    assert!(one.iter().flat_map(|b| &b.1).any(|&v| v < 3));
    assert!(one.iter().flat_map(|b| &b.1).all(|&v| (1..=3).contains(&v)));
}

#[test]
fn prompts_hold_the_image_slots_and_only_the_answer_is_labelled() {
    let (_dir, exp) = setup();
    let asm = assemble(&exp, &Device::Cpu).unwrap();
    let corpus = Corpus::new(&exp, asm.tokenizer.clone(), &exp.data.datasets).unwrap();
    let row = corpus.sources[0].train_rows[0];
    let ex = corpus.example(0, row, None, true).unwrap();
    let tok = corpus.tokenizer();
    // 3 views with geometry (1 token each) + 4 latents.
    assert_eq!(ex.text.image_positions.len(), 3 + 4);
    let answer: Vec<u32> = ex
        .text
        .ids
        .iter()
        .zip(&ex.text.labels)
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(tok.decode(&answer, false).unwrap(), format!("{}<|im_end|>", ex.record.answers[0]));
    let prompt = tok.decode(&ex.text.ids[..ex.text.ids.len() - answer.len()], false).unwrap();
    assert!(prompt.starts_with("<|im_start|>user\n<|image_pad|>"), "{prompt}");
    assert!(prompt.ends_with(&format!("\n{}<|im_end|>\n<|im_start|>assistant\n", ex.record.question)), "{prompt}");

    // Truncation cuts question text right after the slots, never slots or answer.
    let n = ex.text.ids.len();
    let (cut, removed) = truncate_prompt(ex.text.clone(), n - 2, tok.im_end_id()).unwrap();
    assert_eq!((cut.ids.len(), removed), (n - 2, 2));
    assert_eq!(cut.image_positions, ex.text.image_positions);
    assert_eq!(cut.labels[cut.labels.len() - answer.len()..], ex.text.labels[n - answer.len()..]);
    let after = *ex.text.image_positions.last().unwrap() + 1;
    assert_eq!(cut.ids[after..], ex.text.ids[after + 2..]);
    let err = truncate_prompt(ex.text.clone(), ex.text.image_positions.len() + 2, tok.im_end_id()).unwrap_err();
    assert!(err.to_string().contains("raise data.max_seq_len"), "{err}");
}

#[test]
fn every_trainable_variable_gets_a_gradient_and_no_frozen_one_does() {
    let (_dir, exp) = setup();
    let asm = assemble(&exp, &Device::Cpu).unwrap();
    let corpus = Arc::new(Corpus::new(&exp, asm.tokenizer.clone(), &exp.data.datasets).unwrap());
    let mut loader = Loader::start(corpus, Cursor::default(), 3, 1, 1).unwrap();
    let vars = asm.model.trainable_vars();
    let groups = param_groups(&vars, &exp.optim);
    let names: Vec<(&str, usize)> = groups.iter().map(|g| (g.name.as_str(), g.vars.len())).collect();
    // LoRA on q/v of 2 layers (A, B each); projector matrices; projector vectors.
    assert_eq!(names[0], ("lora", 2 * 2 * 2));
    assert_eq!(names.iter().map(|n| n.1).sum::<usize>(), vars.len());
    let mut opt = AdamW::with_groups(groups).unwrap();
    for step in 0..2 {
        let batch = loader.next_batch().unwrap();
        let fused = asm.fused_examples(&batch.examples).unwrap();
        let grads = asm.model.loss(&fused).unwrap().backward().unwrap();
        if step == 1 {
            // After one update LoRA B is non-zero, so A's gradient is too.
            for (name, var) in &vars {
                common::assert_nonzero_gradient(&grads, name, var);
            }
            for layer in 0..2 {
                for module in qwen3::ATTENTION_PROJECTIONS.iter().chain(&qwen3::MLP_PROJECTIONS) {
                    let path = qwen3::projection_path(layer, module);
                    let w = asm.model.llm().projection_weight(&path).unwrap();
                    assert!(grads.get(w).is_none(), "{path} got a gradient");
                }
            }
            for ex in &fused {
                assert!(grads.get(&ex.vision).is_none(), "VGGT tokens got a gradient");
            }
        }
        opt.step(&grads).unwrap();
    }
}
