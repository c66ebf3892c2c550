//! The pixel work of stored views: JPEG decoding, the bicubic resampler and the JPEG encoder.
//! Each one gives the same bytes on every CPU (issue 11):
//!
//! - decoding: `zune-jpeg`. It picks SIMD at run time (AVX2 on x86-64); its SIMD IDCT and colour
//!   conversion are integer ports of its scalar ones, and `tests::zune_paths_give_the_same_bytes`
//!   compares the two paths on the running CPU;
//! - resizing: `fast_image_resize`'s convolution with the Catmull-Rom kernel (Pillow's BICUBIC,
//!   a = −0.5, in Pillow's fixed-point arithmetic), one axis at a time in Pillow's order, so the
//!   bytes are Pillow's (`tests::resize_matches_pillow_bicubic_on_noise`, against Pillow 13 output
//!   in `tests/fixtures/pillow_bicubic`). It picks SIMD at run time (SSE4.1, AVX2, NEON);
//!   `tests::every_resize_path_gives_the_same_bytes` compares every path the running CPU has with
//!   the portable one;
//! - encoding: `jpeg-encoder` without its `simd` feature (no AVX2 path), baseline, 4:2:0.
//!
//! Weighed and not kept: DCT-scaled decoding (libjpeg's, Pillow's draft mode) through
//! `jpeg-decoder`'s `Decoder::scale`. Its 1/2-scale decode of a 1296×968 frame took 7.3 ms CPU
//! against 2.7 ms for zune-jpeg's full decode, and resizing from full size costs only 0.3 ms more
//! (BENCHMARKS.md, "Prep throughput"); it also starts a thread per colour component per image.

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
    // order give Pillow's bytes (`resize_matches_pillow_bicubic_on_noise`), at about the same cost.
    let (from_w, from_h) = image.dimensions();
    let bytes = if from_w != width && from_h != height {
        let wide = pass(image.as_raw(), (from_w, from_h), (width, from_h))?;
        pass(&wide, (width, from_h), (width, height))?
    } else {
        pass(image.as_raw(), (from_w, from_h), (width, height))?
    };
    RgbImage::from_raw(width, height, bytes).ok_or_else(|| err("short output buffer".to_string()))
}

/// Encodes an RGB image as a baseline JPEG (4:2:0); the same pixels always give the same bytes.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, ImagingError> {
    let (width, height) = image.dimensions();
    let err = |reason: String| ImagingError::Encode {
        width,
        height,
        reason,
    };
    let (w, h) = (
        u16::try_from(width).map_err(|_| err("wider than 65535".into()))?,
        u16::try_from(height).map_err(|_| err("taller than 65535".into()))?,
    );
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder
        .encode(image.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| err(e.to_string()))?;
    Ok(out)
}

/// Decodes a JPEG as RGB at full size with `zune-jpeg`: on its SIMD path (AVX2 on x86-64) when
/// `simd`, else on its portable scalar path. Its SIMD IDCT and colour conversion are integer ports
/// of the scalar ones (`tests::zune_paths_give_the_same_bytes` compares them here).
pub fn decode_jpeg_full(bytes: &[u8], simd: bool) -> Result<RgbImage, ImagingError> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let options = DecoderOptions::new_safe()
        .set_use_unsafe(simd)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder
        .decode()
        .map_err(|e| ImagingError::Decode(format!("{e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| ImagingError::Decode("no frame header".to_string()))?;
    let (width, height) = (info.width as u32, info.height as u32);
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| {
        ImagingError::Decode(format!(
            "the decoder gave too few pixels for {width}×{height}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth picture with edges and noise, so that every filter tap and rounding matters.
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
    fn zune_paths_give_the_same_bytes() {
        for quality in [60, 90, 100] {
            let jpeg = encode_jpeg(&picture(333, 215), quality).unwrap();
            let scalar = decode_jpeg_full(&jpeg, false).unwrap();
            let fast = decode_jpeg_full(&jpeg, true).unwrap();
            assert_eq!(scalar.dimensions(), (333, 215));
            assert!(
                scalar.as_raw() == fast.as_raw(),
                "quality {quality}: SIMD and scalar decodes differ"
            );
        }
    }

    #[test]
    fn the_encoder_gives_the_same_bytes_for_the_same_pixels() {
        let image = picture(70, 42);
        let a = encode_jpeg(&image, 90).unwrap();
        assert_eq!(a, encode_jpeg(&image, 90).unwrap());
        assert_eq!(&a[..2], &[0xFF, 0xD8]);
        let back = decode_jpeg_full(&a, false).unwrap();
        assert_eq!(back.dimensions(), (70, 42));
        assert!(matches!(
            decode_jpeg_full(b"not a jpeg", true),
            Err(ImagingError::Decode(_))
        ));
    }
}
