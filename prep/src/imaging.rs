//! The pixel work of stored views: JPEG decoding (at full size or DCT-scaled), the bicubic
//! resampler and the JPEG encoder. Each one gives the same bytes on every CPU (x86-64 on any SIMD
//! path, aarch64 with NEON: `ci/aarch64.sh` runs this crate's tests there), and the codec is the
//! one Pillow bundles, with Pillow's settings, so that a view is what a Python pipeline on Pillow
//! (VGGT's preprocessing) would make — decoded and encoded byte for byte, resized within 1/255:
//!
//! - decoding and encoding: libjpeg-turbo (the `turbojpeg` crate, built from its bundled 3.1
//!   source; Pillow 13 bundles 3.2), accurate integer DCT, smooth chroma upsampling, baseline
//!   4:2:0 with standard Huffman tables — libjpeg's and Pillow's defaults. A view is decoded at the
//!   DCT scale Pillow's draft mode picks for its target size ([`draft_denominator`], 1/2 for
//!   ScanNet's 1296×968 → 518 or 392 wide; [`decode_jpeg_for_resize`]), then resized the rest of
//!   the way. Our decodes (full and draft) and our q90 encode equal Pillow 13's bytes
//!   (`tests::turbo_decoding_gives_pillows_bytes_full_and_draft`,
//!   `tests::turbo_encoding_gives_pillows_bytes`, fixtures from `tools/parity/pillow_jpeg.py`).
//!   libjpeg-turbo picks SIMD at run time (SSE2/AVX2, NEON); its SIMD DCTs, colour conversion,
//!   up- and downsampling, quantisation and Huffman coding are bit-exact with its C code, which
//!   `tests::turbo_simd_and_portable_paths_give_the_same_bytes` checks by rerunning itself with
//!   `JSIMD_FORCENONE=1` (portable C) and `JSIMD_FORCESSE2=1` (the env vars are read once per
//!   thread in `simd/*/jsimd.c`, so the forced runs are child processes). All of it is integer
//!   arithmetic, so the C compiler's optimisation level cannot change a byte either;
//! - resizing: `fast_image_resize`'s convolution with the Catmull-Rom kernel (Pillow's BICUBIC,
//!   a = −0.5, in fixed-point arithmetic like Pillow's), one axis at a time in Pillow's order: on
//!   noise within 1/255 of Pillow 13, with at most 1 % of the values (0.4–0.6 % in the fixtures)
//!   one step away, from the weights' rounding (`tests::resize_matches_pillow_bicubic_on_noise`,
//!   `tests/fixtures/pillow_bicubic`). It picks SIMD at run time (SSE4.1, AVX2, NEON);
//!   `tests::every_resize_path_gives_the_same_bytes` compares every path the running CPU has with
//!   the portable one.
//!
//! Weighed (CPU per 1296×968 frame of the synthetic set, `examples/prep_profile.rs`, BENCHMARKS.md
//! "Prep throughput"): libjpeg-turbo's 1/2 DCT-scaled decode ≈ 1.5 ms against ≈ 2.5 ms for
//! `zune-jpeg`'s full decode (the decoder until 2026-12-02; libjpeg-turbo's own full decode ≈ 3 ms),
//! and the resize from 648×484 costs ≈ 0.8 ms against ≈ 1.4 ms from full size; libjpeg-turbo's q90
//! encode of a 518×392 view ≈ 0.5 ms against ≈ 2.2 ms for `jpeg-encoder` (scalar). `jpeg-decoder`'s
//! DCT-scaled decode (7.3 ms) was weighed earlier and not kept.

use fast_image_resize::{
    self as fir, CpuExtensions, FilterType, PixelType, ResizeAlg, ResizeOptions,
};
use image::RgbImage;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImagingError {
    #[error("not a decodable JPEG: {0}")]
    Decode(String),
    #[error("cannot resize a {from_w}×{from_h} image to {to_w}×{to_h}: {reason}")]
    Resize {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
        reason: String,
    },
    #[error("cannot encode a {width}×{height} JPEG: {reason}")]
    Encode {
        width: u32,
        height: u32,
        reason: String,
    },
}

/// Bicubic (Catmull-Rom, Pillow's BICUBIC) resize of an RGB image, on the best SIMD path the CPU
/// has (the bytes do not depend on it; see the module doc).
pub fn resize_rgb(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, ImagingError> {
    resize_rgb_on(image, width, height, CpuExtensions::default())
}

/// [`resize_rgb`] on a chosen path (`CpuExtensions::None`: portable Rust), which must be supported.
pub fn resize_rgb_on(
    image: &RgbImage,
    width: u32,
    height: u32,
    path: CpuExtensions,
) -> Result<RgbImage, ImagingError> {
    let err = |reason: String| ImagingError::Resize {
        from_w: image.width(),
        from_h: image.height(),
        to_w: width,
        to_h: height,
        reason,
    };
    if !path.is_supported() {
        return Err(err(format!("this CPU lacks {path:?}")));
    }
    let mut resizer = fir::Resizer::new();
    // SAFETY: the path was checked to be supported by this CPU just above.
    unsafe { resizer.set_cpu_extensions(path) };
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut pass = |from: &[u8], (from_w, from_h): (u32, u32), (to_w, to_h): (u32, u32)| {
        let src = fir::images::ImageRef::new(from_w, from_h, from, PixelType::U8x3)
            .map_err(|e| err(e.to_string()))?;
        let mut dst = fir::images::Image::new(to_w, to_h, PixelType::U8x3);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| err(e.to_string()))?;
        Ok(dst.into_vec())
    };
    // Pillow resamples horizontally first and rounds that pass to u8 before the vertical one;
    // fast_image_resize, given both axes, runs the vertical pass first, which on detailed images
    // differs by up to 14/255 once intermediate values clip. Two one-axis passes in Pillow's
    // order come within 1/255 of Pillow (`resize_matches_pillow_bicubic_on_noise`), at about the
    // same cost.
    let (from_w, from_h) = image.dimensions();
    let bytes = if from_w != width && from_h != height {
        let wide = pass(image.as_raw(), (from_w, from_h), (width, from_h))?;
        pass(&wide, (width, from_h), (width, height))?
    } else {
        pass(image.as_raw(), (from_w, from_h), (width, height))?
    };
    RgbImage::from_raw(width, height, bytes).ok_or_else(|| err("short output buffer".to_string()))
}

/// The DCT scale Pillow's `Image.draft` picks for a `width × height` JPEG that is to become at
/// least `target_width × target_height`: the largest of 1/8, 1/4, 1/2 and 1 whose reduction keeps
/// both sides at least the target (`min(width // target_width, height // target_height)`, rounded
/// down to a power of two at most 8). Returns the denominator.
pub fn draft_denominator(width: u32, height: u32, target_width: u32, target_height: u32) -> u32 {
    let ratio = (width / target_width.max(1)).min(height / target_height.max(1));
    [8, 4, 2, 1].into_iter().find(|&d| ratio >= d).unwrap_or(1)
}

/// A JPEG's size from its header, without decoding it.
pub fn jpeg_size(bytes: &[u8]) -> Result<(u32, u32), ImagingError> {
    let header = turbojpeg::read_header(bytes).map_err(|e| ImagingError::Decode(e.to_string()))?;
    Ok((header.width as u32, header.height as u32))
}

/// Whether these bytes are a JPEG that libjpeg-turbo turns into RGB the way Pillow's
/// `Image.open(...).convert("RGB")` does: YCbCr, grayscale (replicated) or RGB. CMYK and YCCK
/// JPEGs, which Pillow converts itself, are not.
pub fn is_rgb_jpeg(bytes: &[u8]) -> bool {
    turbojpeg::read_header(bytes).is_ok_and(|header| {
        matches!(
            header.colorspace,
            turbojpeg::Colorspace::YCbCr | turbojpeg::Colorspace::Gray | turbojpeg::Colorspace::RGB
        )
    })
}

/// Decodes a JPEG as RGB with libjpeg-turbo, reduced by 1/`denominator` (1, 2, 4 or 8) inside its
/// inverse DCT as Pillow's draft mode does: each side becomes ⌈side / denominator⌉. Accurate
/// integer IDCT and smooth ("fancy") chroma upsampling, libjpeg's defaults and Pillow's.
pub fn decode_jpeg(bytes: &[u8], denominator: u32) -> Result<RgbImage, ImagingError> {
    let err = |e: turbojpeg::Error| ImagingError::Decode(e.to_string());
    let mut decompressor = turbojpeg::Decompressor::new().map_err(err)?;
    let factor = turbojpeg::ScalingFactor::new(1, denominator as usize);
    decompressor.set_scaling_factor(factor).map_err(err)?;
    let header = decompressor.read_header(bytes).map_err(err)?.scaled(factor);
    let (width, height) = (header.width, header.height);
    let mut pixels = vec![0u8; width * height * 3];
    let image = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    decompressor.decompress(bytes, image).map_err(err)?;
    RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| ImagingError::Decode("short output buffer".to_string()))
}

/// A JPEG decoded for a resize, and the size its header gives.
pub struct DecodedForResize {
    /// The pixels, `full_size` reduced by 1/`denominator` on both sides.
    pub image: RgbImage,
    pub full_size: (u32, u32),
    pub denominator: u32,
}

/// Decodes a JPEG that is to be resized to `target_width × target_height` (a downscale by a
/// factor of at least 2 on both sides is what makes a reduction possible): at the DCT scale
/// Pillow's draft mode picks ([`draft_denominator`]), lowered to one that divides both sides
/// exactly, so that the reduced pixel grid is exactly the full one scaled (Pillow would also
/// reduce a 1297-pixel side to ⌈1297/2⌉; ScanNet's 1296×968 divides). The caller resizes the
/// rest of the way (`geometry::CameraImage::apply_all_from_reduced`).
pub fn decode_jpeg_for_resize(
    bytes: &[u8],
    target_width: u32,
    target_height: u32,
) -> Result<DecodedForResize, ImagingError> {
    let (width, height) = jpeg_size(bytes)?;
    let mut denominator = draft_denominator(width, height, target_width, target_height);
    while width % denominator != 0 || height % denominator != 0 {
        denominator /= 2;
    }
    let image = decode_jpeg(bytes, denominator)?;
    if image.dimensions() != (width / denominator, height / denominator) {
        return Err(ImagingError::Decode(format!(
            "a {width}×{height} JPEG decoded at 1/{denominator} to {}×{}",
            image.width(),
            image.height()
        )));
    }
    Ok(DecodedForResize {
        image,
        full_size: (width, height),
        denominator,
    })
}

/// Encodes an RGB image as a baseline JPEG (4:2:0, accurate integer DCT, standard Huffman
/// tables) with libjpeg-turbo.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, ImagingError> {
    let (width, height) = image.dimensions();
    let err = |e: turbojpeg::Error| ImagingError::Encode {
        width,
        height,
        reason: e.to_string(),
    };
    let mut compressor = turbojpeg::Compressor::new().map_err(err)?;
    compressor.set_quality(quality as i32).map_err(err)?;
    compressor
        .set_subsamp(turbojpeg::Subsamp::Sub2x2)
        .map_err(err)?;
    let source = turbojpeg::Image {
        pixels: image.as_raw().as_slice(),
        width: width as usize,
        pitch: width as usize * 3,
        height: height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    compressor.compress_to_vec(source).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth picture with edges and noise, so that every filter tap and rounding matters
    /// (`picture` in tools/parity/pillow_jpeg.py draws the same).
    fn picture(width: u32, height: u32) -> RgbImage {
        let mut state = 0x9e37_79b9_u32;
        RgbImage::from_fn(width, height, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 32) as u8;
            let edge = if (x / 17 + y / 11) % 2 == 0 { 180 } else { 20 };
            image::Rgb([
                (x * 255 / width.max(1)) as u8 / 2 + noise,
                edge + noise / 2,
                ((x + 2 * y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn every_resize_path_gives_the_same_bytes() {
        let mut paths = vec![CpuExtensions::None];
        #[cfg(target_arch = "x86_64")]
        paths.extend([CpuExtensions::Sse4_1, CpuExtensions::Avx2]);
        #[cfg(target_arch = "aarch64")]
        paths.push(CpuExtensions::Neon);
        let paths: Vec<_> = paths.into_iter().filter(|p| p.is_supported()).collect();
        // Down (the prep case, odd sizes included), up, and one axis only.
        for (src, dst) in [
            ((648, 484), (518, 392)),
            ((1296, 968), (518, 392)),
            ((331, 247), (113, 85)),
            ((64, 48), (200, 150)),
            ((300, 200), (300, 77)),
        ] {
            let image = picture(src.0, src.1);
            let portable = resize_rgb_on(&image, dst.0, dst.1, CpuExtensions::None).unwrap();
            assert_eq!(portable.dimensions(), dst);
            for &path in &paths {
                let fast = resize_rgb_on(&image, dst.0, dst.1, path).unwrap();
                assert!(
                    fast.as_raw() == portable.as_raw(),
                    "{path:?} differs from the portable path for {src:?} → {dst:?}"
                );
            }
            assert_eq!(
                resize_rgb(&image, dst.0, dst.1).unwrap().as_raw(),
                portable.as_raw()
            );
        }
        eprintln!("resize paths compared: {paths:?}");
    }

    #[test]
    fn resize_follows_pillow_bicubic_on_a_ramp() {
        // A horizontal ramp halved: Pillow's BICUBIC gives (for this 8-pixel ramp 0, 32, …, 224)
        // the values below (Image.frombytes('L', (8, 1), …).convert('RGB').resize((4, 1), BICUBIC)).
        let ramp = RgbImage::from_fn(8, 1, |x, _| image::Rgb([(x * 32) as u8; 3]));
        let half = resize_rgb_on(&ramp, 4, 1, CpuExtensions::None).unwrap();
        let red: Vec<u8> = half.pixels().map(|p| p[0]).collect();
        assert_eq!(red, PILLOW_RAMP_HALF);
    }

    /// Pillow 13.0 output for the ramp above (/work/venv-bench at the time of writing).
    const PILLOW_RAMP_HALF: [u8; 4] = [17, 79, 145, 207];

    /// The noise `tools/parity/pillow_bicubic.py` resizes (the same xorshift32 stream).
    fn noise_rgb(width: u32, height: u32) -> RgbImage {
        let mut state: u32 = 0x9E37_79B9;
        let bytes = (0..width * height * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        RgbImage::from_raw(width, height, bytes).unwrap()
    }

    #[test]
    fn resize_matches_pillow_bicubic_on_noise() {
        // Pillow's own output (tests/fixtures/pillow_bicubic, Pillow 13.0) for noise, the hardest
        // input for a resampler: downscales like VGGT's 640×480 → 518×392 and 1296×968 → 518×388
        // at 1/5 size, an upscale, and odd sizes. fast_image_resize rounds its fixed-point filter
        // weights a little differently from Pillow (16-bit against Pillow's 22-bit precision), so
        // a few values land one step away; before the passes ran in Pillow's order, 29 % of the
        // values differed, by up to 14.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pillow_bicubic");
        for (src, dst) in [
            ((128, 96), (104, 78)),
            ((259, 194), (104, 78)),
            ((40, 30), (104, 78)),
            ((97, 61), (33, 47)),
        ] {
            let name = format!("{}x{}_to_{}x{}.rgb", src.0, src.1, dst.0, dst.1);
            let pillow = std::fs::read(dir.join(&name)).unwrap();
            let ours = resize_rgb(&noise_rgb(src.0, src.1), dst.0, dst.1).unwrap();
            assert_eq!(ours.as_raw().len(), pillow.len(), "{name}");
            let differing = ours
                .as_raw()
                .iter()
                .zip(&pillow)
                .filter(|(a, b)| a != b)
                .count();
            let max = ours
                .as_raw()
                .iter()
                .zip(&pillow)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap();
            eprintln!(
                "{name}: {differing} of {} values differ, by at most {max}",
                pillow.len()
            );
            assert!(max <= 1, "{name}: a value differs from Pillow's by {max}");
            assert!(
                differing * 100 <= pillow.len(),
                "{name}: {differing} values differ from Pillow's"
            );
        }
    }

    #[test]
    fn the_encoder_gives_the_same_bytes_for_the_same_pixels() {
        let image = picture(70, 42);
        let a = encode_jpeg(&image, 90).unwrap();
        assert_eq!(a, encode_jpeg(&image, 90).unwrap());
        assert_eq!(&a[..2], &[0xFF, 0xD8]);
        let back = decode_jpeg(&a, 1).unwrap();
        assert_eq!(back.dimensions(), (70, 42));
        assert_eq!(decode_jpeg(&a, 2).unwrap().dimensions(), (35, 21));
        let bad = decode_jpeg(b"not a jpeg", 1).unwrap_err();
        assert!(matches!(bad, ImagingError::Decode(_)), "{bad}");
        assert!(matches!(decode_jpeg(&a, 3), Err(ImagingError::Decode(_))));
    }

    fn pillow_jpeg_fixture(name: &str) -> Vec<u8> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pillow_jpeg");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A fixture stem, its picture's size and the sizes asked of Pillow's draft mode.
    type PillowJpegCase = (&'static str, (u32, u32), &'static [(u32, u32)]);

    /// The cases of tools/parity/pillow_jpeg.py.
    const PILLOW_JPEG_CASES: [PillowJpegCase; 2] = [
        (
            "picture_203x151",
            (203, 151),
            &[(101, 75), (50, 37), (25, 18)],
        ),
        ("picture_97x61", (97, 61), &[(48, 30)]),
    ];

    #[test]
    fn turbo_decoding_gives_pillows_bytes_full_and_draft() {
        for (stem, (w, h), drafts) in PILLOW_JPEG_CASES {
            let jpeg = pillow_jpeg_fixture(&format!("{stem}.jpg"));
            assert_eq!(jpeg_size(&jpeg).unwrap(), (w, h));
            let full = decode_jpeg(&jpeg, 1).unwrap();
            assert_eq!(full.dimensions(), (w, h));
            assert!(
                full.as_raw() == &pillow_jpeg_fixture(&format!("{stem}_full.rgb")),
                "{stem}: full decode differs from Pillow's"
            );
            for &(tw, th) in drafts {
                let denominator = draft_denominator(w, h, tw, th);
                let scaled = decode_jpeg(&jpeg, denominator).unwrap();
                assert_eq!(
                    scaled.dimensions(),
                    (w.div_ceil(denominator), h.div_ceil(denominator))
                );
                assert!(
                    scaled.as_raw() == &pillow_jpeg_fixture(&format!("{stem}_draft_{tw}x{th}.rgb")),
                    "{stem}: 1/{denominator} decode (draft {tw}×{th}) differs from Pillow's"
                );
            }
        }
    }

    #[test]
    fn only_jpegs_pillow_reads_as_rgb_go_to_libjpeg_turbo() {
        let picture = pillow_jpeg_fixture("picture_97x61.jpg");
        assert!(is_rgb_jpeg(&picture));
        let gray = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([(x * 16 + y) as u8]));
        let mut gray_jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut gray_jpeg, 90)
            .encode_image(&gray)
            .unwrap();
        assert!(is_rgb_jpeg(&gray_jpeg));
        let mut png = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(!is_rgb_jpeg(&png));
        let cmyk = [10u8, 200, 30, 0].repeat(8 * 8);
        let mut compressor = turbojpeg::Compressor::new().unwrap();
        let cmyk_jpeg = compressor
            .compress_to_vec(turbojpeg::Image {
                pixels: cmyk.as_slice(),
                width: 8,
                pitch: 8 * 4,
                height: 8,
                format: turbojpeg::PixelFormat::CMYK,
            })
            .unwrap();
        let colorspace = turbojpeg::read_header(&cmyk_jpeg).unwrap().colorspace;
        assert!(matches!(
            colorspace,
            turbojpeg::Colorspace::YCCK | turbojpeg::Colorspace::CMYK
        ));
        assert!(!is_rgb_jpeg(&cmyk_jpeg));
    }

    #[test]
    fn draft_denominator_follows_pillow() {
        // Pillow: scale = min(W // w, H // h), then the first of 8, 4, 2, 1 not above it.
        assert_eq!(draft_denominator(1296, 968, 518, 392), 2);
        assert_eq!(draft_denominator(1296, 968, 392, 294), 2);
        assert_eq!(draft_denominator(1296, 968, 518, 518), 1);
        assert_eq!(draft_denominator(640, 480, 518, 392), 1);
        assert_eq!(draft_denominator(1920, 1440, 518, 392), 2);
        assert_eq!(draft_denominator(1920, 1440, 224, 168), 8);
        assert_eq!(draft_denominator(1920, 1440, 300, 200), 4);
        assert_eq!(draft_denominator(203, 151, 25, 18), 8);
        assert_eq!(draft_denominator(100, 100, 0, 0), 8);
    }

    #[test]
    fn turbo_encoding_gives_pillows_bytes() {
        for (stem, (w, h), _) in PILLOW_JPEG_CASES {
            let ours = encode_jpeg(&picture(w, h), 90).unwrap();
            let pillow = pillow_jpeg_fixture(&format!("{stem}.jpg"));
            assert!(
                ours == pillow,
                "{stem}: {} bytes against Pillow's {}",
                ours.len(),
                pillow.len()
            );
        }
    }

    #[test]
    fn a_dct_scaled_decode_lines_up_with_the_full_one() {
        // Smooth waves (up to ≈ 16 levels per pixel): resizing the 1/2 decode and the full decode
        // to the same size must agree closely; a half-pixel misalignment of the reduced grid
        // would cost several levels on average.
        let (w, h) = (400, 300);
        let wave = |t: f64| (128.0 + 100.0 * (t * std::f64::consts::TAU / 40.0).sin()) as u8;
        let smooth = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([wave(x as f64), wave(y as f64), wave((x + y) as f64 * 0.7)])
        });
        let jpeg = encode_jpeg(&smooth, 95).unwrap();
        let decoded = decode_jpeg_for_resize(&jpeg, 160, 120).unwrap();
        assert_eq!((decoded.denominator, decoded.full_size), (2, (w, h)));
        assert_eq!(decoded.image.dimensions(), (200, 150));
        let via_half = resize_rgb(&decoded.image, 160, 120).unwrap();
        let via_full = resize_rgb(&decode_jpeg(&jpeg, 1).unwrap(), 160, 120).unwrap();
        let diffs: Vec<u32> = via_half
            .as_raw()
            .iter()
            .zip(via_full.as_raw())
            .map(|(&a, &b)| a.abs_diff(b) as u32)
            .collect();
        let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        let signed: f64 = via_half
            .as_raw()
            .iter()
            .zip(via_full.as_raw())
            .map(|(&a, &b)| a as f64 - b as f64)
            .sum::<f64>()
            / diffs.len() as f64;
        eprintln!(
            "1/2 then resize against full then resize: mean |Δ| {mean:.3}, mean Δ {signed:.3}"
        );
        assert!(
            mean < 1.5 && signed.abs() < 0.5,
            "mean |Δ| {mean}, mean Δ {signed}"
        );
        // Sides the denominator does not divide fall back to a smaller one (here: none).
        let odd = encode_jpeg(&picture(401, 300), 90).unwrap();
        let decoded = decode_jpeg_for_resize(&odd, 160, 120).unwrap();
        assert_eq!(
            (decoded.denominator, decoded.image.dimensions()),
            (1, (401, 300))
        );
        // A target above half the size: no reduction.
        let decoded = decode_jpeg_for_resize(&jpeg, 201, 150).unwrap();
        assert_eq!(decoded.denominator, 1);
    }

    /// sha256 (hex, first 16 digits) of every libjpeg-turbo output the SIMD test compares: full and
    /// DCT-scaled decodes of 4:2:0, 4:2:2, 4:4:4 and greyscale JPEGs, and encodes at three
    /// qualities, on sizes with partial MCUs.
    fn turbo_digests() -> Vec<String> {
        use sha2::{Digest, Sha256};
        let digest = |bytes: &[u8]| hex::encode(&Sha256::digest(bytes)[..8]);
        let mut out = Vec::new();
        let mut sources = vec![pillow_jpeg_fixture("picture_203x151.jpg")];
        let big = picture(1297, 969);
        for subsamp in [
            turbojpeg::Subsamp::Sub2x2,
            turbojpeg::Subsamp::Sub2x1,
            turbojpeg::Subsamp::None,
            turbojpeg::Subsamp::Gray,
        ] {
            let mut compressor = turbojpeg::Compressor::new().unwrap();
            compressor.set_quality(85).unwrap();
            compressor.set_subsamp(subsamp).unwrap();
            let jpeg = compressor
                .compress_to_vec(turbojpeg::Image {
                    pixels: big.as_raw().as_slice(),
                    width: 1297,
                    pitch: 1297 * 3,
                    height: 969,
                    format: turbojpeg::PixelFormat::RGB,
                })
                .unwrap();
            out.push(format!("source {subsamp:?} {}", digest(&jpeg)));
            sources.push(jpeg);
        }
        for (i, jpeg) in sources.iter().enumerate() {
            for denominator in [1, 2, 4, 8] {
                let image = decode_jpeg(jpeg, denominator).unwrap();
                out.push(format!(
                    "decode {i} 1/{denominator} {}",
                    digest(image.as_raw())
                ));
            }
        }
        for quality in [60, 90, 100] {
            for size in [(518, 392), (97, 61)] {
                let jpeg = encode_jpeg(&picture(size.0, size.1), quality).unwrap();
                out.push(format!("encode {size:?} q{quality} {}", digest(&jpeg)));
            }
        }
        out
    }

    /// libjpeg-turbo picks SIMD at run time (AVX2 or SSE2 on x86-64, NEON on aarch64) and reads
    /// `JSIMD_FORCENONE=1` (portable C) or `JSIMD_FORCESSE2=1` once per thread. This test reruns
    /// itself in child processes with those set and compares every output's digest with its own.
    #[test]
    fn turbo_simd_and_portable_paths_give_the_same_bytes() {
        const CHILD: &str = "ROOMPLAN_TURBO_DIGESTS_CHILD";
        const TEST: &str = "imaging::tests::turbo_simd_and_portable_paths_give_the_same_bytes";
        let ours = turbo_digests();
        if std::env::var_os(CHILD).is_some() {
            for line in &ours {
                println!("digest: {line}");
            }
            return;
        }
        let mut forced = vec!["JSIMD_FORCENONE"];
        if cfg!(target_arch = "x86_64") {
            forced.push("JSIMD_FORCESSE2");
        }
        for var in forced {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD, "1")
                .env(var, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&child.stdout);
            assert!(child.status.success(), "{var} child failed:\n{stdout}");
            let theirs: Vec<String> = stdout
                .lines()
                // (libtest's "test … " line has no newline before the test's first output.)
                .filter_map(|l| l.split_once("digest: "))
                .map(|(_, d)| d.to_string())
                .collect();
            assert_eq!(theirs.len(), ours.len(), "{var} child printed:\n{stdout}");
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!(a, b, "{var}=1 gives other bytes");
            }
            eprintln!("{var}=1: {} outputs identical", theirs.len());
        }
    }
}
