//! `tools parity <folder>`: detect the fixture kind, run all its checks, print the max abs
//! difference of every output, exit 1 when any is over tolerance.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use roomplan_trainer::parity::ParityReport;
use roomplan_trainer::parity::qwen3 as parity_qwen3;
use roomplan_trainer::parity::vggt as parity_vggt;

#[derive(clap::Args)]
pub struct ParityArgs {
    /// A fixture folder laid out like ../shared/parity/qwen3 or ../shared/parity/vggt/<variant>.
    pub folder: PathBuf,
}

/// The fixture kinds `tools parity` knows, each with how to recognise and run it.
struct Kind {
    name: &'static str,
    detect: fn(&Path) -> bool,
    run: fn(&Path) -> Result<ParityReport>,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "qwen3",
        detect: parity_qwen3::is_fixture,
        run: parity_qwen3::run,
    },
    Kind {
        name: "vggt",
        detect: parity_vggt::is_fixture,
        run: parity_vggt::run,
    },
];

pub fn run(args: ParityArgs) -> Result<ExitCode> {
    let report = check(&args.folder)?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the checks of whichever kind `folder` is.
fn check(folder: &Path) -> Result<ParityReport> {
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
    (kind.run)(folder)
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
