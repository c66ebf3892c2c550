//! `tools parity <folder>`: detect the fixture kind, run all its checks, print the max abs
//! difference of every output, exit 1 when any is over tolerance.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use roomplan_trainer::parity::qwen3 as parity_qwen3;
use roomplan_trainer::parity::vggt as parity_vggt;
use roomplan_trainer::parity::{parse_device, ParityReport, RunOptions};

#[derive(clap::Args)]
pub struct ParityArgs {
    /// A fixture folder laid out like ../shared/parity/qwen3 or ../shared/parity/vggt/<variant>.
    pub folder: PathBuf,
    /// Where the models run: cpu, cuda (GPU 0) or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// PyTorch's own bf16 outputs of a Qwen3 fixture (a folder made by tools/parity/qwen3_bf16.py,
    /// e.g. trainer/tests/fixtures/qwen3_bf16): the bf16 checks then compare with them relative to
    /// the values' scale instead of with the f32 outputs under an absolute gate.
    #[arg(long, value_name = "FOLDER")]
    pub bf16_reference: Option<PathBuf>,
}

/// The fixture kinds `tools parity` knows, each with how to recognise and run it.
struct Kind {
    name: &'static str,
    detect: fn(&Path) -> bool,
    run: fn(&Path, &RunOptions) -> Result<ParityReport>,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "qwen3",
        detect: parity_qwen3::is_fixture,
        run: parity_qwen3::run_with,
    },
    Kind {
        name: "vggt",
        detect: parity_vggt::is_fixture,
        run: parity_vggt::run_with,
    },
];

pub fn run(args: ParityArgs) -> Result<ExitCode> {
    let options = RunOptions {
        device: parse_device(&args.device)?,
        bf16_reference: args.bf16_reference,
    };
    let report = check_with(&args.folder, &options)?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the checks of whichever kind `folder` is, on the CPU.
#[cfg(test)]
fn check(folder: &Path) -> Result<ParityReport> {
    check_with(folder, &RunOptions::default())
}

/// Runs the checks of whichever kind `folder` is.
fn check_with(folder: &Path, options: &RunOptions) -> Result<ParityReport> {
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    let Some(kind) = KINDS.iter().find(|k| (k.detect)(folder)) else {
        let names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        bail!(
            "{} is not a parity fixture of a known kind ({})",
            folder.display(),
            names.join(", ")
        );
    };
    (kind.run)(folder, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomplan_trainer::parity::shared_dir;

    fn shared_qwen3() -> PathBuf {
        shared_dir().join("parity").join("qwen3")
    }

    #[test]
    fn shared_qwen3_fixture_passes() {
        let report = check(&shared_qwen3()).unwrap();
        assert_eq!(report.kind, "qwen3");
        assert!(report.passed(), "{report}");
        let text = report.to_string();
        assert!(
            text.contains("base/logits")
                && text.ends_with(&format!("{} checks, 0 failed", report.checks.len())),
            "{text}"
        );
    }

    /// A copy of the fixture whose fixture.json tightens the logits gate below float32 noise.
    #[test]
    fn tighter_tolerance_in_a_copied_fixture_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let src = shared_qwen3();
        for sub in ["base", "lora"] {
            std::fs::create_dir_all(tmp.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(src.join(sub)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), tmp.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
        for f in [
            "inputs.safetensors",
            "base_outputs.safetensors",
            "lora_outputs.safetensors",
        ] {
            std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
        }
        std::fs::write(
            tmp.path().join("fixture.json"),
            r#"{"tolerances": {"logits": 1e-9}}"#,
        )
        .unwrap();
        let report = check(tmp.path()).unwrap();
        assert!(!report.passed());
        let failed: Vec<_> = report.failures().map(|c| c.name.as_str()).collect();
        assert!(
            failed.contains(&"base/logits") && failed.contains(&"lora/logits"),
            "{failed:?}"
        );
        assert!(report.to_string().contains("FAIL"));
    }

    /// The repository's PyTorch bf16 outputs of the shared fixture (tools/parity/qwen3_bf16.py).
    fn torch_bf16() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../trainer/tests/fixtures/qwen3_bf16")
    }

    #[test]
    fn shared_qwen3_fixture_passes_against_torch_bf16() {
        let options = RunOptions {
            bf16_reference: Some(torch_bf16()),
            ..Default::default()
        };
        let report = check_with(&shared_qwen3(), &options).unwrap();
        assert!(report.passed(), "{report}");
        println!("{report}");
        let bf16: Vec<_> = report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("bf16 vs torch bf16/"))
            .collect();
        // logits, logits_embeds, train.loss, train.logits and 16 LoRA gradients; the absolute
        // comparison with the f32 outputs is replaced.
        assert_eq!(bf16.len(), 20, "{report}");
        assert!(report.get("bf16/lora logits").is_none());
        // The logits' tolerance follows their scale (max |logit| 8.6 in PyTorch's bf16 run).
        let logits = report.get("bf16 vs torch bf16/logits").unwrap();
        assert!((logits.tolerance - 8.625 * 6e-2).abs() < 1e-9, "{logits:?}");
    }

    #[test]
    fn a_bf16_reference_of_other_fixture_files_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = torch_bf16();
        std::fs::copy(
            src.join("bf16_outputs.safetensors"),
            tmp.path().join("bf16_outputs.safetensors"),
        )
        .unwrap();
        let record = std::fs::read_to_string(src.join("reference.json")).unwrap();
        let digest = {
            let v: serde_json::Value = serde_json::from_str(&record).unwrap();
            v["fixture_sha256"]["inputs.safetensors"]
                .as_str()
                .unwrap()
                .to_string()
        };
        std::fs::write(
            tmp.path().join("reference.json"),
            record.replace(&digest, &"0".repeat(64)),
        )
        .unwrap();
        let options = RunOptions {
            bf16_reference: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        let e = format!("{:#}", check_with(&shared_qwen3(), &options).unwrap_err());
        assert!(
            e.contains(&format!(
                "inputs.safetensors is {digest}, the reference was made from {}",
                "0".repeat(64)
            )),
            "{e}"
        );
    }

    #[test]
    fn shared_vggt_fixtures_pass() {
        for variant in ["conv", "dinov2"] {
            let report = check(&shared_dir().join("parity").join("vggt").join(variant)).unwrap();
            assert_eq!(report.kind, "vggt");
            assert!(report.passed(), "{report}");
            assert!(report.get("weights.pt vs weights.safetensors").is_some());
        }
    }

    #[test]
    fn unknown_folder_kind_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("is not a parity fixture of a known kind (qwen3, vggt)"),
            "{err}"
        );
    }
}
