//! LoRA in PEFT's format: loading the shared adapter, re-saving it bit for bit, fresh PEFT
//! initialisation, merging, dropout, and clear errors for adapters we cannot honour.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use roomplan_trainer::model::lora::{peft_key, Lora, LoraConfig, Matrix, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use roomplan_trainer::parity::{max_abs_diff, shared_dir};
use roomplan_trainer::model::qwen3::{Input, Qwen3};

fn fixture() -> PathBuf {
    shared_dir().join("parity").join("qwen3")
}

fn model() -> Qwen3 {
    let base = fixture().join("base");
    Qwen3::load(
        &base.join("config.json"),
        &[base.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn ids() -> Tensor {
    candle_core::safetensors::load(fixture().join("inputs.safetensors"), &Device::Cpu)
        .unwrap()
        .remove("input_ids")
        .unwrap()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn shared_adapter_loads_with_peft_settings() {
    let m = model();
    let lora = Lora::load(&fixture().join("lora"), m.config(), &Device::Cpu).unwrap();
    let c = lora.config();
    assert_eq!(
        (c.r, c.lora_alpha, c.lora_dropout, c.scaling()),
        (4, 8.0, 0.0, 2.0)
    );
    assert_eq!(c.target_modules, ["k_proj", "o_proj", "q_proj", "v_proj"]);
    let vars = lora.vars();
    assert_eq!(vars.len(), 16);
    assert_eq!(
        vars[0].0,
        "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    );
    let q_b = &lora.layers()["model.layers.1.self_attn.q_proj"];
    assert_eq!(
        (q_b.in_features().unwrap(), q_b.out_features().unwrap()),
        (64, 128)
    );
}

#[test]
fn resave_gives_identical_tensors_and_config() {
    let m = model();
    let src = fixture().join("lora");
    let lora = Lora::load(&src, m.config(), &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    lora.save(out.path()).unwrap();
    let original = candle_core::safetensors::load(src.join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    let resaved =
        candle_core::safetensors::load(out.path().join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    let mut keys: Vec<_> = original.keys().collect();
    keys.sort();
    let mut keys2: Vec<_> = resaved.keys().collect();
    keys2.sort();
    assert_eq!(keys, keys2);
    for k in keys {
        assert_eq!(original[k].dtype(), resaved[k].dtype());
        assert_eq!(
            original[k].to_vec2::<f32>().unwrap(),
            resaved[k].to_vec2::<f32>().unwrap(),
            "{k}"
        );
    }
    // PEFT's own metadata marker is written.
    let bytes = std::fs::read(out.path().join(ADAPTER_WEIGHTS)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    // Every field of PEFT's adapter_config.json survives.
    assert_eq!(
        read_json(&out.path().join(ADAPTER_CONFIG)),
        read_json(&src.join(ADAPTER_CONFIG))
    );
}

#[test]
fn fresh_adapter_is_peft_initialised_and_changes_nothing() {
    let mut m = model();
    let before = m.forward(Input::Ids(&ids()), None).unwrap();
    let lora = Lora::init(
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            ..LoraConfig::default()
        },
        m.config(),
        &Device::Cpu,
        42,
    )
    .unwrap();
    assert_eq!(lora.vars().len(), 2 * 4 * 2);
    for (path, l) in lora.layers() {
        let a =
            l.a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        let bound = 1.0 / (l.in_features().unwrap() as f32).sqrt();
        assert!(
            a.iter().all(|v| v.abs() <= bound),
            "{path}: A outside ±1/√in"
        );
        // Uniform on ±bound: the spread is close to the bound, not collapsed.
        assert!(
            a.iter().cloned().fold(0f32, f32::max) > 0.8 * bound,
            "{path}"
        );
        assert_eq!(
            l.b.as_tensor()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "{path}: B not zero"
        );
    }
    // Same seed, same A.
    let again = Lora::init(lora.config().clone(), m.config(), &Device::Cpu, 42).unwrap();
    assert_eq!(
        max_abs_diff(&lora.named_tensors()[0].1, &again.named_tensors()[0].1).unwrap(),
        0.0
    );
    lora.attach(&mut m).unwrap();
    let after = m.forward(Input::Ids(&ids()), None).unwrap();
    assert_eq!(
        max_abs_diff(&before, &after).unwrap(),
        0.0,
        "B = 0 adds exactly nothing"
    );
    // A fresh save has PEFT's fields.
    let out = tempfile::tempdir().unwrap();
    lora.save(out.path()).unwrap();
    let cfg = read_json(&out.path().join(ADAPTER_CONFIG));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["k_proj", "o_proj", "q_proj", "v_proj"])
    );
}

#[test]
fn merged_weights_equal_the_adapted_model() {
    let mut adapted = model();
    let lora = Lora::load(&fixture().join("lora"), adapted.config(), &Device::Cpu).unwrap();
    lora.attach(&mut adapted).unwrap();
    let mut merged = model();
    let path = "model.layers.0.self_attn.q_proj";
    let w0 = merged.projection_weight(path).unwrap().clone();
    lora.merge_into(&mut merged).unwrap();
    let l = &lora.layers()[path];
    let expected =
        (w0 + (l.b.as_tensor().matmul(l.a.as_tensor()).unwrap() * 2.0).unwrap()).unwrap();
    assert!(max_abs_diff(merged.projection_weight(path).unwrap(), &expected).unwrap() < 1e-6);
    let a = adapted.forward(Input::Ids(&ids()), None).unwrap();
    let b = merged.forward(Input::Ids(&ids()), None).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() < 5e-5);
}

#[test]
fn dropout_acts_in_training_only() {
    let mut m = model();
    let mut lora = Lora::load(&fixture().join("lora"), m.config(), &Device::Cpu).unwrap();
    let mut cfg = lora.config().clone();
    cfg.lora_dropout = 0.5;
    // Reload the same tensors under a config with dropout, through the PEFT files.
    let dir = tempfile::tempdir().unwrap();
    lora.save(dir.path()).unwrap();
    let mut json = read_json(&dir.path().join(ADAPTER_CONFIG));
    json["lora_dropout"] = serde_json::json!(0.5);
    std::fs::write(dir.path().join(ADAPTER_CONFIG), json.to_string()).unwrap();
    lora = Lora::load(dir.path(), m.config(), &Device::Cpu).unwrap();
    assert_eq!(lora.config().lora_dropout, cfg.lora_dropout);
    lora.attach(&mut m).unwrap();
    let opts = |train| roomplan_trainer::model::qwen3::ForwardOptions {
        output_hidden_states: false,
        train,
    };
    let eval1 = m
        .forward_with(Input::Ids(&ids()), None, opts(false))
        .unwrap()
        .logits;
    let eval2 = m.forward(Input::Ids(&ids()), None).unwrap();
    assert_eq!(max_abs_diff(&eval1, &eval2).unwrap(), 0.0);
    let train = m
        .forward_with(Input::Ids(&ids()), None, opts(true))
        .unwrap()
        .logits;
    assert!(
        max_abs_diff(&eval1, &train).unwrap() > 1e-3,
        "dropout 0.5 must change the training forward"
    );
    // Masks come from the adapter's seeded stream: the same seed, the same training forward.
    let train_with_seed = |m: &roomplan_trainer::model::qwen3::Qwen3, seed| {
        lora.set_dropout_seed(seed);
        m.forward_with(Input::Ids(&ids()), None, opts(true))
            .unwrap()
            .logits
    };
    let (a, b, c) = (
        train_with_seed(&m, 7),
        train_with_seed(&m, 7),
        train_with_seed(&m, 8),
    );
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.0);
    assert!(max_abs_diff(&a, &c).unwrap() > 1e-3);
}

#[test]
fn unsupported_or_broken_adapters_are_refused() {
    let m = model();
    let src = fixture().join("lora");
    let case = |edit: &dyn Fn(&Path)| -> String {
        let dir = tempfile::tempdir().unwrap();
        for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        edit(dir.path());
        format!(
            "{:#}",
            Lora::load(dir.path(), m.config(), &Device::Cpu).unwrap_err()
        )
    };
    let set = |key: &'static str, value: serde_json::Value| {
        move |d: &Path| {
            let mut j = read_json(&d.join(ADAPTER_CONFIG));
            j[key] = value.clone();
            std::fs::write(d.join(ADAPTER_CONFIG), j.to_string()).unwrap();
        }
    };
    let err = case(&set("use_dora", serde_json::json!(true)));
    assert!(
        err.contains("use_dora true (DoRA is not implemented)"),
        "{err}"
    );
    // Fields whose meaning is not implemented are refused by name (they load in PEFT and give
    // other logits there): aLoRA, initialisations that change the base weights, unknown fields.
    for (key, value, expect) in [
        ("alora_invocation_tokens", serde_json::json!([27, 91]), "alora_invocation_tokens [27,91] (aLoRA applies the adapter only after its invocation tokens; not implemented)"),
        ("init_lora_weights", serde_json::json!("pissa_niter_4"), "init_lora_weights \"pissa_niter_4\" (this initialisation changes the base weights; convert the adapter to plain LoRA with PEFT first"),
        ("init_lora_weights", serde_json::json!("olora"), "init_lora_weights \"olora\" (this initialisation changes the base weights"),
        ("init_lora_weights", serde_json::json!("corda"), "init_lora_weights \"corda\" (this initialisation changes the base weights"),
        ("init_lora_weights", serde_json::json!("loftq"), "init_lora_weights \"loftq\" (this initialisation changes the base weights"),
        ("init_lora_weights", serde_json::json!("lora_ga"), "init_lora_weights \"lora_ga\" (this initialisation changes the base weights"),
        ("init_lora_weights", serde_json::json!("eva"), "init_lora_weights \"eva\" (not implemented; only true, false and \"gaussian\" are)"),
        ("use_qalora", serde_json::json!(true), "use_qalora true (QALoRA is not implemented)"),
        ("loftq_config", serde_json::json!({"loftq_bits": 4}), "loftq_config {\"loftq_bits\":4} (LoftQ changes the base weights; not implemented)"),
        ("trainable_token_indices", serde_json::json!([5]), "trainable_token_indices [5] (trainable token embeddings are not implemented)"),
        ("rank_pattern", serde_json::json!({"q_proj": 8}), "rank_pattern {\"q_proj\":8} (per-module ranks are not supported)"),
        ("lora_magic", serde_json::json!(1), "lora_magic 1: a field this LoRA implementation does not know; refused rather than computing something else"),
    ] {
        let err = case(&set(key, value.clone()));
        assert!(err.contains(expect), "{key} {value}: {err}");
    }
    let err = case(&set(
        "target_modules",
        serde_json::json!(["q_proj", "lm_head"]),
    ));
    assert!(err.contains("target module \"lm_head\""), "{err}");
    let err = case(&set("r", serde_json::json!(8)));
    assert!(err.contains("has shape [4, 64], expected (8, 64)"), "{err}");
    // Drop one tensor.
    let err = case(&|d: &Path| {
        let mut t = candle_core::safetensors::load(d.join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
        t.remove(&peft_key("model.layers.1.self_attn.v_proj", Matrix::B));
        candle_core::safetensors::save(&t, d.join(ADAPTER_WEIGHTS)).unwrap();
    });
    assert!(
        err.contains(
            "missing tensor base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        ),
        "{err}"
    );
}
