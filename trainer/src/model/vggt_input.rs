//! Images into VGGT: the official `load_and_preprocess_images(paths, mode="crop")` for raw image
//! files (MODEL_NOTES §1.5), and decoding of the views stored in shards (already at that size).
//!
//! Both end in [`stack_images`]: a `[S, 3, H, W]` f32 tensor in [0, 1] (bytes / 255, like
//! torchvision's `ToTensor`). The size rule is `roomplan_prep::geometry::SizeRule`, the same code that
//! sized the stored images, so prep and train cannot disagree on it. Decoding and resampling are
//! prep's (`roomplan_prep::imaging`): JPEGs are decoded by libjpeg-turbo with Pillow's settings, to
//! Pillow 13's bytes ([`decode_image`]); resizing is PIL's BICUBIC (Catmull-Rom, a = −0.5) one axis
//! at a time in Pillow's order, within 1/255 of Pillow 13 with 0.4–0.6 % of the values one step
//! away on noise (`imaging::tests::resize_matches_pillow_bicubic_on_noise`). Parity tests still
//! feed the aggregator tensors directly.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use roomplan_prep::geometry::{ImageOp, ImageOpError, SizeRule};
use roomplan_prep::imaging::{self, ImagingError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VggtInputError {
    #[error("{path}: cannot read the image: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: cannot decode the image: {source}")]
    Decode { what: String, source: DecodeError },
    #[error("{what}: {source}")]
    Resize { what: String, source: ImageOpError },
    #[error("no images to stack")]
    Empty,
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Why an image's bytes could not be decoded, by the library that tried.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Jpeg(#[from] ImagingError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// Decodes an image file's bytes to RGB as `PIL.Image.open(...).convert("RGB")` does for VGGT:
/// a JPEG in YCbCr, grayscale or RGB with libjpeg-turbo at full size, the library Pillow bundles
/// with its settings, so the pixels are Pillow's bytes (`imaging::decode_jpeg`); anything else
/// (PNG, CMYK JPEG) with `image`, any alpha composited onto white ([`rgb_over_white`]).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    if imaging::is_rgb_jpeg(bytes) {
        Ok(imaging::decode_jpeg(bytes, 1)?)
    } else {
        Ok(rgb_over_white(image::load_from_memory(bytes)?))
    }
}

/// RGB with any alpha composited onto white, as VGGT does before converting RGBA to RGB.
/// Per channel `round((c·a + 255·(255 − a)) / 255)`, which equals Pillow's `alpha_composite` onto
/// opaque white for all 256 × 256 pairs (c, a) (checked by hand against Pillow 12).
pub fn rgb_over_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = a as u32;
        let over = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// Resize (and centre-crop when too tall) one image by `rule`; `what` names it in errors.
pub fn preprocess_crop(
    image: &RgbImage,
    rule: &SizeRule,
    what: &str,
) -> Result<RgbImage, VggtInputError> {
    let mut out = image.clone();
    for op in rule.plan(image.width(), image.height()) {
        out = apply(&op, &out, what)?;
    }
    Ok(out)
}

fn apply(op: &ImageOp, image: &RgbImage, what: &str) -> Result<RgbImage, VggtInputError> {
    op.apply_pixels(image)
        .map_err(|source| VggtInputError::Resize {
            what: what.to_string(),
            source,
        })
}

/// `load_and_preprocess_images(paths, mode="crop")`: read each file (PNG or JPEG), composite alpha
/// onto white ([`decode_image`]), size it by `rule` (VGGT's: `SizeRule::default()`), and stack.
pub fn load_and_preprocess_images<P: AsRef<Path>>(
    paths: &[P],
    rule: &SizeRule,
    device: &Device,
) -> Result<Tensor, VggtInputError> {
    let images = paths
        .iter()
        .map(|path| {
            let path = path.as_ref();
            let what = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|source| VggtInputError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let image = decode_image(&bytes).map_err(|source| VggtInputError::Decode {
                what: what.clone(),
                source,
            })?;
            preprocess_crop(&image, rule, &what)
        })
        .collect::<Result<Vec<_>, _>>()?;
    stack_images(&images, device)
}

/// Decode an image stored in a shard view (JPEG or PNG bytes); `what` names the view in errors.
pub fn decode_stored_image(bytes: &[u8], what: &str) -> Result<RgbImage, VggtInputError> {
    decode_image(bytes).map_err(|source| VggtInputError::Decode {
        what: what.to_string(),
        source,
    })
}

/// Stack images into `[S, 3, H, W]` in [0, 1]. Images of different sizes are padded with white (1.0)
/// to the largest height and width, centred with the odd pixel at the bottom/right, as VGGT does.
pub fn stack_images(images: &[RgbImage], device: &Device) -> Result<Tensor, VggtInputError> {
    let height = images
        .iter()
        .map(|i| i.height())
        .max()
        .ok_or(VggtInputError::Empty)? as usize;
    let width = images.iter().map(|i| i.width()).max().unwrap_or(0) as usize;
    let plane = height * width;
    let mut data = vec![1.0f32; images.len() * 3 * plane];
    for (s, image) in images.iter().enumerate() {
        let top = (height - image.height() as usize) / 2;
        let left = (width - image.width() as usize) / 2;
        for (x, y, pixel) in image.enumerate_pixels() {
            let at = (top + y as usize) * width + left + x as usize;
            for (c, value) in pixel.0.iter().enumerate() {
                data[(s * 3 + c) * plane + at] = *value as f32 / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, height, width),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba, RgbaImage};

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        })
    }

    #[test]
    fn alpha_is_composited_onto_white() {
        let mut rgba = RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, Rgba([200, 100, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([200, 100, 0, 255]));
        rgba.put_pixel(2, 0, Rgba([200, 100, 0, 128]));
        let rgb = rgb_over_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [200, 100, 0]);
        // (200·128 + 255·127) / 255 = 227.4 → 227; (100·128 + 255·127) / 255 = 177.2 → 177; 127.
        assert_eq!(rgb.get_pixel(2, 0).0, [227, 177, 127]);
    }

    #[test]
    fn stored_sizes_follow_the_crop_rule() {
        let rule = SizeRule::default();
        let cases = [
            ((1296, 968), (518, 392)),
            ((640, 480), (518, 392)),
            ((480, 640), (518, 518)),
        ];
        for ((w, h), expected) in cases {
            let out = preprocess_crop(&gradient(w, h), &rule, "case").unwrap();
            assert_eq!(out.dimensions(), expected, "{w}×{h}");
        }
    }

    #[test]
    fn constant_images_keep_their_colour_and_scale_to_unit_range() {
        let image = RgbImage::from_pixel(300, 200, Rgb([10, 128, 255]));
        let out = preprocess_crop(&image, &SizeRule::default(), "flat").unwrap();
        let t = stack_images(&[out], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 350, 518]); // round(200·518/300/14) = round(24.67) = 25 → 350
        for (c, expected) in [10.0f32, 128.0, 255.0].iter().enumerate() {
            let plane = t.get(0).unwrap().get(c).unwrap().flatten_all().unwrap();
            let (lo, hi) = (
                plane.min(0).unwrap().to_scalar::<f32>().unwrap(),
                plane.max(0).unwrap().to_scalar::<f32>().unwrap(),
            );
            assert!(
                (lo - expected / 255.0).abs() < 1e-6 && (hi - lo) < 1e-6,
                "channel {c}"
            );
        }
    }

    #[test]
    fn mixed_sizes_are_padded_white_and_centred() {
        let a = RgbImage::from_pixel(4, 2, Rgb([0, 0, 0]));
        let b = RgbImage::from_pixel(5, 5, Rgb([51, 51, 51]));
        let t = stack_images(&[a, b], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 5, 5]);
        // a: top = (5 − 2) / 2 = 1, left = (5 − 4) / 2 = 0; rows 0, 3, 4 and column 4 stay white.
        let red: Vec<Vec<f32>> = t.get(0).unwrap().get(0).unwrap().to_vec2().unwrap();
        let expected_row = [0.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(red[0], [1.0; 5]);
        assert_eq!(red[1], expected_row);
        assert_eq!(red[2], expected_row);
        assert_eq!(red[3], [1.0; 5]);
        assert_eq!(red[4], [1.0; 5]);
        let b_red: Vec<Vec<f32>> = t.get(1).unwrap().get(0).unwrap().to_vec2().unwrap();
        assert!(b_red.iter().flatten().all(|v| *v == 0.2));
        assert!(matches!(
            stack_images(&[], &Device::Cpu),
            Err(VggtInputError::Empty)
        ));
    }

    #[test]
    fn jpegs_decode_to_pillows_bytes() {
        // Pillow 13's `Image.open(path).convert("RGB")` of these JPEGs (tools/parity/pillow_jpeg.py).
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../prep/tests/fixtures/pillow_jpeg");
        let read = |name: &str| {
            std::fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        for stem in ["picture_203x151", "picture_97x61"] {
            let jpeg = read(&format!("{stem}.jpg"));
            let pillow = read(&format!("{stem}_full.rgb"));
            let ours = decode_stored_image(&jpeg, stem).unwrap();
            assert!(
                ours.as_raw() == &pillow,
                "{stem}: differs from Pillow's decode"
            );
            // `image`'s own decoder (used here until 2026-12) does not give Pillow's bytes: this
            // test tells the two apart.
            let other = image::load_from_memory(&jpeg).unwrap().into_rgb8();
            let max_diff = other
                .as_raw()
                .iter()
                .zip(&pillow)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert!(
                max_diff > Some(0),
                "{stem}: image's decoder now equals Pillow's"
            );
        }
    }

    #[test]
    fn files_load_like_vggt_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let landscape = dir.path().join("landscape.png");
        let portrait = dir.path().join("portrait.jpg");
        gradient(640, 480).save(&landscape).unwrap();
        gradient(240, 320).save(&portrait).unwrap();
        let t = load_and_preprocess_images(
            &[&landscape, &portrait],
            &SizeRule::default(),
            &Device::Cpu,
        )
        .unwrap();
        // 518×392 and 518×518 (690.67 → 686, cropped): padded to the larger.
        assert_eq!(t.dims(), &[2, 3, 518, 518]);
        let lo = t
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let hi = t
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));

        let missing = dir.path().join("missing.png");
        let err = load_and_preprocess_images(&[&missing], &SizeRule::default(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read the image", missing.display())),
            "{err}"
        );
        let err = decode_stored_image(b"not an image", "scene0000_00 view 3")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("scene0000_00 view 3: cannot decode the image"),
            "{err}"
        );
    }
}
