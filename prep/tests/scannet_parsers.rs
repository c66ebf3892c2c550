//! Property tests of the raw parsers: arbitrary bytes never panic (they give a value or an error
//! naming the file), and well-formed input round-trips.

use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use roomplan_prep::scannet::{
    decode_depth_png, parse_mat4_text, parse_scan_meta, ply_vertex_bounds, ScanNetError, SensReader,
};
use roomplan_prep::{scanqa, sqa3d};

fn file() -> &'static Path {
    Path::new("input")
}

/// A small valid `.sens`: 2×2 raw colour, zlib 2×2 depth, `frames` frames.
fn valid_sens(frames: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(4u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(b"ok");
    for _ in 0..4 {
        for i in 0..16 {
            b.extend((if i % 5 == 0 { 1.0f32 } else { 0.0 }).to_le_bytes());
        }
    }
    b.extend(0i32.to_le_bytes());
    b.extend(1i32.to_le_bytes());
    for d in [2u32, 2, 2, 2] {
        b.extend(d.to_le_bytes());
    }
    b.extend(1000f32.to_le_bytes());
    b.extend((frames as u64).to_le_bytes());
    for f in 0..frames {
        for i in 0..16 {
            b.extend((if i % 5 == 0 { 1.0f32 } else { f as f32 }).to_le_bytes());
        }
        b.extend(0u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let depth: Vec<u8> = [1u16, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &depth).unwrap();
        let z = z.finish().unwrap();
        b.extend(12u64.to_le_bytes());
        b.extend((z.len() as u64).to_le_bytes());
        b.extend([f as u8; 12]);
        b.extend(z);
    }
    b.extend(0u64.to_le_bytes());
    b
}

/// Opens and decodes every frame; returns how many frames decoded. Must never panic.
fn exercise_sens(bytes: Vec<u8>) -> Result<usize, ScanNetError> {
    let (reader, _) = SensReader::from_reader(Cursor::new(bytes), file(), true)?;
    let mut ok = 0;
    for i in 0..reader.frames().len() as u64 {
        let colour = reader.decode_color(i);
        let depth = reader.decode_depth(i);
        if colour.is_ok() && depth.is_ok() {
            ok += 1;
        }
    }
    Ok(ok)
}

#[test]
fn the_valid_sens_decodes() {
    assert_eq!(exercise_sens(valid_sens(3)).unwrap(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sens_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = exercise_sens(bytes) {
            prop_assert_eq!(e.file(), file());
        }
    }

    #[test]
    fn sens_with_a_valid_start_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        // Version 4 and a short name, so that the parser gets past the first checks.
        let mut b = valid_sens(0)[..14].to_vec();
        b.extend(bytes);
        let _ = exercise_sens(b);
    }

    #[test]
    fn sens_mutations_never_panic(flips in proptest::collection::vec((0usize..10_000, any::<u8>()), 1..8),
                                  cut in proptest::option::of(0usize..10_000)) {
        let mut b = valid_sens(3);
        for (at, value) in flips {
            let n = b.len();
            b[at % n] = value;
        }
        if let Some(cut) = cut {
            b.truncate(cut % (b.len() + 1));
        }
        let _ = exercise_sens(b);
    }

    #[test]
    fn matrix_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_mat4_text(&text, file());
        let _ = parse_scan_meta(&text, file());
    }

    #[test]
    fn matrix_text_with_number_like_tokens_never_panics(
        tokens in proptest::collection::vec(prop_oneof![
            Just("inf".to_string()), Just("-inf".to_string()), Just("nan".to_string()), Just("1e400".to_string()),
            "-?[0-9]{1,3}\\.[0-9]{0,6}", Just("\n".to_string()), Just("=".to_string()), Just("axisAlignment".to_string()),
        ], 0..40)
    ) {
        let text = tokens.join(" ");
        let _ = parse_mat4_text(&text, file());
        let _ = parse_scan_meta(&text, file());
        let _ = parse_scan_meta(&format!("axisAlignment = {text}"), file());
    }

    #[test]
    fn matrix_text_round_trips(values in proptest::array::uniform16(-1e4f64..1e4)) {
        // numpy's `%f`: six decimals.
        let text: String = values.chunks(4)
            .map(|row| row.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join(" ") + "\n")
            .collect();
        let m = parse_mat4_text(&text, file()).unwrap();
        for (i, v) in values.iter().enumerate() {
            let expected: f64 = format!("{v:.6}").parse().unwrap();
            prop_assert_eq!(m[i / 4][i % 4], expected);
        }
    }

    #[test]
    fn ply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ply_vertex_bounds(&bytes[..], file());
        let mut with_header = b"ply\nformat binary_little_endian 1.0\nelement face 2\nproperty list uchar int vertex_indices\nelement vertex 3\nproperty float x\nproperty double y\nproperty uchar z\nend_header\n".to_vec();
        with_header.extend(&bytes);
        let _ = ply_vertex_bounds(&with_header[..], file());
    }

    #[test]
    fn depth_png_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(&bytes);
        let _ = decode_depth_png(&png, 1000.0, file(), "frame 0");
        let _ = decode_depth_png(&bytes, 1000.0, file(), "frame 0");
    }

    #[test]
    fn question_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = scanqa::parse_split(&bytes, scanqa::Split::Train, "f");
        let _ = sqa3d::join_split(&bytes, "q", &bytes, "a", sqa3d::Split::Test);
    }

    #[test]
    fn question_json_values_never_panic(value in json_value()) {
        let text = serde_json::to_vec(&value).unwrap();
        let array = serde_json::to_vec(&serde_json::json!([value.clone()])).unwrap();
        let (_, rejects) = scanqa::parse_split(&array, scanqa::Split::Val, "f");
        prop_assert!(rejects.iter().all(|r| r.file == "f"));
        let _ = scanqa::parse_split(&text, scanqa::Split::TestWoObj, "f");
        let q = serde_json::to_vec(&serde_json::json!({"questions": [value.clone()]})).unwrap();
        let a = serde_json::to_vec(&serde_json::json!({"annotations": [value]})).unwrap();
        let _ = sqa3d::join_split(&q, "q", &a, "a", sqa3d::Split::Val);
    }
}

/// JSON values biased towards the keys the question parsers look for.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
        "[a-z0-9_ ]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("scene0001_00")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop_oneof![
            Just("question_id".to_string()),
            Just("scene_id".to_string()),
            Just("question".to_string()),
            Just("answers".to_string()),
            Just("object_ids".to_string()),
            Just("object_names".to_string()),
            Just("situation".to_string()),
            Just("position".to_string()),
            Just("rotation".to_string()),
            Just("answer".to_string()),
            Just("x".to_string()),
            Just("_w".to_string()),
            "[a-z]{1,4}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
