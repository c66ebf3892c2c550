//! The corruption matrix (issue 10): every raw file type damaged in the ways real files are —
//! truncations, flipped bytes, non-finite and out-of-range numbers, wrong types, duplicates, size
//! mismatches — one case at a time on a copy of a clean synthetic world. For each case: the prep
//! binary does not panic and exits 0, the expected reject (file, record, reason) is in
//! rejects.jsonl, the rows of the scenes the damage does not touch are byte-for-byte those of the
//! clean run, every number written is finite, and `verify` passes.

mod scannet_common;

use std::path::{Path, PathBuf};

use roomplan_prep::shard::{describe_scene, verify_dataset, Dataset};
use roomplan_synth::{ScannetFormat, SynthConfig};
use scannet_common::{path_arg, rejects, run};

const SCANQA: &str = env!("CARGO_BIN_EXE_prep-scanqa");
const SQA3D: &str = env!("CARGO_BIN_EXE_prep-sqa3d");
const ARKIT: &str = env!("CARGO_BIN_EXE_prep-arkit");

/// Three rooms × 12 frames with `.sens` and export folders side by side, and ARKitScenes videos.
fn config() -> SynthConfig {
    SynthConfig {
        seed: 11,
        num_scenes: 3,
        frames_per_scene: 12,
        scannet_color_size: (160, 120),
        scannet_depth_size: (80, 60),
        scannet_format: ScannetFormat::Both,
        bird_size: (32, 24),
        scanqa_per_scene: 3,
        sqa3d_situations_per_scene: 2,
        faults: false,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    ScanQa,
    Sqa3d,
    Arkit,
}

/// Runs a prep binary on the raw tree `raw` into `out`.
fn prep(tool: Tool, raw: &Path, out: &Path) -> std::process::Output {
    let (bin, mut args) = match tool {
        Tool::ScanQa => (
            SCANQA,
            vec!["--scannet".to_string(), path_arg(&raw.join("scannet")).to_string(), "--scanqa".into(), path_arg(&raw.join("scanqa")).into()],
        ),
        Tool::Sqa3d => (
            SQA3D,
            vec!["--scannet".to_string(), path_arg(&raw.join("scannet")).to_string(), "--sqa3d".into(), path_arg(&raw.join("sqa3d")).into()],
        ),
        Tool::Arkit => (ARKIT, vec!["--arkitscenes".to_string(), path_arg(&raw.join("arkitscenes")).into()]),
    };
    args.extend(["--out".to_string(), path_arg(out).to_string(), "--threads".into(), "2".into(), "--num-views".into(), "4".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(bin, &args)
}

/// `describe_scene` of every scene, by id.
fn scene_rows(out: &Path) -> Vec<(String, String)> {
    let dataset = Dataset::open(out).unwrap();
    (0..dataset.num_scenes())
        .map(|i| {
            let scene = dataset.scene(i).unwrap();
            (scene.scene_id.clone(), describe_scene(&scene))
        })
        .collect()
}

/// Every float stored in the geometry of every view is finite.
fn all_finite(out: &Path) -> bool {
    let dataset = Dataset::open(out).unwrap();
    (0..dataset.num_scenes()).all(|i| {
        let scene = dataset.scene(i).unwrap();
        scene.axis_alignment.iter().all(|x| x.is_finite())
            && scene.reference_world_pose.is_none_or(|p| p.iter().all(|x| x.is_finite()))
            && scene.views.iter().all(|v| {
                v.geometry.as_ref().is_none_or(|g| {
                    g.r.iter().chain(&g.t).chain(&g.k).chain(&g.depth_hist).all(|x| x.is_finite())
                })
            })
    })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One damage: what it does to the raw tree, which tool reads it, the scenes it may change, and
/// the reject it must produce (file relative to the synth root, record, a piece of the reason).
struct Case {
    name: &'static str,
    tool: Tool,
    damage: Box<dyn Fn(&Path)>,
    touched: Vec<String>,
    expect: (String, String, &'static str),
}

fn edit_text(path: &Path, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, edit(text)).unwrap();
}

fn edit_bytes(path: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// The byte offset of the colour intrinsics in a `.sens` (after version and sensor name).
fn sens_intrinsics_offset(bytes: &[u8]) -> usize {
    let name_len = u64::from_le_bytes(bytes[4..12].try_into().unwrap()) as usize;
    12 + name_len
}

/// The byte offset of frame 0's camera-to-world pose in a `.sens`.
fn sens_frame0_offset(bytes: &[u8]) -> usize {
    // 4 matrices, 2 compression types, 4 sizes, depth shift, frame count.
    sens_intrinsics_offset(bytes) + 4 * 64 + 2 * 4 + 4 * 4 + 4 + 8
}

/// The ARKitScenes video folders (fold, id) in id order.
fn videos(raw: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for fold in ["Training", "Validation"] {
        let dir = raw.join("arkitscenes/3dod").join(fold);
        for entry in std::fs::read_dir(&dir).unwrap() {
            out.push((fold.to_string(), entry.unwrap().file_name().to_string_lossy().into_owned()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn cases(raw: &Path) -> Vec<Case> {
    let s0 = "scene0000_00".to_string();
    let sens = |scene: &str| format!("scannet/scans/{scene}/{scene}.sens");
    let scan = |scene: &str, rest: &str| format!("scannet/scans/{scene}/{rest}");
    let without_sens = |root: &Path| {
        std::fs::remove_file(root.join("scannet/scans/scene0000_00/scene0000_00.sens")).unwrap();
    };
    let (fold, video) = videos(raw).into_iter().next().unwrap();
    let frames_dir = format!("arkitscenes/3dod/{fold}/{video}/{video}_frames");
    let first_pincam = {
        let dir = raw.join(&frames_dir).join("lowres_wide_intrinsics");
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names[0].clone()
    };
    let annotation = format!("arkitscenes/3dod/{fold}/{video}/{video}_3dod_annotation.json");
    let v = video.clone();
    vec![
        // .sens headers and frames.
        Case {
            name: "sens: NaN focal length in the header",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scannet/scans/scene0000_00/scene0000_00.sens"), |b| {
                    let at = sens_intrinsics_offset(b);
                    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                })
            }),
            touched: vec![s0.clone()],
            expect: (sens("scene0000_00"), "header intrinsic_color".into(), "non-finite entry at row 0, column 0"),
        },
        Case {
            name: "sens: principal point outside the image",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scannet/scans/scene0000_00/scene0000_00.sens"), |b| {
                    let at = sens_intrinsics_offset(b) + 2 * 4; // row 0, column 2: cx
                    b[at..at + 4].copy_from_slice(&5000.0f32.to_le_bytes());
                })
            }),
            touched: vec![s0.clone()],
            expect: (sens("scene0000_00"), "header intrinsic_color".into(), "principal point (5000, "),
        },
        Case {
            name: "sens: a pose 1e30 m away",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scannet/scans/scene0000_00/scene0000_00.sens"), |b| {
                    let at = sens_frame0_offset(b) + 3 * 4; // row 0, column 3: t.x
                    b[at..at + 4].copy_from_slice(&1e30f32.to_le_bytes());
                })
            }),
            touched: vec![s0.clone()],
            expect: (sens("scene0000_00"), "frame 0".into(), "is beyond 10000 m: not a plausible position"),
        },
        Case {
            name: "sens: flipped version byte",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scannet/scans/scene0000_00/scene0000_00.sens"), |b| b[0] ^= 0x01)
            }),
            touched: vec![s0.clone()],
            expect: (sens("scene0000_00"), "header".into(), "version is 5, expected 4"),
        },
        Case {
            name: "sens: truncated in the middle",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scannet/scans/scene0000_00/scene0000_00.sens"), |b| {
                    let half = b.len() / 2;
                    b.truncate(half)
                })
            }),
            touched: vec![s0.clone()],
            expect: (sens("scene0000_00"), String::new(), "file truncated"),
        },
        // Scan metadata .txt.
        Case {
            name: "txt: a key given twice with different values",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_text(&root.join("scannet/scans/scene0000_00/scene0000_00.txt"), |t| t + "colorWidth = 640\n")
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "scene0000_00.txt"), String::new(), "colorWidth is given twice with different values"),
        },
        Case {
            name: "txt: axisAlignment that is not rigid",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_text(&root.join("scannet/scans/scene0000_00/scene0000_00.txt"), |t| {
                    t.lines()
                        .map(|l| match l.strip_prefix("axisAlignment = ") {
                            Some(m) => {
                                let scaled: Vec<String> = m
                                    .split_whitespace()
                                    .enumerate()
                                    .map(|(i, x)| if i < 12 && i % 4 != 3 { format!("{}", x.parse::<f64>().unwrap() * 2.0) } else { x.to_string() })
                                    .collect();
                                format!("axisAlignment = {}\n", scaled.join(" "))
                            }
                            None => format!("{l}\n"),
                        })
                        .collect()
                })
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "scene0000_00.txt"), "axisAlignment".into(), "not a rigid transform: rotation is not orthonormal"),
        },
        // SensReader export folders.
        Case {
            name: "export: colour image of another size than the metadata says",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                without_sens(root);
                let path = root.join("scannet/scans/scene0000_00/color/0.jpg");
                let small = image::load_from_memory(&std::fs::read(&path).unwrap()).unwrap().thumbnail_exact(80, 60);
                small.to_rgb8().save_with_format(&path, image::ImageFormat::Jpeg).unwrap();
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "color/0.jpg"), "frame 0".into(), "the colour image is 80x60 but scannet:scans/scene0000_00/scene0000_00.txt (colorWidth, colorHeight) says 160x120"),
        },
        Case {
            name: "export: two files for one frame",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                without_sens(root);
                let dir = root.join("scannet/scans/scene0000_00/color");
                std::fs::copy(dir.join("1.jpg"), dir.join("000.jpg")).unwrap();
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "color/0.jpg"), "frame 0".into(), "0.jpg and 000.jpg all name frame 0"),
        },
        Case {
            name: "export: NaN in intrinsic_color.txt",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                without_sens(root);
                edit_text(&root.join("scannet/scans/scene0000_00/intrinsic/intrinsic_color.txt"), |t| {
                    format!("nan {}", t.split_once(' ').unwrap().1)
                })
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "color/0.jpg"), "frame 0".into(), "does not fit the colour intrinsics: intrinsics have a non-finite entry"),
        },
        Case {
            name: "export: a pose file of the wrong type",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                without_sens(root);
                std::fs::write(root.join("scannet/scans/scene0000_00/pose/5.txt"), "{\"pose\": [1, 0, 0]}\n").unwrap();
            }),
            touched: vec![s0.clone()],
            expect: (scan("scene0000_00", "pose/5.txt"), "frame 5".into(), "expected 4 non-empty lines, found 1"),
        },
        // ScanQA question files.
        Case {
            name: "scanqa: a lone surrogate escape in one question",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_text(&root.join("scanqa/ScanQA_v1.0_train.json"), |t| t.replacen("\"question\": \"", "\"question\": \"\\ud800", 1))
            }),
            touched: vec![],
            expect: ("scanqa/ScanQA_v1.0_train.json".into(), String::new(), "lone UTF-16 surrogate escape"),
        },
        Case {
            name: "scanqa: a question of the wrong type",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_text(&root.join("scanqa/ScanQA_v1.0_train.json"), |t| {
                    let at = t.find("\"question\": \"").unwrap();
                    let end = at + 13 + t[at + 13..].find('"').unwrap();
                    format!("{}\"question\": 7{}", &t[..at], &t[end + 1..])
                })
            }),
            touched: vec![],
            expect: ("scanqa/ScanQA_v1.0_train.json".into(), String::new(), "bad question record: invalid type: integer `7`"),
        },
        Case {
            name: "scanqa: a file cut short",
            tool: Tool::ScanQa,
            damage: Box::new(move |root| {
                edit_bytes(&root.join("scanqa/ScanQA_v1.0_val.json"), |b| {
                    let cut = b.len() * 2 / 3;
                    b.truncate(cut)
                })
            }),
            touched: vec!["scene0001_00".into()],
            expect: ("scanqa/ScanQA_v1.0_val.json".into(), String::new(), "nothing from byte"),
        },
        // SQA3D.
        Case {
            name: "sqa3d: a position far outside any room",
            tool: Tool::Sqa3d,
            damage: Box::new(move |root| {
                edit_text(&root.join("sqa3d/balanced/v1_balanced_sqa_annotations_train_scannetv2.json"), |t| {
                    let at = t.find("\"position\"").unwrap();
                    let x = at + t[at..].find("\"x\": ").unwrap() + 5;
                    let end = x + t[x..].find([',', '}']).unwrap();
                    format!("{}1e30{}", &t[..x], &t[end..])
                })
            }),
            touched: vec![],
            expect: ("sqa3d/balanced/v1_balanced_sqa_annotations_train_scannetv2.json".into(), String::new(), "position [1e30, "),
        },
        // ARKitScenes.
        Case {
            name: "arkit: a huge rotation vector in the .traj",
            tool: Tool::Arkit,
            damage: Box::new({
                let frames_dir = frames_dir.clone();
                move |root| {
                    edit_text(&root.join(&frames_dir).join("lowres_wide.traj"), |t| {
                        let mut lines: Vec<String> = t.lines().map(String::from).collect();
                        let mut fields: Vec<String> = lines[0].split_whitespace().map(String::from).collect();
                        fields[1] = "1e300".into();
                        lines[0] = fields.join(" ");
                        lines.join("\n") + "\n"
                    })
                }
            }),
            touched: vec![v.clone()],
            expect: (format!("{frames_dir}/lowres_wide.traj"), "line 1".into(), "beyond 2π: not an axis-angle rotation"),
        },
        Case {
            name: "arkit: .pincam principal point outside the image",
            tool: Tool::Arkit,
            damage: Box::new({
                let path = format!("{frames_dir}/lowres_wide_intrinsics/{first_pincam}");
                move |root| {
                    edit_text(&root.join(&path), |t| {
                        let mut f: Vec<String> = t.split_whitespace().map(String::from).collect();
                        f[4] = "900".into();
                        f.join(" ") + "\n"
                    })
                }
            }),
            touched: vec![v.clone()],
            expect: (format!("{frames_dir}/lowres_wide_intrinsics/{first_pincam}"), "whole file".into(), "principal point (900, "),
        },
        Case {
            name: "arkit: a box 1e9 m long",
            tool: Tool::Arkit,
            damage: Box::new({
                let annotation = annotation.clone();
                move |root| {
                    edit_text(&root.join(&annotation), |t| {
                        let at = t.find("\"axesLengths\"").unwrap();
                        let open = at + t[at..].find('[').unwrap();
                        let comma = open + t[open..].find(',').unwrap();
                        format!("{}[1e9{}", &t[..open], &t[comma..])
                    })
                }
            }),
            touched: vec![v.clone()],
            expect: (annotation.clone(), String::new(), "must be positive and at most 50 m"),
        },
    ]
}

#[test]
fn every_damage_is_a_named_reject_and_the_rest_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    roomplan_synth::generate(&config(), &clean).unwrap();
    let mut baseline = std::collections::HashMap::new();
    for tool in [Tool::ScanQa, Tool::Sqa3d, Tool::Arkit] {
        let out = tmp.path().join(format!("baseline-{}", tool as u8));
        let res = prep(tool, &clean, &out);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        assert!(rejects(&out).is_empty(), "{:?}", rejects(&out));
        baseline.insert(tool as u8, scene_rows(&out));
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, case) in cases(&clean).into_iter().enumerate() {
        let raw = tmp.path().join(format!("case{i}"));
        copy_tree(&clean, &raw);
        (case.damage)(&raw);
        let out: PathBuf = tmp.path().join(format!("out{i}"));
        let res = prep(case.tool, &raw, &out);
        let stderr = String::from_utf8_lossy(&res.stderr);
        if res.status.code() != Some(0) || stderr.contains("panicked") {
            failures.push(format!("{}: exit {:?}: {stderr}", case.name, res.status.code()));
            continue;
        }
        let found = rejects(&out);
        let (file, record, reason) = &case.expect;
        match found.iter().find(|(f, r, why)| f == file && (record.is_empty() || r == record) && why.contains(reason)) {
            Some(hit) => eprintln!("{}: {hit:?}", case.name),
            None => failures.push(format!("{}: no reject ({file}, {record}, …{reason}…) in {found:#?}", case.name)),
        }
        checked += 1;
        let report = verify_dataset(&out).unwrap();
        if !report.ok() {
            failures.push(format!("{}: verify: {:?}", case.name, report.problems));
        }
        if !all_finite(&out) {
            failures.push(format!("{}: a non-finite number was written", case.name));
        }
        let rows = scene_rows(&out);
        for (id, row) in &baseline[&(case.tool as u8)] {
            if case.touched.contains(id) {
                continue;
            }
            match rows.iter().find(|(other, _)| other == id) {
                Some((_, now)) if now == row => {}
                _ => failures.push(format!("{}: untouched scene {id} changed or went missing", case.name)),
            }
        }
        // Cleaned as it goes: the copies add up.
        std::fs::remove_dir_all(&raw).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(checked, 18, "every case ran");
}
