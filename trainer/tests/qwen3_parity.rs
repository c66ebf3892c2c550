//! Qwen3 + LoRA against the golden tensors of transformers 5.24 + peft 0.21.2 in
//! `shared/parity/qwen3` (f32, CPU). Gates from its README: logits ≤ 5e-5, loss and grads ≤ 1e-5.

use roomplan_trainer::parity::shared_dir;
use roomplan_trainer::parity::qwen3 as parity_qwen3;

#[test]
fn shared_fixture_passes_every_check() {
    let folder = shared_dir().join("parity").join("qwen3");
    let report = parity_qwen3::run(&folder).expect("parity run");
    println!("{report}");
    let gate = |name: &str, tol: f64| {
        let c = report
            .get(name)
            .unwrap_or_else(|| panic!("check {name} missing from the report"));
        assert!(
            c.max_abs_diff <= tol,
            "{name}: max abs diff {} > {tol}",
            c.max_abs_diff
        );
    };
    for out in [
        "logits",
        "logits_embeds",
        "hidden_states.0",
        "hidden_states.1",
        "hidden_states.2",
    ] {
        gate(&format!("base/{out}"), 5e-5);
    }
    gate("inputs/inputs_embeds (embed + injected)", 0.0);
    for out in ["logits", "logits_embeds", "train.logits", "merged logits"] {
        gate(&format!("lora/{out}"), 5e-5);
    }
    gate("lora/train.loss", 1e-5);
    gate("lora/train.loss (from logits)", 1e-5);
    let grads: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name.starts_with("lora/grad."))
        .collect();
    assert_eq!(grads.len(), 16, "one gradient check per LoRA tensor");
    for c in grads {
        assert!(c.max_abs_diff <= 1e-5, "{}: {}", c.name, c.max_abs_diff);
    }
    for tag in ["base", "lora"] {
        gate(&format!("{tag}/kv-cache decode vs full logits"), 5e-5);
        gate(
            &format!("{tag}/kv-cache decode vs full logits (embeds)"),
            5e-5,
        );
        gate(&format!("{tag}/padded batch vs rows alone"), 5e-5);
    }
    gate("lora/adapter re-save round trip", 0.0);
    // bf16 frozen weights + f32 LoRA against the f32 references: logits, loss, logits of the
    // training input, loss from logits, and the 16 gradients, each within its bound.
    let bf16: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name.starts_with("bf16/"))
        .collect();
    assert_eq!(bf16.len(), 4 + 16);
    for c in bf16 {
        assert!(
            c.passed() && c.max_abs_diff > 0.0,
            "{}: {} (bound {})",
            c.name,
            c.max_abs_diff,
            c.tolerance
        );
    }
    assert!(report.get("bf16/lora logits").unwrap().tolerance <= 0.15);
    assert!(report.passed(), "{report}");
}
