//! Behaviour of the VGGT aggregator beyond the golden cases: output-layer selection, 4-D input,
//! the first-frame / other-frames token split, input validation, bf16.

use candle_core::{DType, Device, IndexOp, Tensor};
use roomplan_trainer::parity::{max_abs_diff, shared_dir};
use roomplan_trainer::parity::vggt::folder_config;
use roomplan_trainer::model::vggt::Aggregator;
use roomplan_trainer::model::vggt_load::load_aggregator;

fn conv_model(dtype: DType) -> Aggregator {
    let dir = shared_dir().join("parity/vggt/conv");
    let cfg = folder_config(&dir).unwrap();
    load_aggregator(dir.join("weights.safetensors"), &cfg, dtype, &Device::Cpu).unwrap()
}

fn images(s: usize, h: usize, w: usize) -> Tensor {
    // Deterministic values in [0, 1].
    let n = s * 3 * h * w;
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 999.0).collect();
    Tensor::from_vec(v, (1, s, 3, h, w), &Device::Cpu).unwrap()
}

#[test]
fn selected_layers_come_back_in_the_requested_order() {
    let model = conv_model(DType::F32);
    let x = images(3, 42, 56);
    let both = model.forward_layers(&x, &[1, 0]).unwrap();
    let first = model.forward_layers(&x, &[0]).unwrap();
    let last = model.forward(&x).unwrap();
    assert_eq!(both[0].dims(), [1, 3, 5 + 12, 128]);
    assert_eq!(max_abs_diff(&both[0], &last).unwrap(), 0.0);
    assert_eq!(max_abs_diff(&both[1], &first[0]).unwrap(), 0.0);
    assert_ne!(max_abs_diff(&both[0], &both[1]).unwrap(), 0.0);
    assert!(model.forward_layers(&x, &[]).unwrap().is_empty());
    let err = model.forward_layers(&x, &[2]).unwrap_err().to_string();
    assert!(
        err.contains("output layer 2 requested, the model has 2 layers"),
        "{err}"
    );
}

#[test]
fn unbatched_input_gives_unbatched_output() {
    let model = conv_model(DType::F32);
    let x = images(2, 28, 42);
    let batched = model.forward(&x).unwrap();
    let single = model.forward(&x.squeeze(0).unwrap()).unwrap();
    assert_eq!(single.dims(), [2, 5 + 6, 128]);
    assert_eq!(
        max_abs_diff(&single, &batched.squeeze(0).unwrap()).unwrap(),
        0.0
    );
}

#[test]
fn only_the_first_frame_is_special() {
    // Frames after the first share tokens and positions, so global attention treats them as a
    // set: swapping frames 1 and 2 swaps their outputs. Frame 0 uses the other token slot, so
    // swapping it with frame 1 is not a permutation of the outputs.
    let model = conv_model(DType::F32);
    let x = images(3, 42, 56);
    let out = model.forward(&x).unwrap();
    let swap = |t: &Tensor, order: [i64; 3]| {
        t.index_select(&Tensor::new(&order, &Device::Cpu).unwrap(), 1)
            .unwrap()
    };
    let swapped_out = model.forward(&swap(&x, [0, 2, 1])).unwrap();
    assert!(max_abs_diff(&swapped_out, &swap(&out, [0, 2, 1])).unwrap() < 1e-5);
    let reference_swapped = model.forward(&swap(&x, [1, 0, 2])).unwrap();
    assert!(max_abs_diff(&reference_swapped, &swap(&out, [1, 0, 2])).unwrap() > 1e-2);
    // A one-frame sequence works and its camera token comes from slot 0 too.
    let one = model.forward(&x.i((.., 0..1)).unwrap()).unwrap();
    assert_eq!(one.dims(), [1, 1, 17, 128]);
}

#[test]
fn rejects_images_that_do_not_tile_into_patches() {
    let model = conv_model(DType::F32);
    let err = model.forward(&images(2, 40, 56)).unwrap_err().to_string();
    assert!(
        err.contains("H, W multiples of 14, got [1, 2, 3, 40, 56]"),
        "{err}"
    );
    let err = model
        .forward(&Tensor::zeros((2, 3, 4, 14, 14), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 channels"), "{err}");
}

#[test]
fn bf16_weights_track_f32() {
    let x = images(2, 28, 28);
    let reference = conv_model(DType::F32).forward(&x).unwrap();
    let half = conv_model(DType::BF16).forward(&x).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    let diff = max_abs_diff(&half, &reference).unwrap();
    // bf16 keeps 8 bits of mantissa: outputs of magnitude ~5 move by a few 1e-2.
    assert!(diff < 0.25, "{diff}");
}
