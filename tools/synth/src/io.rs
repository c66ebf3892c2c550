//! File output: complete-or-absent writes and the digest of an output tree.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary sibling and a rename, so readers never see a
/// partial file. Parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().context("output path has no parent folder")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp"));
    {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Pretty JSON with a trailing newline.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Every file under `root`, as '/'-separated paths relative to it, sorted bytewise.
pub fn list_tree(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .map(|r| {
                    r.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .with_context(|| format!("{} is not under {}", p.display(), root.display()))
        })
        .collect::<Result<_>>()?;
    rel.sort();
    Ok(rel)
}

/// Digest of a tree: sha256 over the lines `<sha256 of file>  <relative path>\n` (the
/// `sha256sum` format) for every file, in bytewise path order. Also returns file count and bytes.
pub fn tree_digest(root: &Path) -> Result<(String, usize, u64)> {
    let files = list_tree(root)?;
    let mut total = Sha256::new();
    let mut bytes = 0u64;
    for rel in &files {
        let data = fs::read(root.join(rel)).with_context(|| format!("reading {rel}"))?;
        bytes += data.len() as u64;
        total.update(format!("{}  {rel}\n", hex::encode(Sha256::digest(&data))));
    }
    Ok((hex::encode(total.finalize()), files.len(), bytes))
}

/// Baseline JPEG, quality 90, of row-major RGB8.
pub fn jpeg_bytes(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
        .context("encoding JPEG")?;
    Ok(out)
}

/// PNG of row-major RGB8.
pub fn png_rgb_bytes(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .context("encoding PNG")?;
    Ok(out)
}

/// Single-channel 16-bit PNG (depth in millimetres).
pub fn png_u16_bytes(values: &[u16], width: u32, height: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    // The encoder takes native-endian samples and writes PNG's big-endian itself.
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&raw, width, height, image::ExtendedColorType::L16)
        .context("encoding 16-bit PNG")?;
    Ok(out)
}
