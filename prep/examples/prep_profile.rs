//! Where a prepared view's time goes: times each stage of `prep-scanqa`'s per-view work on the
//! frames of one `.sens`, on this process's CPU clock (getrusage), with the alternatives weighed in
//! issue 11 side by side (what prep runs now: libjpeg-turbo's DCT-scaled decode, the resize from
//! there and libjpeg-turbo's encode). Run with `JSIMD_FORCENONE=1` to time libjpeg-turbo's portable
//! C path. Method and figures: BENCHMARKS.md, "prep throughput".
//!
//! usage: cargo run --release -p roomplan-prep --example prep_profile -- SCENE.sens [FRAMES]

use std::io::Read;
use std::path::PathBuf;

use roomplan_prep::geometry::{depth_histogram, DepthBins, DepthMap, SizeRule};
use roomplan_prep::imaging::{decode_jpeg, draft_denominator, encode_jpeg, resize_rgb};
use roomplan_prep::scannet::SensReader;
use sha2::{Digest, Sha256};

/// CPU seconds (user + system) this process has used so far.
fn cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// zune-jpeg's full decode to RGB (prep's decoder before libjpeg-turbo), on its SIMD path or not.
fn zune_decode(bytes: &[u8], simd: bool) -> Vec<u8> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let options = DecoderOptions::new_safe()
        .set_use_unsafe(simd)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options)
        .decode()
        .unwrap()
}

fn time<T>(label: &str, n: usize, mut f: impl FnMut() -> T) -> T {
    let start = cpu_s();
    let mut out = None;
    for _ in 0..n {
        out = Some(f());
    }
    let per = (cpu_s() - start) / n as f64 * 1e3;
    println!("{label:58} {per:8.2} ms CPU per call");
    out.unwrap()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(
        args.get(1)
            .expect("usage: prep_profile SCENE.sens [FRAMES]"),
    );
    let frames: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
    let mb = bytes.len() as f64 / 1e6;
    let start = cpu_s();
    let digest = Sha256::digest(&bytes);
    let s = cpu_s() - start;
    println!(
        "sha256 of {mb:.1} MB in memory: {:.0} MB/s CPU ({})",
        mb / s,
        hex::encode(&digest[..4])
    );
    let start = cpu_s();
    let (reader, _) = SensReader::open_hashed(&path)?;
    let s = cpu_s() - start;
    println!(
        "open_hashed (read + sha256 + index) {mb:.1} MB: {:.0} MB/s CPU",
        mb / s
    );
    let start = cpu_s();
    let _ = SensReader::open(&path)?;
    println!("open (index only): {:.2} ms CPU", (cpu_s() - start) * 1e3);
    let n = reader.frames().len();
    let picks: Vec<u64> = (0..frames).map(|i| (i * n / frames) as u64).collect();
    let jpegs: Vec<Vec<u8>> = picks
        .iter()
        .map(|&i| reader.color_bytes(i))
        .collect::<Result<_, _>>()?;
    let mut it = jpegs.iter().cycle();
    let full = decode_jpeg(&jpegs[0], 1)?;
    let (w, h) = full.dimensions();
    let plan = SizeRule::default().plan(w, h);
    let roomplan_prep::geometry::ImageOp::Resize {
        width: tw,
        height: th,
    } = plan[0]
    else {
        panic!("the plan starts with a resize")
    };
    println!(
        "colour {w}×{h} → {tw}×{th}; {} frames, JPEG {:.0} KB on average",
        frames,
        jpegs.iter().map(Vec::len).sum::<usize>() as f64 / frames as f64 / 1e3
    );
    let reps = frames;
    time(
        "decode: image crate (zune-jpeg, runtime SIMD), full size",
        reps,
        || {
            image::load_from_memory_with_format(it.next().unwrap(), image::ImageFormat::Jpeg)
                .unwrap()
                .into_rgb8()
        },
    );
    for (label, simd) in [("SIMD", true), ("scalar", false)] {
        time(
            &format!("decode: zune-jpeg {label} path, full size"),
            reps,
            || zune_decode(it.next().unwrap(), simd),
        );
    }
    time("decode: libjpeg-turbo, full size", reps, || {
        decode_jpeg(it.next().unwrap(), 1).unwrap()
    });
    let denominator = draft_denominator(w, h, tw, th);
    let scaled = time(
        &format!("decode: libjpeg-turbo, DCT-scaled 1/{denominator} (Pillow's draft)"),
        reps,
        || decode_jpeg(it.next().unwrap(), denominator).unwrap(),
    );
    time(
        "resize: image crate CatmullRom, full → target",
        reps,
        || image::imageops::resize(&full, tw, th, image::imageops::FilterType::CatmullRom),
    );
    time(
        "resize: fast_image_resize CatmullRom, full → target",
        reps,
        || resize_rgb(&full, tw, th).unwrap(),
    );
    time(
        &format!(
            "resize: fast_image_resize CatmullRom, {}×{} → target",
            scaled.width(),
            scaled.height()
        ),
        reps,
        || resize_rgb(&scaled, tw, th).unwrap(),
    );
    // (DCT-scaled decoding through jpeg-decoder's `Decoder::scale` was measured here too and not
    // kept: BENCHMARKS.md, "Prep throughput".)
    let small = resize_rgb(&full, tw, th)?;
    time("encode: image crate JpegEncoder q90", reps, || {
        let mut out = Vec::new();
        small
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out, 90,
            ))
            .unwrap();
        out
    });
    time("encode: jpeg-encoder q90 4:2:0 (scalar)", reps, || {
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        let (w, h) = (small.width() as u16, small.height() as u16);
        encoder
            .encode(small.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    });
    time("encode: libjpeg-turbo q90 4:2:0", reps, || {
        encode_jpeg(&small, 90).unwrap()
    });
    let mut k = 0;
    time("depth: read + inflate (zlib-rs) into u16", reps, || {
        k = (k + 1) % picks.len();
        reader.decode_depth(picks[k]).unwrap()
    });
    let depth = reader.decode_depth(picks[0])?;
    time("depth: histogram", reps, || {
        let map = DepthMap::new(
            depth.width,
            depth.height,
            &depth.data,
            1.0 / depth.depth_shift as f64,
        )
        .unwrap();
        depth_histogram(&map, &DepthBins::default())
    });
    Ok(())
}
