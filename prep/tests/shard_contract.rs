//! The shard contract end to end: write, read back by row and by scene id, determinism, manifest
//! snapshots, verification of corrupted folders, atomic writes, merging parts.

use std::path::{Path, PathBuf};

use roomplan_prep::manifest::{FileKind, Manifest, Part, RawInput, ToolInfo, MANIFEST_FILE};
use roomplan_prep::rejects::REJECTS_FILE;
use roomplan_prep::shard::*;

fn tool() -> ToolInfo {
    // Keys deliberately unsorted: the manifest sorts them.
    ToolInfo::new(
        "prep-test",
        "0.1.0",
        serde_json::json!({"num_views": 2, "depth_bins": {"count": 4, "max_m": 4.0}, "input": "raw"}),
    )
}

fn raw_inputs(root: &Path) -> Vec<RawInput> {
    let raw = root.join("raw");
    std::fs::create_dir_all(raw.join("frames")).unwrap();
    std::fs::write(raw.join("questions.json"), b"[1, 2, 3]\n").unwrap();
    std::fs::write(raw.join("frames/0.txt"), b"pose 0\n").unwrap();
    std::fs::write(raw.join("frames/1.txt"), b"pose 1, longer\n").unwrap();
    vec![
        RawInput::file("raw", &raw, &raw.join("questions.json")).unwrap(),
        RawInput::listing("raw", &raw, &raw.join("frames")).unwrap(),
    ]
}

/// Small batches and files so that the example spans several files of each table.
fn small_files() -> WriterOptions {
    WriterOptions {
        target_file_bytes: 4000,
        batch_rows: 2,
        batch_bytes: 1 << 20,
        ..WriterOptions::default()
    }
}

fn write_example(dir: &Path, options: WriterOptions) -> (Manifest, String) {
    write_example_with_raw(dir, options, dir.parent().unwrap())
}

/// The example dataset, with raw inputs made up under `raw_root`.
fn write_example_with_raw(
    dir: &Path,
    options: WriterOptions,
    raw_root: &Path,
) -> (Manifest, String) {
    let (scenes, samples, rejects) = example_records();
    let mut writer = DatasetWriter::create(dir, options).unwrap();
    for scene in scenes {
        writer.write_scene(scene).unwrap();
    }
    for sample in samples {
        writer.write_sample(sample).unwrap();
    }
    for reject in rejects.into_iter().rev() {
        writer.reject(reject);
    }
    let inputs = raw_inputs(raw_root);
    writer.finish(tool(), inputs).unwrap()
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The staging folders beside a dataset folder (`.<name>.prep-<pid>.<n>`).
fn staging_folders(dir: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.prep-", dir.file_name().unwrap().to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    (tmp, out)
}

#[test]
fn round_trip_by_row_and_by_scene_id() {
    let (_tmp, out) = fresh();
    let (manifest, digest) = write_example(&out, small_files());
    let (scenes, samples, _) = example_records();
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.digest(), digest);
    assert_eq!(dataset.manifest(), &manifest);
    assert_eq!(dataset.num_scenes(), 3);
    assert_eq!(dataset.num_samples(), 5);
    // Several files per table, so random access crosses file and batch boundaries.
    assert!(dataset.scenes().files().len() >= 2, "{:?}", manifest.files);
    assert!(dataset.samples().files().len() >= 2, "{:?}", manifest.files);
    for (i, scene) in scenes.iter().enumerate() {
        assert_eq!(&dataset.scene(i).unwrap(), scene);
        assert_eq!(dataset.scene_row(&scene.scene_id), Some(i));
        assert_eq!(
            dataset.scene_by_id(&scene.scene_id).unwrap().as_ref(),
            Some(scene)
        );
    }
    // Out of order, too.
    for i in [4, 0, 3, 1, 2] {
        let mut expected = samples[i].clone();
        expected.source_json = roomplan_prep::manifest::canonical_json(
            serde_json::from_str(&expected.source_json).unwrap(),
        )
        .to_string();
        assert_eq!(dataset.sample(i).unwrap(), expected);
    }
    assert_eq!(dataset.scene_row("scene9999_00"), None);
    assert!(dataset.scene_by_id("scene9999_00").unwrap().is_none());
    let err = dataset.scene(3).unwrap_err().to_string();
    assert_eq!(err, "scenes row 3 out of range (3 rows)");
    // source_json is stored with sorted keys.
    assert_eq!(
        dataset.sample(1).unwrap().source_json,
        r#"{"answer_type":"other","question_id":220602000002}"#
    );
    // The zero-copy row batch has the contract's schema.
    assert_eq!(
        dataset.scenes().row_batch(2).unwrap().schema().fields(),
        scenes_schema().fields()
    );
    assert_eq!(manifest.counts.views, 7);
    assert_eq!(manifest.counts.rejects, 2);
}

#[test]
fn same_records_give_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a/out"), tmp.path().join("b/out"));
    let (_, digest_a) = write_example(&a, small_files());
    let (_, digest_b) = write_example(&b, small_files());
    assert_eq!(digest_a, digest_b);
    assert_eq!(list_dir(&a), list_dir(&b));
    for name in list_dir(&a) {
        assert_eq!(
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    // The digest is the sha256 of manifest.json's bytes.
    assert_eq!(
        roomplan_prep::manifest::sha256_hex(&std::fs::read(a.join(MANIFEST_FILE)).unwrap()),
        digest_a
    );
}

#[test]
fn manifest_and_rows_snapshot() {
    let (_tmp, out) = fresh();
    write_example(&out, small_files());
    insta::assert_snapshot!(
        "manifest",
        std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap()
    );
    insta::assert_snapshot!(
        "rejects",
        std::fs::read_to_string(out.join(REJECTS_FILE)).unwrap()
    );
    let dataset = Dataset::open(&out).unwrap();
    let mut dump = String::new();
    for i in 0..dataset.num_scenes() {
        dump.push_str(&describe_scene(&dataset.scene(i).unwrap()));
    }
    for i in 0..dataset.num_samples() {
        dump.push_str(&describe_sample(&dataset.sample(i).unwrap()));
    }
    insta::assert_snapshot!("rows", dump);
}

#[test]
fn file_names_and_cuts() {
    assert_eq!(
        shard_file_name(FileKind::Scenes, None, 3),
        "scenes-00003.arrow"
    );
    assert_eq!(
        shard_file_name(FileKind::Samples, Some(Part { index: 2, count: 4 }), 0),
        "samples-part00002-00000.arrow"
    );
    assert_eq!(
        shard_file_name(FileKind::Samples, Some(Part { index: 0, count: 1 }), 0),
        "samples-00000.arrow"
    );
    // One file per table with the default (large) target.
    let (_tmp, out) = fresh();
    let (manifest, _) = write_example(&out, WriterOptions::default());
    let names: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        ["scenes-00000.arrow", "samples-00000.arrow", "rejects.jsonl"]
    );
    assert_eq!(
        manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>(),
        [3, 5, 2]
    );
    assert_eq!(
        list_dir(&out),
        [
            "manifest.json",
            "rejects.jsonl",
            "samples-00000.arrow",
            "scenes-00000.arrow"
        ]
    );
}

#[test]
fn empty_dataset_still_has_both_schemas() {
    let (_tmp, out) = fresh();
    let writer = DatasetWriter::create(&out, WriterOptions::default()).unwrap();
    let (manifest, _) = writer.finish(tool(), vec![]).unwrap();
    assert_eq!(
        manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.rows))
            .collect::<Vec<_>>(),
        [
            ("scenes-00000.arrow", 0),
            ("samples-00000.arrow", 0),
            ("rejects.jsonl", 0)
        ]
    );
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!((dataset.num_scenes(), dataset.num_samples()), (0, 0));
    assert!(verify_dataset(&out).unwrap().ok());
}

#[test]
fn verify_passes_then_names_each_corrupted_file() {
    let (_tmp, out) = fresh();
    let (manifest, digest) = write_example(&out, small_files());
    let report = verify_dataset(&out).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.digest, digest);
    assert_eq!(report.files_checked, manifest.files.len());

    // Flip one byte in the middle of the second samples file.
    let victim = manifest
        .files_of(FileKind::Samples)
        .nth(1)
        .unwrap()
        .path
        .clone();
    let mut bytes = std::fs::read(out.join(&victim)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(out.join(&victim), &bytes).unwrap();
    let report = verify_dataset(&out).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with(&format!("{victim}: sha256 is ")),
        "{}",
        report.problems[0]
    );

    // Truncate a scenes file: size and digest both differ.
    let scenes_file = manifest.files_of(FileKind::Scenes).next().unwrap().clone();
    let bytes = std::fs::read(out.join(&scenes_file.path)).unwrap();
    std::fs::write(out.join(&scenes_file.path), &bytes[..bytes.len() - 100]).unwrap();
    // A stray file and a missing rejects file.
    std::fs::write(out.join("scenes-00099.arrow"), b"stray").unwrap();
    std::fs::remove_file(out.join(REJECTS_FILE)).unwrap();
    let problems = verify_dataset(&out).unwrap().problems;
    assert!(
        problems.contains(&format!(
            "{}: {} bytes, the manifest says {}",
            scenes_file.path,
            scenes_file.bytes - 100,
            scenes_file.bytes
        )),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{}: sha256 is", scenes_file.path))),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("rejects.jsonl: cannot read:")),
        "{problems:?}"
    );
    assert_eq!(
        problems.last().unwrap(),
        "scenes-00099.arrow: not listed in the manifest"
    );

    // A hand-edited manifest no longer has canonical bytes.
    let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    std::fs::write(out.join(MANIFEST_FILE), text.replace("  ", "   ")).unwrap();
    let err = verify_dataset(&out).unwrap_err().to_string();
    assert!(err.ends_with("manifest.json: the bytes are not the canonical form of the manifest (edited by hand?); its digest would not be reproducible"), "{err}");
}

#[test]
fn a_file_with_another_schema_is_refused_by_name() {
    let (_tmp, out) = fresh();
    let (manifest, _) = write_example(&out, WriterOptions::default());
    // Put a samples file where the scenes file should be (and fix the manifest so only the schema differs).
    let mut edited = manifest.clone();
    let samples = edited.files[1].clone();
    std::fs::copy(out.join(&samples.path), out.join("scenes-00000.arrow")).unwrap();
    edited.files[0] = roomplan_prep::manifest::FileEntry {
        path: "scenes-00000.arrow".into(),
        kind: FileKind::Scenes,
        ..samples
    };
    edited.write(&out).unwrap();
    let err = Dataset::open(&out)
        .err()
        .expect("schema mismatch")
        .to_string();
    assert!(
        err.contains("scenes-00000.arrow: schema differs from the contract"),
        "{err}"
    );
    let problems = verify_dataset(&out).unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("scenes-00000.arrow:") && p.contains("schema differs")),
        "{problems:?}"
    );
    // Not an Arrow file at all.
    std::fs::write(out.join("scenes-00000.arrow"), b"definitely not arrow").unwrap();
    let err = ShardFile::open(&out.join("scenes-00000.arrow"), &scenes_schema())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.ends_with("scenes-00000.arrow: not an Arrow IPC file (no ARROW1 magic)"),
        "{err}"
    );
}

#[test]
fn writes_are_atomic_and_leave_no_temporary_files() {
    let (_tmp, out) = fresh();
    write_example(&out, small_files());
    assert!(
        list_dir(&out).iter().all(|n| !n.ends_with(".tmp")),
        "{:?}",
        list_dir(&out)
    );

    // A writer dropped before finish (a crash or an error) leaves no half file behind: the open
    // shard's temporary file is removed and no final name appears.
    let (_tmp2, out2) = fresh();
    let (scenes, _, _) = example_records();
    let mut writer = DatasetWriter::create(
        &out2,
        WriterOptions {
            batch_rows: 1,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    writer.write_scene(scenes[0].clone()).unwrap();
    writer.write_scene(scenes[1].clone()).unwrap();
    // Files are written in a staging folder beside the output, which appears only on finish.
    assert!(!out2.exists());
    let staging = staging_folders(&out2);
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert_eq!(list_dir(&staging[0]), ["scenes-00000.arrow.tmp"]);
    drop(writer);
    assert!(!out2.exists() && staging_folders(&out2).is_empty());
    std::fs::create_dir(&out2).unwrap();

    // The guard itself.
    let path = out2.join("x.bin");
    let (guard, _file) = AtomicFile::create(&path).unwrap();
    assert_eq!(guard.temp_path(), out2.join("x.bin.tmp"));
    drop(guard);
    assert!(!out2.join("x.bin.tmp").exists() && !path.exists());
    write_atomic(&path, b"one").unwrap();
    write_atomic(&path, b"two").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    assert_eq!(list_dir(&out2), ["x.bin"]);
}

#[test]
fn writer_refuses_inconsistent_records_and_occupied_folders() {
    let (scenes, samples, _) = example_records();
    let (_tmp, out) = fresh();
    let mut writer = DatasetWriter::create(&out, WriterOptions::default()).unwrap();
    writer.write_scene(scenes[0].clone()).unwrap();
    let err = writer
        .write_scene(scenes[0].clone())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "invalid record: scene scene0000_00 is written twice");
    let mut other_bins = scenes[1].clone();
    other_bins.views[1]
        .geometry
        .as_mut()
        .unwrap()
        .depth_hist
        .push(0.0);
    let err = writer.write_scene(other_bins).unwrap_err().to_string();
    assert_eq!(err, "invalid record: scene scene0001_00 view 1 (frame 10): depth_hist has 5 bins, earlier views have 4");
    let mut bad_json = samples[0].clone();
    bad_json.source_json = "[1]".into();
    assert_eq!(
        writer.write_sample(bad_json).unwrap_err().to_string(),
        "invalid record: sample train-scene0000-0: source_json is not a JSON object"
    );
    writer.write_sample(samples[0].clone()).unwrap();
    assert_eq!(
        writer
            .write_sample(samples[0].clone())
            .unwrap_err()
            .to_string(),
        "invalid record: sample train-scene0000-0 is written twice"
    );
    writer.write_sample(samples[1].clone()).unwrap(); // scene0001_00 never written
    let err = writer.finish(tool(), vec![]).unwrap_err().to_string();
    assert_eq!(err, "samples refer to scene scene0001_00, which was not written (reject its samples along with the scene)");
    // Nothing was left behind by the failed finish.
    assert!(!out.exists() && staging_folders(&out).is_empty());

    // An existing dataset is refused unless replacing is asked for.
    let (_tmp2, out2) = fresh();
    write_example(&out2, WriterOptions::default());
    let err = DatasetWriter::create(&out2, WriterOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "output folder {} already holds dataset files (",
            out2.display()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("); choose another folder or replace it"),
        "{err}"
    );
    std::fs::write(out2.join("notes.txt"), b"kept").unwrap();
    let before = list_dir(&out2);
    let writer = DatasetWriter::create(
        &out2,
        WriterOptions {
            replace_existing: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    // Replacing starts beside the old dataset, which stays whole until the new one is finished.
    assert_eq!(list_dir(&out2), before);
    assert!(verify_dataset(&out2).unwrap().ok());
    drop(writer);
    assert_eq!(list_dir(&out2), before);
    assert_eq!(list_dir(out2.parent().unwrap()), ["out", "raw"]);
    let err = DatasetWriter::create(
        &out2,
        WriterOptions {
            part: Some(Part { index: 2, count: 2 }),
            ..WriterOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(err, "shard index 2 is out of range for 2 shards");
}

/// A second dataset for the same folder: the example's first scene only, with its samples.
fn write_other(dir: &Path, options: WriterOptions) -> DatasetWriter {
    let (scenes, samples, _) = example_records();
    let mut writer = DatasetWriter::create(dir, options).unwrap();
    writer.write_scene(scenes[0].clone()).unwrap();
    for sample in samples.into_iter().filter(|s| s.scene_id == scenes[0].scene_id) {
        writer.write_sample(sample).unwrap();
    }
    writer
}

fn replacing() -> WriterOptions {
    WriterOptions {
        replace_existing: true,
        ..small_files()
    }
}

/// The user's own files in a dataset folder: a file named like Arrow, a `.tmp`, a sub-folder.
fn add_user_files(dir: &Path) {
    std::fs::write(dir.join("my_features.arrow"), b"user arrow").unwrap();
    std::fs::write(dir.join("notes.tmp"), b"user notes").unwrap();
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/x.txt"), b"user sub-folder").unwrap();
}

fn assert_user_files(dir: &Path) {
    assert_eq!(std::fs::read(dir.join("my_features.arrow")).unwrap(), b"user arrow");
    assert_eq!(std::fs::read(dir.join("notes.tmp")).unwrap(), b"user notes");
    assert_eq!(std::fs::read(dir.join("mine/x.txt")).unwrap(), b"user sub-folder");
}

/// Digest of a folder that must verify.
fn verified_digest(dir: &Path) -> String {
    let report = verify_dataset(dir).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    report.digest
}

#[test]
fn overwrite_swaps_the_new_dataset_in_complete_and_keeps_user_files() {
    let (tmp, out) = fresh();
    let (_, old_digest) = write_example(&out, small_files());
    add_user_files(&out);
    let old_names = list_dir(&out);
    let writer = write_other(&out, replacing());
    // While the new dataset is written the old one is untouched.
    assert_eq!(verified_digest(&out), old_digest);
    assert_eq!(list_dir(&out), old_names);
    let (manifest, new_digest) = writer.finish(tool(), vec![]).unwrap();
    assert_ne!(new_digest, old_digest);
    assert_eq!(verified_digest(&out), new_digest);
    assert_eq!(manifest.counts.scenes, 1);
    assert_user_files(&out);
    // Only the old manifest's files went: the new folder holds the new files and the user's.
    let mut expect: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    expect.extend(["manifest.json", "mine", "my_features.arrow", "notes.tmp"].map(String::from));
    expect.sort();
    assert_eq!(list_dir(&out), expect);
    assert_eq!(list_dir(tmp.path()), ["out", "raw"]);
    // Byte-identical to the same dataset written into a fresh folder.
    let (_tmp2, fresh_out) = fresh();
    let (_, digest) = write_other(&fresh_out, small_files()).finish(tool(), vec![]).unwrap();
    assert_eq!(digest, new_digest);
}

/// Each point where a kill -9 can stop the swap: the folder holds the old or the new dataset,
/// whole; the next run cleans up what is left and loses none of the user's files.
#[test]
fn a_run_killed_at_any_step_of_the_swap_loses_nothing() {
    for (step, expect_new) in [
        (CommitStep::Swap, false),
        (CommitStep::MoveFolders, true),
        (CommitStep::RemoveOld, true),
    ] {
        let (tmp, out) = fresh();
        let (_, old_digest) = write_example(&out, small_files());
        add_user_files(&out);
        let (_, new_digest) = write_other(&out, replacing())
            .finish_interrupted(tool(), vec![], step)
            .unwrap();
        let now = verified_digest(&out);
        assert_eq!(&now, if expect_new { &new_digest } else { &old_digest }, "{step:?}");
        // What the dead process left: its staging folder (under its pid, which no longer runs).
        let left = staging_folders(&out);
        assert_eq!(left.len(), 1, "{step:?}: {left:?}");
        let dead = tmp.path().join(".out.prep-4194999.0");
        std::fs::rename(&left[0], &dead).unwrap();
        // The next run for the folder cleans it up before anything else ...
        drop(DatasetWriter::create(&out, replacing()).unwrap());
        assert_eq!(list_dir(tmp.path()), ["out", "raw"], "{step:?}");
        assert_eq!(verified_digest(&out), now, "{step:?}");
        assert_user_files(&out);
        // ... and a complete rerun gives the new dataset.
        let (_, digest) = write_other(&out, replacing()).finish(tool(), vec![]).unwrap();
        assert_eq!(digest, new_digest);
        assert_eq!(verified_digest(&out), new_digest);
        assert_user_files(&out);
    }
}

#[test]
fn overwrite_refuses_folders_it_cannot_account_for() {
    // An unreadable manifest: nothing says which files are the dataset's.
    let (_tmp, out) = fresh();
    write_example(&out, small_files());
    let manifest = out.join(MANIFEST_FILE);
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.push(b' ');
    std::fs::write(&manifest, &bytes).unwrap();
    let before = list_dir(&out);
    let err = DatasetWriter::create(&out, replacing()).err().unwrap().to_string();
    assert!(
        err.starts_with(&format!("output folder {} holds a dataset whose manifest cannot be read (", out.display())),
        "{err}"
    );
    assert!(err.ends_with("replacing removes only the files a manifest lists, so move the folder away or clear it yourself"), "{err}");
    assert_eq!(list_dir(&out), before);

    // A shard name the manifest does not list.
    let (_tmp, out) = fresh();
    write_example(&out, small_files());
    std::fs::write(out.join("scenes-00042.arrow"), b"not ours").unwrap();
    let err = DatasetWriter::create(&out, replacing()).err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "output folder {} holds scenes-00042.arrow, which its manifest does not list; it is not replaced (move it away first)",
            out.display()
        )
    );

    // What an interrupted run of an older version left (dataset file names, no manifest) is replaced.
    let (_tmp, out) = fresh();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("scenes-00000.arrow"), b"half a run").unwrap();
    std::fs::write(out.join("samples-00000.arrow.tmp"), b"half a file").unwrap();
    std::fs::write(out.join("notes.tmp"), b"user notes").unwrap();
    let (manifest, digest) = write_other(&out, replacing()).finish(tool(), vec![]).unwrap();
    assert_eq!(verified_digest(&out), digest);
    let mut expect: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    expect.extend(["manifest.json", "notes.tmp"].map(String::from));
    expect.sort();
    assert_eq!(list_dir(&out), expect);
}

#[test]
fn manifest_paths_must_stay_inside_the_dataset_folder() {
    let (tmp, out) = fresh();
    write_example(&out, small_files());
    // The first shard moved out of the folder, the manifest pointing at it.
    let moved = tmp.path().join("elsewhere.arrow");
    std::fs::rename(out.join("scenes-00000.arrow"), &moved).unwrap();
    let manifest = Manifest::read(&out).unwrap();
    for bad in ["../elsewhere.arrow", moved.to_str().unwrap(), "sub/scenes-00000.arrow", ".", ""] {
        let mut edited = manifest.clone();
        edited.files[0].path = bad.to_string();
        edited.write(&out).unwrap();
        let expect = format!(
            "{}: files[0] (scenes) has path {bad:?}, which is not a file name inside the dataset folder (absolute paths, `..` and sub-folders are refused)",
            out.join(MANIFEST_FILE).display()
        );
        assert_eq!(Manifest::read(&out).unwrap_err().to_string(), expect);
        assert!(verify_dataset(&out).unwrap_err().to_string().ends_with(&expect));
        assert!(Dataset::open(&out).err().unwrap().to_string().ends_with(&expect));
    }
    // A symbolic link in the folder is refused as well, by verify and by the reader.
    manifest.write(&out).unwrap();
    std::os::unix::fs::symlink(&moved, out.join("scenes-00000.arrow")).unwrap();
    let report = verify_dataset(&out).unwrap();
    assert_eq!(
        report.problems,
        [format!(
            "scenes-00000.arrow: is a symbolic link to {}; a dataset's files must lie in its folder",
            moved.display()
        )]
    );
    let err = Dataset::open(&out).err().unwrap().to_string();
    assert!(
        err.ends_with(&format!("is a symbolic link to {}; a dataset's files must lie in its folder", moved.display())),
        "{err}"
    );
}

/// Write the example as `count` parts, scene `i` going to part `i % count` with its samples and rejects.
fn write_parts(root: &Path, count: u32) -> Vec<PathBuf> {
    let (scenes, samples, rejects) = example_records();
    (0..count)
        .map(|index| {
            let dir = root.join(format!("part{index}"));
            let part = Part { index, count };
            let mut writer = DatasetWriter::create(
                &dir,
                WriterOptions {
                    part: Some(part),
                    ..small_files()
                },
            )
            .unwrap();
            let mine: Vec<&SceneRecord> = scenes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % count == index)
                .map(|(_, s)| s)
                .collect();
            for scene in &mine {
                writer.write_scene((*scene).clone()).unwrap();
            }
            for sample in samples
                .iter()
                .filter(|s| mine.iter().any(|m| m.scene_id == s.scene_id))
            {
                writer.write_sample(sample.clone()).unwrap();
            }
            writer.reject(rejects[index as usize % rejects.len()].clone());
            writer.finish(tool(), raw_inputs(root)).unwrap();
            dir
        })
        .collect()
}

#[test]
fn parts_merge_into_one_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let parts = write_parts(tmp.path(), 2);
    let part0 = Manifest::read(&parts[0]).unwrap();
    assert_eq!(part0.part, Some(Part { index: 0, count: 2 }));
    assert!(part0.files[0].path.starts_with("scenes-part00000-"));

    let out = tmp.path().join("merged");
    // Parts given in reverse order merge the same way.
    let (manifest, digest) = merge_datasets(&out, &[parts[1].clone(), parts[0].clone()]).unwrap();
    assert_eq!(manifest.part, None);
    assert_eq!(
        manifest.merged_from,
        vec![part0.digest(), Manifest::read(&parts[1]).unwrap().digest()]
    );
    assert_eq!(
        (
            manifest.counts.scenes,
            manifest.counts.samples,
            manifest.counts.views,
            manifest.counts.rejects
        ),
        (3, 5, 7, 2)
    );
    assert!(verify_dataset(&out).unwrap().ok());
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.digest(), digest);
    let (scenes, _, _) = example_records();
    for scene in &scenes {
        assert_eq!(
            dataset.scene_by_id(&scene.scene_id).unwrap().as_ref(),
            Some(scene)
        );
    }
    // Part 0 holds scenes 0 and 2, part 1 scene 1: rows follow part order.
    assert_eq!(dataset.scene(1).unwrap().scene_id, "scene0002_00");
    assert_eq!(manifest.raw_inputs.len(), 2);

    // Merging again into a used folder, or with a part missing or repeated, is refused.
    let err = merge_datasets(&out, &parts).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    let err = merge_datasets(&tmp.path().join("m2"), &parts[..1])
        .unwrap_err()
        .to_string();
    assert_eq!(err, "cannot merge: parts [1] of 2 are missing");
    let err = merge_datasets(
        &tmp.path().join("m3"),
        &[parts[0].clone(), parts[0].clone()],
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "scene scene0000_00 is in both {0} and {0}",
            parts[0].display()
        )
    );
}

#[test]
fn manifest_merge_checks_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let parts = write_parts(tmp.path(), 2);
    let a = Manifest::read(&parts[0]).unwrap();
    let b = Manifest::read(&parts[1]).unwrap();
    let rejects = |rows| roomplan_prep::manifest::FileEntry {
        path: REJECTS_FILE.into(),
        kind: FileKind::Rejects,
        sha256: "0".repeat(64),
        bytes: 0,
        rows,
    };
    assert!(Manifest::merge(&[a.clone(), b.clone()], rejects(2)).is_ok());
    let mut other_args = b.clone();
    other_args.tool = ToolInfo::new("prep-test", "0.1.0", serde_json::json!({"num_views": 8}));
    let err = Manifest::merge(&[a.clone(), other_args], rejects(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "cannot merge: part 1 was written by prep-test 0.1.0 with arguments {\"num_views\":8}"
        ),
        "{err}"
    );
    let mut other_raw = b.clone();
    other_raw.raw_inputs[0].sha256 = "f".repeat(64);
    let err = Manifest::merge(&[a.clone(), other_raw], rejects(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot merge: raw input raw:frames differs between parts"),
        "{err}"
    );
    let mut whole = b.clone();
    whole.part = None;
    assert!(Manifest::merge(&[a.clone(), whole], rejects(2)).is_err());
    let err = Manifest::merge(&[a, b], rejects(5))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "cannot merge: the merged rejects file has 5 lines, the parts count 2"
    );
}

#[test]
fn raw_inputs_are_relative_and_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = raw_inputs(tmp.path());
    assert_eq!(inputs[0].path, "raw:questions.json");
    assert_eq!(inputs[0].bytes, 10);
    assert_eq!(
        inputs[0].sha256,
        roomplan_prep::manifest::sha256_hex(b"[1, 2, 3]\n")
    );
    assert_eq!(inputs[1].path, "raw:frames");
    assert_eq!(
        inputs[1].sha256,
        roomplan_prep::manifest::sha256_hex(b"0.txt\t7\n1.txt\t15\n")
    );
    assert_eq!(inputs[1].bytes, 22);
    let err = RawInput::file(
        "raw",
        &tmp.path().join("raw"),
        &tmp.path().join("elsewhere.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with(&format!(
            "elsewhere.json: is not inside the input root {}",
            tmp.path().join("raw").display()
        )),
        "{err}"
    );
}

/// Writes the example dataset where `ROOMPLAN_SHARD_EXAMPLE_DIR` says (for ci/pyarrow_check.py), or
/// to a temporary folder, and checks it verifies.
#[test]
fn example_dataset_for_interop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("ROOMPLAN_SHARD_EXAMPLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("example"));
    let options = WriterOptions {
        replace_existing: true,
        ..small_files()
    };
    write_example_with_raw(&dir, options, tmp.path());
    assert!(verify_dataset(&dir).unwrap().ok());
}

#[test]
fn rejects_are_sorted_parsed_back_and_drive_strict() {
    use roomplan_prep::rejects::{strict_violation, Reject, RejectLog};
    let mut log = RejectLog::new();
    log.push(Reject::new("b.json", "q2", "bad"));
    log.push(Reject::new("a.json", "q9", "worse"));
    log.push(Reject::new("a.json", "q10", "bad"));
    let bytes = log.to_jsonl();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        "{\"file\":\"a.json\",\"record\":\"q10\",\"reason\":\"bad\"}\n\
         {\"file\":\"a.json\",\"record\":\"q9\",\"reason\":\"worse\"}\n\
         {\"file\":\"b.json\",\"record\":\"q2\",\"reason\":\"bad\"}\n"
    );
    assert_eq!(
        RejectLog::from_jsonl(&bytes).unwrap().sorted(),
        log.sorted()
    );
    let err = RejectLog::from_jsonl(
        b"{\"file\":\"a\",\"record\":\"r\",\"reason\":\"x\"}\n{\"file\":1}\n",
    )
    .unwrap_err();
    assert!(err.starts_with("line 2: "), "{err}");
    let path = Path::new("out/rejects.jsonl");
    assert_eq!(
        strict_violation(3, true, path).as_deref(),
        Some("3 record(s) rejected (--strict); see out/rejects.jsonl")
    );
    assert_eq!(strict_violation(3, false, path), None);
    assert_eq!(strict_violation(0, true, path), None);
}
