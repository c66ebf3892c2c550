//! `tools shard ...` end to end on the example dataset of the shard contract.

use std::path::Path;
use std::process::{Command, Output};

use roomplan_prep::manifest::{Manifest, Part, ToolInfo};
use roomplan_prep::shard::{example_records, DatasetWriter, WriterOptions};

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("tools runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The example dataset, optionally only the scenes with `index % count == part` (and their samples).
fn write_example(dir: &Path, part: Option<Part>) -> String {
    let (scenes, samples, rejects) = example_records();
    let options = WriterOptions {
        part,
        ..WriterOptions::default()
    };
    let mut writer = DatasetWriter::create(dir, options).unwrap();
    let keep = |i: usize| part.is_none_or(|p| i as u32 % p.count == p.index);
    let mine: Vec<_> = scenes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, s)| s)
        .collect();
    for sample in samples
        .into_iter()
        .filter(|s| mine.iter().any(|m| m.scene_id == s.scene_id))
    {
        writer.write_sample(sample).unwrap();
    }
    for scene in mine {
        writer.write_scene(scene).unwrap();
    }
    if part.is_none_or(|p| p.index == 0) {
        writer.rejects().extend(rejects);
    }
    let tool = ToolInfo::new("prep-example", "0.1.0", serde_json::json!({"num_views": 2}));
    writer.finish(tool, vec![]).unwrap().1
}

#[test]
fn digest_verify_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let digest = write_example(&dir, None);
    let dir_arg = dir.to_str().unwrap();

    let out = tools(&["shard", "digest", dir_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{digest}\n"));

    let out = tools(&["shard", "verify", dir_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("ok: 3 files verified; dataset digest {digest}\n")
    );

    let out = tools(&["shard", "inspect", dir_arg, "--rows", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    insta::assert_snapshot!("inspect", text(&out.stdout).replace(dir_arg, "<dir>"));
}

#[test]
fn verify_fails_naming_the_corrupted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    write_example(&dir, None);
    let path = dir.join("scenes-00000.arrow");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = tools(&["shard", "verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("MISMATCH scenes-00000.arrow: sha256 is "),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!("{}: 1 problem(s) in 3 files\n", dir.display())),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn missing_dataset_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let out = tools(&["shard", "digest", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: cannot read the manifest of {}: {}: ",
            missing.display(),
            missing.join("manifest.json").display()
        )),
        "{stderr}"
    );
}

#[test]
fn merge_joins_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let parts: Vec<_> = (0..2)
        .map(|index| {
            let dir = tmp.path().join(format!("part{index}"));
            write_example(&dir, Some(Part { index, count: 2 }));
            dir
        })
        .collect();
    let out_dir = tmp.path().join("merged");
    let out = tools(&[
        "shard",
        "merge",
        out_dir.to_str().unwrap(),
        parts[1].to_str().unwrap(),
        parts[0].to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = Manifest::read(&out_dir).unwrap().digest();
    assert_eq!(
        text(&out.stdout),
        format!("merged 2 parts into {}: 3 scenes, 5 samples, 7 views, 2 rejects; dataset digest {digest}\n", out_dir.display())
    );
    let verify = tools(&["shard", "verify", out_dir.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    // A part missing.
    let out = tools(&[
        "shard",
        "merge",
        tmp.path().join("m2").to_str().unwrap(),
        parts[0].to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot merge: parts [1] of 2 are missing"),
        "{}",
        text(&out.stderr)
    );
}

/// `tools shard inspect DIR | head -1`: the reader stops after one line; tools ends quietly (no
/// panic message about a broken pipe), as Unix tools do.
#[test]
fn inspect_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("example");
    write_example(&dir, None);
    // The reader is gone before tools writes its first line (`head -1` closes after one line;
    // closing before any is the same and does not depend on timing).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["shard", "inspect", dir.to_str().unwrap(), "--rows", "3"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(stderr, "", "{status:?}");
    // Ended by SIGPIPE like `cat` or `ls` (the shell reports nothing), not a panic's exit 101.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(13), "{status:?}");
}
