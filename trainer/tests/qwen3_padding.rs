//! Property: however a row is padded (left or right, any amount) in a batch, its logits and its
//! loss are those of the row alone.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use proptest::prelude::*;
use roomplan_trainer::model::lora::Lora;
use roomplan_trainer::parity::{max_abs_diff, shared_dir};
use roomplan_trainer::model::qwen3::{Input, Qwen3};

fn model() -> &'static Qwen3 {
    static MODEL: std::sync::OnceLock<Qwen3> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let dir: PathBuf = shared_dir().join("parity").join("qwen3");
        let base = dir.join("base");
        let mut m = Qwen3::load(
            &base.join("config.json"),
            &[base.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        Lora::load(&dir.join("lora"), m.config(), &Device::Cpu)
            .unwrap()
            .attach(&mut m)
            .unwrap();
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn padded_row_equals_row_alone(
        ids in proptest::collection::vec(0u32..256, 2..10),
        pad in 1usize..5,
        left in any::<bool>(),
        pad_id in 0u32..256,
    ) {
        let m = model();
        let n = ids.len();
        let alone_ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let alone = m.forward(Input::Ids(&alone_ids), None).unwrap();
        let pads = vec![pad_id; pad];
        let (row, mask): (Vec<u32>, Vec<u8>) = if left {
            (pads.iter().chain(&ids).copied().collect(), [vec![0; pad], vec![1; n]].concat())
        } else {
            (ids.iter().chain(&pads).copied().collect(), [vec![1; n], vec![0; pad]].concat())
        };
        // A second, unpadded row of the full length shares the batch.
        let other: Vec<u32> = (0..(n + pad) as u32).map(|i| (i * 37 + 11) % 256).collect();
        let batch = Tensor::from_vec([row, other.clone()].concat(), (2, n + pad), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec([mask, vec![1; n + pad]].concat(), (2, n + pad), &Device::Cpu).unwrap();
        let logits = m.forward(Input::Ids(&batch), Some(&mask)).unwrap();
        let start = if left { pad } else { 0 };
        let diff = max_abs_diff(&logits.i((0..1, start..start + n)).unwrap(), &alone).unwrap();
        prop_assert!(diff < 5e-5, "row logits differ by {diff}");
        let other_alone = m.forward(Input::Ids(&Tensor::new(other.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()), None).unwrap();
        let diff = max_abs_diff(&logits.i((1..2, ..)).unwrap(), &other_alone).unwrap();
        prop_assert!(diff < 5e-5, "other row differs by {diff}");

        // The loss over the padded row (labels -100 on padding) equals the row's own loss.
        // The first token is never a target; with left padding a pad position would predict it.
        let mut labels_alone: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        labels_alone[0] = -100;
        let mut labels_row = vec![-100i64; n + pad];
        labels_row[start..start + n].copy_from_slice(&labels_alone);
        let loss_alone = m.loss(Input::Ids(&alone_ids), None, &Tensor::new(labels_alone.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), false).unwrap();
        let loss_padded = m.loss(
            Input::Ids(&batch.i(0..1).unwrap()),
            Some(&mask.i(0..1).unwrap()),
            &Tensor::new(labels_row.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(),
            false,
        ).unwrap();
        let diff = max_abs_diff(&loss_alone, &loss_padded).unwrap();
        prop_assert!(diff < 1e-5, "loss differs by {diff}");
    }
}
