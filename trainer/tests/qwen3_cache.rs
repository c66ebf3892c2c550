//! Generation path: KV-cache decoding against full-sequence forwards, batched with padding.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use roomplan_trainer::model::lora::Lora;
use roomplan_trainer::parity::{max_abs_diff, shared_dir};
use roomplan_trainer::model::qwen3::{Input, Qwen3};

fn fixture() -> PathBuf {
    shared_dir().join("parity").join("qwen3")
}

fn adapted_model() -> Qwen3 {
    let base = fixture().join("base");
    let mut m = Qwen3::load(
        &base.join("config.json"),
        &[base.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    Lora::load(&fixture().join("lora"), m.config(), &Device::Cpu)
        .unwrap()
        .attach(&mut m)
        .unwrap();
    m
}

fn ids() -> Tensor {
    candle_core::safetensors::load(fixture().join("inputs.safetensors"), &Device::Cpu)
        .unwrap()
        .remove("input_ids")
        .unwrap()
}

#[test]
fn greedy_generation_with_cache_equals_full_recompute() {
    let m = adapted_model();
    let prompt: Vec<u32> = ids()
        .i(0)
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let row = |ids: &[u32]| {
        Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let generated = m
        .generate_greedy(Input::Ids(&row(&prompt)), 8, |_| false)
        .unwrap();
    assert_eq!(generated.len(), 8);
    // Without a cache: re-run the whole sequence for every new token.
    let mut seq = prompt.clone();
    for _ in 0..8 {
        let logits = m.forward(Input::Ids(&row(&seq)), None).unwrap();
        let last = logits.i((0, seq.len() - 1)).unwrap();
        seq.push(last.argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }
    assert_eq!(generated, seq[prompt.len()..]);
    // A stop token ends generation and is included.
    let stop = generated[2];
    let first = generated.iter().position(|&t| t == stop).unwrap();
    let cut = m
        .generate_greedy(Input::Ids(&row(&prompt)), 8, |t| t == stop)
        .unwrap();
    assert_eq!(cut, generated[..=first]);
}

#[test]
fn left_padded_batch_decodes_like_each_row_alone() {
    let m = adapted_model();
    let all = ids();
    // Row 0: 4-token prompt left-padded to 7; row 1: 7-token prompt. Then 3 decode steps each.
    let p0 = all.i((0..1, 0..4)).unwrap();
    let p1 = all.i((1..2, 0..7)).unwrap();
    let pad = Tensor::zeros((1, 3), all.dtype(), &Device::Cpu).unwrap();
    let batch = Tensor::cat(&[&Tensor::cat(&[&pad, &p0], 1).unwrap(), &p1], 0).unwrap();
    let mask = Tensor::new(
        &[[0u8, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let steps = all.i((.., 7..10)).unwrap(); // next tokens fed to both rows
    let mut cache = m.new_cache(2);
    let mut out = vec![m
        .forward_cached(Input::Ids(&batch), Some(&mask), &mut cache)
        .unwrap()];
    for s in 0..3 {
        out.push(
            m.forward_cached(
                Input::Ids(&steps.i((.., s..s + 1)).unwrap()),
                None,
                &mut cache,
            )
            .unwrap(),
        );
    }
    assert_eq!(cache.len(), 10);
    let out = Tensor::cat(&out, 1).unwrap();
    let alone0 = m
        .forward(
            Input::Ids(&Tensor::cat(&[&p0, &steps.i((0..1, ..)).unwrap()], 1).unwrap()),
            None,
        )
        .unwrap();
    let alone1 = m
        .forward(
            Input::Ids(&Tensor::cat(&[&p1, &steps.i((1..2, ..)).unwrap()], 1).unwrap()),
            None,
        )
        .unwrap();
    assert!(max_abs_diff(&out.i((0..1, 3..)).unwrap(), &alone0).unwrap() < 5e-5);
    assert!(max_abs_diff(&out.i((1..2, ..)).unwrap(), &alone1).unwrap() < 5e-5);
}

#[test]
fn cache_refuses_a_different_batch() {
    let m = adapted_model();
    let mut cache = m.new_cache(1);
    let err = m
        .forward_cached(Input::Ids(&ids()), None, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache holds 1 rows, input has 2"), "{err}");
}
