//! VGGT aggregator against the official implementation's golden tensors (`shared/parity/vggt`),
//! and the checkpoint loader against the released key list and the real on-disk formats.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use roomplan_trainer::parity::shared_dir;
use roomplan_trainer::parity::vggt as parity_vggt;
use roomplan_trainer::parity::vggt::OUTPUT_TOLERANCE;
use roomplan_trainer::model::vggt::{expected_parameters, Config};
use roomplan_trainer::model::vggt_load::{check_keys, VggtCheckpoint, VggtLoadError};

fn fixture(variant: &str) -> PathBuf {
    shared_dir().join("parity").join("vggt").join(variant)
}

fn assert_outputs_within_gate(variant: &str, cases: &[&str], depth: usize) {
    let report = parity_vggt::run(&fixture(variant)).unwrap();
    println!("{report}");
    for case in cases {
        for i in 0..depth {
            let check = report
                .get(&format!("{case}/output.{i}"))
                .unwrap_or_else(|| panic!("no check for {case}/output.{i}"));
            assert!(
                check.max_abs_diff <= OUTPUT_TOLERANCE,
                "{case}/output.{i}: {}",
                check.max_abs_diff
            );
        }
        for key in [
            "debug.images_normalized",
            "debug.patch_tokens",
            "debug.tokens_in",
            "debug.pos",
        ] {
            assert!(
                report.get(&format!("{case}/{key}")).is_some(),
                "{case}/{key} not compared"
            );
        }
    }
    let weights = report.get("weights.pt vs weights.safetensors").unwrap();
    assert_eq!(weights.max_abs_diff, 0.0);
    assert!(report.passed(), "{report}");
}

#[test]
fn conv_variant_matches_official_outputs() {
    assert_outputs_within_gate("conv", &["s3_42x56"], 2);
}

#[test]
fn dinov2_variant_matches_official_outputs_square_and_resampled() {
    assert_outputs_within_gate("dinov2", &["s3_70x70", "s3_56x70"], 2);
    let report = parity_vggt::run(&fixture("dinov2")).unwrap();
    // The non-square case exercises the antialiased bicubic resampling of the positional grid.
    let pos = report.get("s3_56x70/debug.pos_embed_used").unwrap();
    assert!(pos.max_abs_diff <= 1e-5, "{}", pos.max_abs_diff);
}

#[test]
fn fixture_folders_are_recognised() {
    assert!(parity_vggt::is_fixture(&fixture("conv")));
    assert!(parity_vggt::is_fixture(&fixture("dinov2")));
    assert!(!parity_vggt::is_fixture(&shared_dir().join("parity/vggt")));
    assert!(!parity_vggt::is_fixture(&shared_dir().join("parity/qwen3")));
}

#[test]
fn pt_and_safetensors_load_identical_tensors_ignoring_heads() {
    for variant in ["conv", "dinov2"] {
        let dir = fixture(variant);
        let pt = VggtCheckpoint::open(dir.join("weights.pt"), None).unwrap();
        let st = VggtCheckpoint::open(dir.join("weights.safetensors"), None).unwrap();
        // The .pt carries one extra head tensor that the aggregator must not see.
        let heads: Vec<_> = pt
            .shapes()
            .keys()
            .filter(|k| !k.starts_with("aggregator."))
            .collect();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(heads[0].starts_with("camera_head."));
        let a = pt.aggregator_tensors().unwrap();
        let b = st.aggregator_tensors().unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            a.len() as u64,
            config["num_weight_tensors"].as_u64().unwrap()
        );
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let mut params = 0;
        for (name, x) in &a {
            let y = &b[name];
            assert_eq!(x.dtype(), DType::F32, "{name}");
            assert_eq!(x.shape(), y.shape(), "{name}");
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name}"
            );
            params += x.elem_count();
        }
        assert_eq!(params as u64, config["num_params"].as_u64().unwrap());
    }
}

fn released_shapes() -> BTreeMap<String, Vec<usize>> {
    let path = shared_dir().join("parity/vggt/vggt1b_state_dict_shapes.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(json["shapes"].clone()).unwrap()
}

#[test]
fn released_vggt_1b_key_list_matches_the_model_exactly() {
    let shapes = released_shapes();
    assert_eq!(shapes.len(), 1797);
    let aggregator: BTreeMap<String, Vec<usize>> = shapes
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("aggregator.")?.to_string(), v.clone())))
        .collect();
    let expected = expected_parameters(&Config::vggt_1b()).unwrap();
    check_keys(
        Path::new("vggt1b_state_dict_shapes.json"),
        &expected,
        &aggregator,
    )
    .unwrap();
    assert_eq!(expected.len(), 1210);
    let params: usize = expected.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 909_112_320);
}

#[test]
fn released_key_list_with_a_wrong_config_names_the_differences() {
    let aggregator: BTreeMap<String, Vec<usize>> = released_shapes()
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("aggregator.")?.to_string(), v)))
        .collect();
    // Depth 23 leaves the 24th frame and global blocks unexpected: 18 tensors each (14 block
    // fields + q/k norm weight and bias); DINOv2's 24 blocks are unaffected.
    let cfg = Config {
        depth: 23,
        ..Config::vggt_1b()
    };
    let err = check_keys(
        Path::new("model.pt"),
        &expected_parameters(&cfg).unwrap(),
        &aggregator,
    )
    .unwrap_err();
    let VggtLoadError::KeyMismatch {
        missing,
        unexpected,
        wrong_shape,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(missing.is_empty() && wrong_shape.is_empty());
    assert_eq!(unexpected.len(), 2 * 18);
    assert!(
        unexpected.iter().all(|k| k.contains("_blocks.23.")),
        "{unexpected:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("model.pt: checkpoint does not match the aggregator config: 36 unexpected key(s): aggregator.frame_blocks.23."), "{msg}");
}

/// Copies `src` (a safetensors file) to `dst` with `edit` applied to its tensors.
fn edited_safetensors(src: &Path, dst: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load(src, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors.into_iter().collect(), dst).unwrap();
}

fn load_err(path: &Path, cfg: &Config) -> String {
    match VggtCheckpoint::open(path, None)
        .and_then(|c| c.load_aggregator(cfg, DType::F32, &Device::Cpu))
    {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loader_names_missing_unexpected_and_misshaped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("conv").join("weights.safetensors");
    let cfg = parity_vggt::folder_config(&fixture("conv")).unwrap();
    let path = dir.path().join("edited.safetensors");
    edited_safetensors(&src, &path, |t| {
        t.remove("aggregator.frame_blocks.1.ls2.gamma");
        t.insert(
            "aggregator.frame_blocks.1.attn.extra".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert(
            "aggregator.camera_token".into(),
            Tensor::zeros((1, 1, 1, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(&path, &cfg);
    let expected = format!(
        "{}: checkpoint does not match the aggregator config: 1 missing key(s): \
         aggregator.frame_blocks.1.ls2.gamma; 1 unexpected key(s): aggregator.frame_blocks.1.attn.extra; \
         1 wrong shape(s): aggregator.camera_token expected [1, 2, 1, 64] got [1, 1, 1, 64]",
        path.display()
    );
    assert_eq!(msg, expected);

    // A checkpoint with no aggregator at all (e.g. a heads-only file).
    edited_safetensors(&src, &path, |t| {
        t.retain(|k, _| k == "aggregator.camera_token");
        let x = t.remove("aggregator.camera_token").unwrap();
        t.insert("camera_head.token".into(), x);
    });
    let msg = load_err(&path, &cfg);
    assert!(
        msg.ends_with(
            "no tensor name starts with \"aggregator.\" (1 tensors, e.g. [\"camera_head.token\"])"
        ),
        "{msg}"
    );
}

/// Rewrites a zip `.pt` so that its state dict sits under `{"model": sd, "epoch": 3}`, the way
/// training scripts save checkpoints: same tensor records, new top-level pickle.
fn nest_state_dict(src: &Path, dst: &Path) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut entry = zin.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = vec![];
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            // PROTO 2 … STOP: keep the inner dict's opcodes, wrap them in an outer dict.
            assert_eq!(&bytes[..2], b"\x80\x02");
            assert_eq!(bytes.last(), Some(&b'.'));
            let inner = &bytes[2..bytes.len() - 1];
            let mut outer = b"\x80\x02}".to_vec();
            let key = |s: &str| {
                [
                    b"X".as_slice(),
                    &(s.len() as u32).to_le_bytes(),
                    s.as_bytes(),
                ]
                .concat()
            };
            outer.extend(key("model"));
            outer.extend_from_slice(inner);
            outer.push(b's');
            outer.extend(key("epoch"));
            outer.extend_from_slice(b"K\x03s.");
            bytes = outer;
        }
        zout.start_file(name, options).unwrap();
        zout.write_all(&bytes).unwrap();
    }
    zout.finish().unwrap();
}

#[test]
fn nested_state_dict_is_an_error_naming_the_key_and_loads_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.pt");
    nest_state_dict(&fixture("conv").join("weights.pt"), &path);
    let err = VggtCheckpoint::open(&path, None)
        .err()
        .expect("nested dict must not open silently");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no tensors at the top level: the state dict is nested in a dict under [\"model\"] \
             (top-level keys [\"model\", \"epoch\"]); open it with that key as `state_key`",
            path.display()
        )
    );
    let err = VggtCheckpoint::open(&path, Some("state_dict"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains(
            "state-dict key \"state_dict\" not found (top-level keys [\"model\", \"epoch\"])"
        ),
        "{err}"
    );
    // With the key, it is the very same checkpoint.
    let nested = VggtCheckpoint::open(&path, Some("model")).unwrap();
    let plain = VggtCheckpoint::open(fixture("conv").join("weights.safetensors"), None).unwrap();
    assert_eq!(parity_vggt::checkpoint_diff(&nested, &plain).unwrap(), 0.0);
}

#[test]
fn legacy_and_unknown_formats_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy.pt");
    // torch.save(..., _use_new_zipfile_serialization=False) starts with a protocol-2 pickle of
    // the magic number 0x1950a86a20f9469cfc6c.
    std::fs::write(
        &legacy,
        b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.",
    )
    .unwrap();
    let err = VggtCheckpoint::open(&legacy, None).err().unwrap();
    assert!(matches!(err, VggtLoadError::LegacyPickle { .. }));
    assert!(
        err.to_string()
            .contains("legacy (non-zip, pre-PyTorch-1.6) checkpoint"),
        "{err}"
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"hello world, not weights").unwrap();
    let err = VggtCheckpoint::open(&text, None).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!("{}: not a PyTorch zip checkpoint nor a safetensors file (first bytes 68656c6c6f20776f)", text.display())
    );
    let missing = dir.path().join("absent.pt");
    assert!(VggtCheckpoint::open(&missing, None)
        .err()
        .unwrap()
        .to_string()
        .starts_with(&format!("{}: ", missing.display())));
}
