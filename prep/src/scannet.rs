//! ScanNet v2 raw readers (FORMATS.md §1): the `.sens` v4 stream, the SensReader export folders,
//! the scan metadata `<scene>.txt` and the `<scene>_vh_clean_2.ply` mesh.
//!
//! Every parser returns [`ScanNetError`] naming the file, the record and what was expected; none
//! panics on arbitrary bytes (see the proptests in `prep/tests/scannet_parsers.rs`).
//!
//! A scan folder (`scans/<scene>/`) is read through [`ScanSource`], which picks the raw `.sens`
//! when present and the export folders (`color/ depth/ pose/ intrinsic/`) otherwise. The `.sens`
//! is streamed: its frame headers are indexed once (seeking over payloads), and only the frames
//! asked for are decoded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::imaging::{decode_jpeg, decode_jpeg_for_resize, jpeg_size, ImagingError};

use crate::geometry::{
    depth_histogram, encode_jpeg, mat4_to_row_major, select_coverage, select_uniform, validate_pose, visible_voxels,
    validate_intrinsics, validate_intrinsics4, CameraImage, CoverageParams, DepthMap, DepthStats, ImageOp, Mat3,
    ReferenceFrame, Rigid, ViewSelection,
};
use crate::manifest::{RawInput, RawInputKind};
use crate::pipeline::{raw_input_of_bytes, InputRoot, SceneOutput, ViewOptions};
use crate::rejects::Reject;
use crate::shard::{Geometry, SceneRecord, ViewRecord, ENCODING_JPEG};

pub use crate::geometry::{Mat4, IDENTITY4};

/// Why a raw ScanNet file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanNetError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: {record}: {reason}")]
    Format {
        file: PathBuf,
        /// The record inside the file: "header", "frame 12", "line 3", ...
        record: String,
        /// What was found and what was expected.
        reason: String,
    },
}

impl ScanNetError {
    fn io(file: &Path, source: io::Error) -> Self {
        Self::Io {
            file: file.to_path_buf(),
            source,
        }
    }
    fn format(file: &Path, record: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Format {
            file: file.to_path_buf(),
            record: record.into(),
            reason: reason.into(),
        }
    }
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Io { file, .. } | Self::Format { file, .. } => file,
        }
    }
    /// The record inside the file (`whole file` for I/O errors).
    pub fn record(&self) -> &str {
        match self {
            Self::Io { .. } => "whole file",
            Self::Format { record, .. } => record,
        }
    }
    /// The reason without the file and record prefix.
    pub fn reason(&self) -> String {
        match self {
            Self::Io { source, .. } => source.to_string(),
            Self::Format { reason, .. } => reason.clone(),
        }
    }
}

pub type Result<T, E = ScanNetError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Text matrices (pose/N.txt, intrinsic/*.txt, axisAlignment)

/// Parses one number of a ScanNet text matrix. numpy writes non-finite values as `inf`, `-inf`
/// and `nan`; Rust's parser accepts those (case-insensitively) as well as `infinity`.
fn parse_number(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

/// Parses 16 whitespace-separated numbers into a row-major 4×4 matrix. Non-finite values are
/// kept as they are (invalid ScanNet poses are all `-inf`); judging them is the caller's job.
pub fn parse_mat4_tokens(text: &str, file: &Path, record: &str) -> Result<Mat4> {
    let mut m = [[0.0; 4]; 4];
    let mut count = 0usize;
    for token in text.split_whitespace() {
        if count == 16 {
            return Err(ScanNetError::format(file, record, "expected 16 numbers, found more"));
        }
        let value = parse_number(token)
            .ok_or_else(|| ScanNetError::format(file, record, format!("expected a number, found {:?}", clip(token))))?;
        m[count / 4][count % 4] = value;
        count += 1;
    }
    if count != 16 {
        return Err(ScanNetError::format(
            file,
            record,
            format!("expected 16 numbers (a 4x4 matrix), found {count}"),
        ));
    }
    Ok(m)
}

/// Parses a SensReader matrix file (`pose/N.txt`, `intrinsic/*.txt`): 4 lines of 4 numbers.
pub fn parse_mat4_text(text: &str, file: &Path) -> Result<Mat4> {
    let rows: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if rows.len() != 4 {
        return Err(ScanNetError::format(
            file,
            "matrix",
            format!("expected 4 non-empty lines, found {}", rows.len()),
        ));
    }
    let mut m = [[0.0; 4]; 4];
    for (r, line) in rows.iter().enumerate() {
        let record = format!("line {}", r + 1);
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.len() != 4 {
            return Err(ScanNetError::format(
                file,
                record,
                format!("expected 4 numbers, found {}", tokens.len()),
            ));
        }
        for (c, token) in tokens.iter().enumerate() {
            m[r][c] = parse_number(token).ok_or_else(|| {
                ScanNetError::format(file, &record, format!("expected a number, found {:?}", clip(token)))
            })?;
        }
    }
    Ok(m)
}

/// Reads and parses a matrix file.
pub fn read_mat4_file(path: &Path) -> Result<Mat4> {
    let text = read_text(path)?;
    parse_mat4_text(&text, path)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| ScanNetError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| ScanNetError::format(path, "text", format!("not UTF-8: {e}")))
}

/// Shortens a token for an error message (arbitrary input can be huge).
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

// ---------------------------------------------------------------------------------------------
// Scan metadata <scene>.txt (§1.6)

/// The scan's metadata file: `key = value` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanMeta {
    /// Every key with its trimmed value, in key order.
    pub values: BTreeMap<String, String>,
    /// Raw scan frame → axis-aligned frame (row-major); identity when the file has none.
    pub axis_alignment: Mat4,
    /// False when the file has no `axisAlignment` line (ScanNet test scans) and the identity
    /// above is a stand-in.
    pub axis_alignment_present: bool,
}

impl ScanMeta {
    /// `sceneType`, e.g. `Office`.
    pub fn scene_type(&self) -> Option<&str> {
        self.values.get("sceneType").map(String::as_str)
    }
    /// An integer value such as `colorWidth`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.values.get(key).and_then(|v| v.parse().ok())
    }

    /// The colour camera the file describes: `colorWidth`, `colorHeight` and the intrinsics
    /// `fx_color`, `fy_color`, `mx_color`, `my_color`, when all are present. `Err` (the record and
    /// why) when they are present but do not fit together: a size that is not a positive integer,
    /// or intrinsics that are implausible for that size.
    pub fn color_camera(&self) -> std::result::Result<Option<(u32, u32, Mat3)>, (String, String)> {
        let keys = ["colorWidth", "colorHeight", "fx_color", "fy_color", "mx_color", "my_color"];
        if !keys.iter().all(|k| self.values.contains_key(*k)) {
            return Ok(None);
        }
        let size = |key: &str| {
            let v = &self.values[key];
            v.parse::<u32>()
                .ok()
                .filter(|&x| x > 0)
                .ok_or_else(|| (key.to_string(), format!("{key} = {:?} is not a positive integer", clip(v))))
        };
        let number = |key: &str| {
            let v = &self.values[key];
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| (key.to_string(), format!("{key} = {:?} is not a finite number", clip(v))))
        };
        let (w, h) = (size("colorWidth")?, size("colorHeight")?);
        let k = crate::geometry::intrinsics(number("fx_color")?, number("fy_color")?, number("mx_color")?, number("my_color")?);
        validate_intrinsics(&k, w, h).map_err(|e| {
            (
                "fx_color/fy_color/mx_color/my_color".to_string(),
                format!("the colour intrinsics contradict colorWidth x colorHeight = {w}x{h}: {e}"),
            )
        })?;
        Ok(Some((w, h, k)))
    }
}

/// Parses a scan metadata file. Blank lines are skipped; any other line must be `key = value`.
pub fn parse_scan_meta(text: &str, file: &Path) -> Result<ScanMeta> {
    let mut values = BTreeMap::new();
    let mut lines: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = format!("line {}", n + 1);
        let (key, value) = line.split_once('=').ok_or_else(|| {
            ScanNetError::format(file, &record, format!("expected `key = value`, found {:?}", clip(line)))
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ScanNetError::format(file, &record, "empty key before `=`"));
        }
        let value = value.trim().to_string();
        if let Some((first_line, first)) = lines.get(key) {
            if *first != value {
                return Err(ScanNetError::format(
                    file,
                    &record,
                    format!("{key} is given twice with different values (line {first_line}: {:?}, line {}: {:?})", clip(first), n + 1, clip(&value)),
                ));
            }
        }
        lines.insert(key.to_string(), (n + 1, value.clone()));
        values.insert(key.to_string(), value);
    }
    let (axis_alignment, axis_alignment_present) = match values.get("axisAlignment") {
        Some(v) => (parse_mat4_tokens(v, file, "axisAlignment")?, true),
        None => (IDENTITY4, false),
    };
    if axis_alignment.iter().flatten().any(|x| !x.is_finite()) {
        return Err(ScanNetError::format(file, "axisAlignment", "non-finite value"));
    }
    if let Err(e) = validate_pose(&axis_alignment) {
        return Err(ScanNetError::format(
            file,
            "axisAlignment",
            format!("not a rigid transform: {}", e.to_string().trim_start_matches("pose ")),
        ));
    }
    Ok(ScanMeta {
        values,
        axis_alignment,
        axis_alignment_present,
    })
}

/// Reads `<scan_dir>/<scene>.txt`.
pub fn read_scan_meta(path: &Path) -> Result<ScanMeta> {
    parse_scan_meta(&read_text(path)?, path)
}

// ---------------------------------------------------------------------------------------------
// Images

/// A depth raster, row-major, raw sensor units (metres = value / depth_shift); 0 = invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthImage {
    pub width: u32,
    pub height: u32,
    pub depth_shift: f32,
    pub data: Vec<u16>,
}

impl DepthImage {
    /// Depth in metres at (x, y); 0 where invalid.
    pub fn metres(&self, x: u32, y: u32) -> f32 {
        self.data[(y * self.width + x) as usize] as f32 / self.depth_shift
    }
}

/// Largest image we agree to allocate (pixels); protects against garbage headers.
const MAX_PIXELS: u64 = 1 << 26;

fn check_dims(file: &Path, record: &str, what: &str, w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 || w * h > MAX_PIXELS {
        return Err(ScanNetError::format(
            file,
            record,
            format!("{what} size {w}x{h} is empty or larger than {MAX_PIXELS} pixels"),
        ));
    }
    Ok(())
}

fn decode_rgb(bytes: &[u8], format: image::ImageFormat, file: &Path, record: &str) -> Result<image::RgbImage> {
    if format == image::ImageFormat::Jpeg {
        // The pinned decoder of `crate::imaging` (libjpeg-turbo, Pillow's): the same pixels on every CPU.
        return decode_jpeg(bytes, 1)
            .map_err(|e| ScanNetError::format(file, record, format!("cannot decode {format:?} colour: {e}")));
    }
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| ScanNetError::format(file, record, format!("cannot decode {format:?} colour: {e}")))?;
    Ok(img.into_rgb8())
}

/// Decodes a 16-bit single-channel PNG depth image (SensReader `depth/N.png`).
pub fn decode_depth_png(bytes: &[u8], depth_shift: f32, file: &Path, record: &str) -> Result<DepthImage> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .map_err(|e| ScanNetError::format(file, record, format!("cannot decode PNG depth: {e}")))?;
    match img {
        image::DynamicImage::ImageLuma16(buf) => Ok(DepthImage {
            width: buf.width(),
            height: buf.height(),
            depth_shift,
            data: buf.into_raw(),
        }),
        other => Err(ScanNetError::format(
            file,
            record,
            format!("expected a 16-bit single-channel PNG, found {:?}", other.color()),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// .sens v4 (§1.7)

/// `color_compression_type` of a `.sens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorCompression {
    Unknown,
    Raw,
    Png,
    Jpeg,
}

/// `depth_compression_type` of a `.sens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthCompression {
    Unknown,
    RawUshort,
    ZlibUshort,
    OcciUshort,
}

/// The `.sens` header, everything before the frames.
#[derive(Debug, Clone, PartialEq)]
pub struct SensHeader {
    pub version: u32,
    pub sensor_name: String,
    pub intrinsic_color: Mat4,
    pub extrinsic_color: Mat4,
    pub intrinsic_depth: Mat4,
    pub extrinsic_depth: Mat4,
    pub color_compression: ColorCompression,
    pub depth_compression: DepthCompression,
    pub color_width: u32,
    pub color_height: u32,
    pub depth_width: u32,
    pub depth_height: u32,
    pub depth_shift: f32,
    pub num_frames: u64,
}

/// One frame's header and where its payloads are in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct SensFrameInfo {
    pub index: u64,
    /// Camera-to-world, row-major; may hold `-inf` (invalid pose) — not judged here.
    pub camera_to_world: Mat4,
    pub timestamp_color: u64,
    pub timestamp_depth: u64,
    pub color_offset: u64,
    pub color_size: u64,
    pub depth_offset: u64,
    pub depth_size: u64,
}

/// Longest sensor name accepted; real files have a few dozen bytes.
const MAX_SENSOR_NAME: u64 = 1 << 16;
/// Frame header: camera_to_world (16 × f32) + two timestamps + two sizes.
const SENS_FRAME_HEADER_BYTES: u64 = 64 + 4 * 8;

/// Reads what it is asked, tracking the position, optionally hashing everything that passes.
struct Stream<R> {
    inner: R,
    pos: u64,
    len: u64,
    hasher: Option<Sha256>,
}

impl<R: BufRead + Seek> Stream<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&*buf);
        }
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn i32(&mut self) -> io::Result<i32> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn f32(&mut self) -> io::Result<f32> {
        Ok(f32::from_bits(self.u32()?))
    }
    fn mat4_f32(&mut self) -> io::Result<Mat4> {
        let mut b = [0u8; 64];
        self.read_exact(&mut b)?;
        let mut m = [[0.0; 4]; 4];
        for (i, chunk) in b.chunks_exact(4).enumerate() {
            m[i / 4][i % 4] = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as f64;
        }
        Ok(m)
    }
    /// Moves over `n` bytes: seeks, or hashes them straight from the reader's buffer when
    /// hashing (no copy into a buffer of our own: on a first preparation every byte of every
    /// `.sens` passes here).
    fn skip(&mut self, n: u64) -> io::Result<()> {
        match &mut self.hasher {
            None => {
                self.inner.seek(SeekFrom::Current(n as i64))?;
            }
            Some(h) => {
                let mut left = n;
                while left > 0 {
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    h.update(&buf[..take]);
                    self.inner.consume(take);
                    left -= take as u64;
                }
            }
        }
        self.pos += n;
        Ok(())
    }
}

/// A `.sens` file: header and frame index in memory, payloads read on demand (from several
/// threads at once: the source is locked only while a payload is copied out of it).
pub struct SensReader<R> {
    source: Mutex<R>,
    file: PathBuf,
    header: SensHeader,
    frames: Vec<SensFrameInfo>,
    truncation: Option<ScanNetError>,
}

impl SensReader<BufReader<File>> {
    /// Opens a `.sens`, reading its header and indexing its frames (seeking over payloads).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ScanNetError::io(path, e))?;
        Ok(Self::from_reader(BufReader::new(file), path, false)?.0)
    }

    /// Like [`SensReader::open`] but reads the whole file once sequentially to return its
    /// sha256 as well (the manifest pins every raw input); frames are still decoded on demand.
    pub fn open_hashed(path: &Path) -> Result<(Self, [u8; 32])> {
        let file = File::open(path).map_err(|e| ScanNetError::io(path, e))?;
        let (mut reader, digest) = Self::from_reader(BufReader::with_capacity(1 << 20, file), path, true)?;
        // Payloads are then read one at a time at scattered offsets: behind a 1 MiB buffer, each
        // read of a 100 KB payload would read (and copy) a whole MiB. A default-sized buffer is
        // bypassed by reads larger than itself.
        let file = reader.source.into_inner().unwrap_or_else(|poison| poison.into_inner()).into_inner();
        reader.source = Mutex::new(BufReader::new(file));
        Ok((reader, digest.expect("hashing was requested")))
    }
}

impl<R: BufRead + Seek> SensReader<R> {
    /// Reads the header and the frame index from `source`; `file` names it in errors. With
    /// `hash`, everything (payloads and trailing IMU records included) is read through sha256.
    pub fn from_reader(mut source: R, file: &Path, hash: bool) -> Result<(Self, Option<[u8; 32]>)> {
        let io_err = |e| ScanNetError::io(file, e);
        let len = source.seek(SeekFrom::End(0)).map_err(io_err)?;
        source.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut stream = Stream {
            inner: source,
            pos: 0,
            len,
            hasher: hash.then(Sha256::new),
        };
        let header = read_sens_header(&mut stream, file)?;
        let mut frames = Vec::with_capacity(header.num_frames.min(1 << 16) as usize);
        let mut truncation = None;
        for index in 0..header.num_frames {
            match read_sens_frame(&mut stream, file, index) {
                Ok(frame) => frames.push(frame),
                // The frames before the cut are complete and stay usable.
                Err(e @ ScanNetError::Format { .. }) => {
                    truncation = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let digest = match stream.hasher.take() {
            None => None,
            Some(mut h) => {
                io::copy(&mut stream.inner, &mut h).map_err(io_err)?;
                Some(h.finalize().into())
            }
        };
        let reader = SensReader {
            source: Mutex::new(stream.inner),
            file: file.to_path_buf(),
            header,
            frames,
            truncation,
        };
        Ok((reader, digest))
    }

    /// Why the frame index stops before `num_frames` (a truncated file): the error names the
    /// first incomplete frame; the frames before it are complete.
    pub fn truncation(&self) -> Option<&ScanNetError> {
        self.truncation.as_ref()
    }

    pub fn header(&self) -> &SensHeader {
        &self.header
    }
    pub fn frames(&self) -> &[SensFrameInfo] {
        &self.frames
    }
    pub fn path(&self) -> &Path {
        &self.file
    }

    fn frame(&self, index: u64) -> Result<&SensFrameInfo> {
        self.frames.get(index as usize).ok_or_else(|| {
            ScanNetError::format(
                &self.file,
                format!("frame {index}"),
                format!("no such frame (the file has {})", self.frames.len()),
            )
        })
    }

    fn read_payload(&self, offset: u64, size: u64, record: &str) -> Result<Vec<u8>> {
        // A panic while the lock was held cannot leave the reader inconsistent: every read seeks first.
        let mut source = self.source.lock().unwrap_or_else(|poison| poison.into_inner());
        source
            .seek(SeekFrom::Start(offset))
            .map_err(|e| ScanNetError::io(&self.file, e))?;
        // Read into fresh capacity (not a zeroed buffer): the payload overwrites all of it.
        let mut buf = Vec::with_capacity(size as usize);
        let read = (&mut *source)
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|e| ScanNetError::format(&self.file, record, format!("truncated payload at offset {offset}: {e}")))?;
        if read as u64 != size {
            let e = io::Error::from(io::ErrorKind::UnexpectedEof);
            return Err(ScanNetError::format(
                &self.file,
                record,
                format!("truncated payload at offset {offset}: {e}"),
            ));
        }
        Ok(buf)
    }

    /// The frame's colour payload as stored (JPEG bytes for ScanNet).
    pub fn color_bytes(&self, index: u64) -> Result<Vec<u8>> {
        let f = self.frame(index)?;
        let (offset, size) = (f.color_offset, f.color_size);
        self.read_payload(offset, size, &format!("frame {index}"))
    }

    /// Decodes the frame's colour image.
    pub fn decode_color(&self, index: u64) -> Result<image::RgbImage> {
        let record = format!("frame {index}");
        let bytes = self.color_bytes(index)?;
        let h = &self.header;
        match h.color_compression {
            ColorCompression::Jpeg => decode_rgb(&bytes, image::ImageFormat::Jpeg, &self.file, &record),
            ColorCompression::Png => decode_rgb(&bytes, image::ImageFormat::Png, &self.file, &record),
            ColorCompression::Raw => {
                let (w, h) = (h.color_width, h.color_height);
                check_dims(&self.file, &record, "colour", w as u64, h as u64)?;
                if bytes.len() as u64 != w as u64 * h as u64 * 3 {
                    return Err(ScanNetError::format(
                        &self.file,
                        &record,
                        format!("raw colour has {} bytes, expected {w}x{h}x3", bytes.len()),
                    ));
                }
                Ok(image::RgbImage::from_raw(w, h, bytes).expect("size checked above"))
            }
            ColorCompression::Unknown => Err(ScanNetError::format(
                &self.file,
                &record,
                "colour compression type is unknown (-1); expected raw, png or jpeg",
            )),
        }
    }

    /// Decodes the frame's depth raster (zlib or raw uint16, little-endian).
    pub fn decode_depth(&self, index: u64) -> Result<DepthImage> {
        let record = format!("frame {index}");
        let f = self.frame(index)?;
        let (offset, size) = (f.depth_offset, f.depth_size);
        let (w, h, shift) = (
            self.header.depth_width,
            self.header.depth_height,
            self.header.depth_shift,
        );
        check_dims(&self.file, &record, "depth", w as u64, h as u64)?;
        let expected = w as usize * h as usize * 2;
        let bytes = self.read_payload(offset, size, &record)?;
        // The values are inflated (or copied) straight into their u16 storage, plus one spare
        // value: room for a byte more than expected, which tells an over-long stream.
        let mut data = vec![0u16; expected / 2 + 1];
        let storage: &mut [u8] = bytemuck::cast_slice_mut(&mut data);
        let len = match self.header.depth_compression {
            DepthCompression::RawUshort => {
                let len = bytes.len();
                if len == expected {
                    storage[..len].copy_from_slice(&bytes);
                }
                len
            }
            DepthCompression::ZlibUshort => inflate_depth(&bytes, &mut storage[..expected + 1])
                .map_err(|reason| ScanNetError::format(&self.file, &record, reason))?,
            other => {
                return Err(ScanNetError::format(
                    &self.file,
                    &record,
                    format!("depth compression {other:?} is not supported; expected raw or zlib"),
                ))
            }
        };
        if len != expected {
            return Err(ScanNetError::format(
                &self.file,
                &record,
                format!("depth has {len} bytes, expected {w}x{h}x2 = {expected}"),
            ));
        }
        data.truncate(expected / 2);
        // The file is little-endian (a no-op on little-endian machines).
        for v in &mut data {
            *v = u16::from_le(*v);
        }
        Ok(DepthImage {
            width: w,
            height: h,
            depth_shift: shift,
            data,
        })
    }
}

/// Inflates a zlib depth payload into `out`, which holds the expected byte count plus one spare
/// byte (so that an exact stream and an over-long one differ); returns the number of bytes
/// inflated, which the caller compares with the expected count.
///
/// zlib-rs (pure Rust, zlib's algorithm) rather than flate2's default miniz_oxide backend: about
/// a third less CPU on ScanNet depth (BENCHMARKS.md, issue 11). flate2's own `zlib-rs` feature is
/// not used because features unify across the workspace: it would also switch the synthetic data
/// generator's zlib *encoder* and change its bytes. Inflating is lossless: the values are the
/// same whichever decoder runs.
fn inflate_depth(z: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    use zlib_rs::ReturnCode;
    let room = out.len();
    let (inflated, code) = zlib_rs::decompress_slice(out, z, zlib_rs::InflateConfig::default());
    let n = inflated.len();
    match code {
        ReturnCode::Ok => Ok(n),
        ReturnCode::BufError if n == room => Err(format!(
            "depth inflates to more than {} bytes",
            room.saturating_sub(1)
        )),
        ReturnCode::DataError | ReturnCode::BufError => {
            Err("bad zlib depth: corrupt or truncated zlib stream".to_string())
        }
        other => Err(format!("bad zlib depth: zlib error {other:?}")),
    }
}

fn read_sens_header<R: BufRead + Seek>(s: &mut Stream<R>, file: &Path) -> Result<SensHeader> {
    let trunc = |e: io::Error| ScanNetError::format(file, "header", format!("truncated or unreadable header: {e}"));
    let version = s.u32().map_err(trunc)?;
    if version != 4 {
        return Err(ScanNetError::format(
            file,
            "header",
            format!("version is {version}, expected 4"),
        ));
    }
    let name_len = s.u64().map_err(trunc)?;
    if name_len > MAX_SENSOR_NAME || name_len > s.len.saturating_sub(s.pos) {
        return Err(ScanNetError::format(
            file,
            "header",
            format!(
                "sensor name length {name_len} is implausible (file has {} bytes)",
                s.len
            ),
        ));
    }
    let mut name = vec![0u8; name_len as usize];
    s.read_exact(&mut name).map_err(trunc)?;
    let sensor_name = String::from_utf8_lossy(&name).into_owned();
    let intrinsic_color = s.mat4_f32().map_err(trunc)?;
    let extrinsic_color = s.mat4_f32().map_err(trunc)?;
    let intrinsic_depth = s.mat4_f32().map_err(trunc)?;
    let extrinsic_depth = s.mat4_f32().map_err(trunc)?;
    let color_compression = match s.i32().map_err(trunc)? {
        0 => ColorCompression::Raw,
        1 => ColorCompression::Png,
        2 => ColorCompression::Jpeg,
        _ => ColorCompression::Unknown,
    };
    let depth_compression = match s.i32().map_err(trunc)? {
        0 => DepthCompression::RawUshort,
        1 => DepthCompression::ZlibUshort,
        2 => DepthCompression::OcciUshort,
        _ => DepthCompression::Unknown,
    };
    let color_width = s.u32().map_err(trunc)?;
    let color_height = s.u32().map_err(trunc)?;
    let depth_width = s.u32().map_err(trunc)?;
    let depth_height = s.u32().map_err(trunc)?;
    let depth_shift = s.f32().map_err(trunc)?;
    if !(depth_shift.is_finite() && depth_shift > 0.0) {
        return Err(ScanNetError::format(
            file,
            "header",
            format!("depth_shift is {depth_shift}, expected a positive number (ScanNet: 1000)"),
        ));
    }
    let num_frames = s.u64().map_err(trunc)?;
    Ok(SensHeader {
        version,
        sensor_name,
        intrinsic_color,
        extrinsic_color,
        intrinsic_depth,
        extrinsic_depth,
        color_compression,
        depth_compression,
        color_width,
        color_height,
        depth_width,
        depth_height,
        depth_shift,
        num_frames,
    })
}

fn read_sens_frame<R: BufRead + Seek>(s: &mut Stream<R>, file: &Path, index: u64) -> Result<SensFrameInfo> {
    let record = format!("frame {index}");
    let start = s.pos;
    if s.len.saturating_sub(start) < SENS_FRAME_HEADER_BYTES {
        return Err(ScanNetError::format(
            file,
            &record,
            format!(
                "file truncated: frame header needs {SENS_FRAME_HEADER_BYTES} bytes at offset {start}, file has {}",
                s.len
            ),
        ));
    }
    let io_err = |e| ScanNetError::format(file, &record, format!("file truncated: cannot read the frame: {e}"));
    let camera_to_world = s.mat4_f32().map_err(io_err)?;
    let timestamp_color = s.u64().map_err(io_err)?;
    let timestamp_depth = s.u64().map_err(io_err)?;
    let color_size = s.u64().map_err(io_err)?;
    let depth_size = s.u64().map_err(io_err)?;
    let color_offset = s.pos;
    let needed = color_size.checked_add(depth_size);
    let left = s.len - s.pos;
    match needed {
        Some(n) if n <= left => {}
        _ => {
            return Err(ScanNetError::format(
                file,
                &record,
                format!(
                    "file truncated: colour {color_size} + depth {depth_size} bytes at offset {color_offset}, only {left} left"
                ),
            ))
        }
    }
    s.skip(color_size).map_err(io_err)?;
    let depth_offset = s.pos;
    s.skip(depth_size).map_err(io_err)?;
    Ok(SensFrameInfo {
        index,
        camera_to_world,
        timestamp_color,
        timestamp_depth,
        color_offset,
        color_size,
        depth_offset,
        depth_size,
    })
}

// ---------------------------------------------------------------------------------------------
// SensReader export folders (§1.1–1.5)

/// One frame of an export folder: its index and the files that exist for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportFrame {
    pub index: u64,
    pub color: Option<PathBuf>,
    pub depth: Option<PathBuf>,
    pub pose: Option<PathBuf>,
    /// Files that name the same frame as another (`color/0.jpg` and `color/000.jpg`): the frame
    /// cannot be told and is rejected.
    pub ambiguous: Vec<PathBuf>,
}

/// A SensReader export: `color/N.jpg`, `depth/N.png`, `pose/N.txt`, `intrinsic/*.txt`.
#[derive(Debug, Clone)]
pub struct ExportScan {
    pub dir: PathBuf,
    /// Frames in numeric index order (names are unpadded: `10` sorts after `9`).
    pub frames: Vec<ExportFrame>,
    pub intrinsic_color: Mat4,
    pub intrinsic_depth: Mat4,
    /// Exports store depth in millimetres (README: "depth shift 1000").
    pub depth_shift: f32,
}

/// The SensReader export folder names.
pub const EXPORT_FOLDERS: [&str; 4] = ["color", "depth", "pose", "intrinsic"];

/// Lists `<dir>/<sub>/<N>.<ext>` as index → paths (sorted; more than one when names such as `0`
/// and `000` give one index). Other names (e.g. `.DS_Store`) are not frames.
fn list_indexed(dir: &Path, sub: &str, ext: &str) -> Result<BTreeMap<u64, Vec<PathBuf>>> {
    let folder = dir.join(sub);
    let mut out: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(&folder).map_err(|e| ScanNetError::io(&folder, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ScanNetError::io(&folder, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(ext).and_then(|s| s.strip_suffix('.')) else {
            continue;
        };
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(index) = stem.parse::<u64>() {
            out.entry(index).or_default().push(entry.path());
        }
    }
    for paths in out.values_mut() {
        paths.sort();
    }
    Ok(out)
}

impl ExportScan {
    /// Whether `dir` holds the export folders.
    pub fn is_export(dir: &Path) -> bool {
        EXPORT_FOLDERS.iter().all(|sub| dir.join(sub).is_dir())
    }

    /// Indexes an export folder and reads its intrinsics.
    pub fn open(dir: &Path) -> Result<Self> {
        let colors = list_indexed(dir, "color", "jpg")?;
        let depths = list_indexed(dir, "depth", "png")?;
        let poses = list_indexed(dir, "pose", "txt")?;
        let mut frames: BTreeMap<u64, ExportFrame> = BTreeMap::new();
        let blank = |index| ExportFrame {
            index,
            color: None,
            depth: None,
            pose: None,
            ambiguous: vec![],
        };
        for (which, listed) in [(0, colors), (1, depths), (2, poses)] {
            for (index, mut paths) in listed {
                let frame = frames.entry(index).or_insert_with(|| blank(index));
                if paths.len() > 1 {
                    frame.ambiguous.extend(paths.iter().cloned());
                }
                let path = Some(paths.swap_remove(0));
                match which {
                    0 => frame.color = path,
                    1 => frame.depth = path,
                    _ => frame.pose = path,
                }
            }
        }
        let intrinsic_color = read_mat4_file(&dir.join("intrinsic").join("intrinsic_color.txt"))?;
        let intrinsic_depth = read_mat4_file(&dir.join("intrinsic").join("intrinsic_depth.txt"))?;
        Ok(ExportScan {
            dir: dir.to_path_buf(),
            frames: frames.into_values().collect(),
            intrinsic_color,
            intrinsic_depth,
            depth_shift: 1000.0,
        })
    }

    fn scan_frame(&self, f: &ExportFrame) -> ScanFrame {
        let pose_file = self.dir.join("pose").join(format!("{}.txt", f.index));
        let missing = [
            ("color", "jpg", f.color.is_none()),
            ("depth", "png", f.depth.is_none()),
            ("pose", "txt", f.pose.is_none()),
        ];
        let names = |paths: &[PathBuf]| {
            paths
                .iter()
                .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" and ")
        };
        let ambiguous = (!f.ambiguous.is_empty()).then(|| {
            ScanNetError::format(
                &f.ambiguous[0],
                format!("frame {}", f.index),
                format!(
                    "{} all name frame {}: which one is the frame cannot be told, so it is not used",
                    names(&f.ambiguous),
                    f.index
                ),
            )
        });
        let camera_to_world = match missing.iter().find(|(_, _, m)| *m) {
            _ if ambiguous.is_some() => Err(ambiguous.expect("checked")),
            Some((sub, ext, _)) => {
                let present: Vec<&str> = missing.iter().filter(|(_, _, m)| !*m).map(|(s, _, _)| *s).collect();
                Err(ScanNetError::format(
                    &self.dir.join(sub).join(format!("{}.{ext}", f.index)),
                    format!("frame {}", f.index),
                    format!(
                        "missing: the export has {} but no {sub} file for this frame",
                        present.join(" and ")
                    ),
                ))
            }
            None => read_mat4_file(&pose_file).map_err(|e| match e {
                ScanNetError::Format { file, reason, record } => ScanNetError::Format {
                    file,
                    record: format!("frame {}", f.index),
                    reason: format!("{record}: {reason}"),
                },
                io => io,
            }),
        };
        ScanFrame {
            index: f.index,
            pose_file,
            camera_to_world,
        }
    }

    fn frame(&self, index: u64) -> Result<&ExportFrame> {
        self.frames
            .iter()
            .find(|f| f.index == index)
            .ok_or_else(|| ScanNetError::format(&self.dir, format!("frame {index}"), "no such frame in the export"))
    }

    fn frame_file<'a>(&self, f: &'a ExportFrame, which: &str) -> Result<&'a Path> {
        let path = match which {
            "color" => &f.color,
            "depth" => &f.depth,
            _ => &f.pose,
        };
        path.as_deref().ok_or_else(|| {
            ScanNetError::format(
                &self.dir.join(which),
                format!("frame {}", f.index),
                format!("{which} file missing for this frame"),
            )
        })
    }

    /// The frame's camera-to-world pose as written (may hold inf/nan).
    pub fn pose(&self, index: u64) -> Result<Mat4> {
        let f = self.frame(index)?;
        read_mat4_file(self.frame_file(f, "pose")?)
    }

    /// The frame's JPEG bytes as stored.
    pub fn color_bytes(&self, index: u64) -> Result<(PathBuf, Vec<u8>)> {
        let f = self.frame(index)?;
        let path = self.frame_file(f, "color")?;
        let bytes = std::fs::read(path).map_err(|e| ScanNetError::io(path, e))?;
        Ok((path.to_path_buf(), bytes))
    }

    pub fn decode_color(&self, index: u64) -> Result<image::RgbImage> {
        let (path, bytes) = self.color_bytes(index)?;
        decode_rgb(&bytes, image::ImageFormat::Jpeg, &path, &format!("frame {index}"))
    }

    /// The frame's depth PNG file and bytes.
    pub fn depth_bytes(&self, index: u64) -> Result<(PathBuf, Vec<u8>)> {
        let f = self.frame(index)?;
        let path = self.frame_file(f, "depth")?;
        let bytes = std::fs::read(path).map_err(|e| ScanNetError::io(path, e))?;
        Ok((path.to_path_buf(), bytes))
    }

    pub fn decode_depth(&self, index: u64) -> Result<DepthImage> {
        let (path, bytes) = self.depth_bytes(index)?;
        decode_depth_png(&bytes, self.depth_shift, &path, &format!("frame {index}"))
    }
}

// ---------------------------------------------------------------------------------------------
// One scan folder, whichever form it has

/// A frame as a scan offers it to view selection: its index and raw pose, or why it has none.
#[derive(Debug)]
pub struct ScanFrame {
    pub index: u64,
    /// The file holding the pose (the `.sens`, or `pose/N.txt` of an export).
    pub pose_file: PathBuf,
    /// Camera-to-world as stored (possibly non-finite), or why it could not be read.
    pub camera_to_world: Result<Mat4>,
}

/// A scan folder read from its `.sens` or from its export folders.
pub enum ScanSource {
    Sens(Box<SensReader<BufReader<File>>>),
    Export(ExportScan),
}

/// Which form a scan folder has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanForm {
    Sens(PathBuf),
    Export(PathBuf),
}

/// Finds the raw form of `scan_dir` (`scans/<scene>`): the `.sens` when present (the original
/// data), else the export folders.
pub fn detect_scan_form(scan_dir: &Path, scene: &str) -> Result<ScanForm> {
    let sens = scan_dir.join(format!("{scene}.sens"));
    if sens.is_file() {
        Ok(ScanForm::Sens(sens))
    } else if ExportScan::is_export(scan_dir) {
        Ok(ScanForm::Export(scan_dir.to_path_buf()))
    } else {
        Err(ScanNetError::format(
            scan_dir,
            scene,
            format!("neither {scene}.sens nor the export folders color/ depth/ pose/ intrinsic/ found"),
        ))
    }
}

impl ScanSource {
    /// Opens a scan folder. With `hash`, a `.sens` is read through sha256 once (returned);
    /// export folders are hashed file by file by the caller as they are read.
    pub fn open(scan_dir: &Path, scene: &str, hash: bool) -> Result<(Self, Option<[u8; 32]>)> {
        match detect_scan_form(scan_dir, scene)? {
            ScanForm::Sens(path) => {
                if hash {
                    let (r, d) = SensReader::open_hashed(&path)?;
                    Ok((ScanSource::Sens(Box::new(r)), Some(d)))
                } else {
                    Ok((ScanSource::Sens(Box::new(SensReader::open(&path)?)), None))
                }
            }
            ScanForm::Export(dir) => Ok((ScanSource::Export(ExportScan::open(&dir)?), None)),
        }
    }

    /// Every frame with its raw pose, in index order. For an export, pose files are read here,
    /// and a frame lacking its colour, depth or pose file is an error naming the missing file.
    pub fn frames(&self) -> Vec<ScanFrame> {
        match self {
            ScanSource::Sens(r) => r
                .frames()
                .iter()
                .map(|f| ScanFrame {
                    index: f.index,
                    pose_file: r.path().to_path_buf(),
                    camera_to_world: Ok(f.camera_to_world),
                })
                .collect(),
            ScanSource::Export(e) => e.frames.iter().map(|f| e.scan_frame(f)).collect(),
        }
    }

    /// 4×4 colour intrinsics for the native colour size.
    pub fn intrinsic_color(&self) -> Mat4 {
        match self {
            ScanSource::Sens(r) => r.header().intrinsic_color,
            ScanSource::Export(e) => e.intrinsic_color,
        }
    }

    /// 4×4 depth intrinsics for the native depth size.
    pub fn intrinsic_depth(&self) -> Mat4 {
        match self {
            ScanSource::Sens(r) => r.header().intrinsic_depth,
            ScanSource::Export(e) => e.intrinsic_depth,
        }
    }

    pub fn decode_color(&self, index: u64) -> Result<image::RgbImage> {
        match self {
            ScanSource::Sens(r) => r.decode_color(index),
            ScanSource::Export(e) => e.decode_color(index),
        }
    }

    /// The frame's colour as JPEG bytes when it is stored as a JPEG (always for an export; for a
    /// `.sens`, when its header says so), for decoding at a reduced DCT scale.
    pub fn color_jpeg(&self, index: u64) -> Result<Option<Vec<u8>>> {
        match self {
            ScanSource::Sens(r) if r.header().color_compression == ColorCompression::Jpeg => {
                r.color_bytes(index).map(Some)
            }
            ScanSource::Sens(_) => Ok(None),
            ScanSource::Export(e) => e.color_bytes(index).map(|(_, bytes)| Some(bytes)),
        }
    }

    /// The file holding a frame's colour image (the `.sens`, or `color/N.jpg`).
    pub fn color_file(&self, index: u64) -> PathBuf {
        self.frame_file(index, "color", "jpg")
    }

    /// The file holding a frame's depth image (the `.sens`, or `depth/N.png`).
    pub fn depth_file(&self, index: u64) -> PathBuf {
        self.frame_file(index, "depth", "png")
    }

    fn frame_file(&self, index: u64, sub: &str, ext: &str) -> PathBuf {
        match self {
            ScanSource::Sens(r) => r.path().to_path_buf(),
            ScanSource::Export(e) => e
                .frames
                .iter()
                .find(|f| f.index == index)
                .and_then(|f| if sub == "color" { f.color.clone() } else { f.depth.clone() })
                .unwrap_or_else(|| e.dir.join(sub).join(format!("{index}.{ext}"))),
        }
    }

    pub fn decode_depth(&self, index: u64) -> Result<DepthImage> {
        match self {
            ScanSource::Sens(r) => r.decode_depth(index),
            ScanSource::Export(e) => e.decode_depth(index),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// <scene>_vh_clean_2.ply (§1.6b)

/// Scalar property types of PLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlyScalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl PlyScalar {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "char" | "int8" => Self::I8,
            "uchar" | "uint8" => Self::U8,
            "short" | "int16" => Self::I16,
            "ushort" | "uint16" => Self::U16,
            "int" | "int32" => Self::I32,
            "uint" | "uint32" => Self::U32,
            "float" | "float32" => Self::F32,
            "double" | "float64" => Self::F64,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }
    /// Little-endian value of `b` (exactly `size()` bytes).
    fn value(self, b: &[u8]) -> f64 {
        match self {
            Self::I8 => b[0] as i8 as f64,
            Self::U8 => b[0] as f64,
            Self::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            Self::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            Self::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Self::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Self::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }
}

#[derive(Debug, Clone)]
enum PlyProperty {
    Scalar { name: String, ty: PlyScalar },
    List { count: PlyScalar, item: PlyScalar },
}

#[derive(Debug, Clone)]
struct PlyElement {
    name: String,
    count: u64,
    properties: Vec<PlyProperty>,
}

/// Axis-aligned bounds of a mesh's vertices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VertexBounds {
    pub vertex_count: u64,
    pub min: [f64; 3],
    pub max: [f64; 3],
}

impl VertexBounds {
    /// Midpoint of the per-axis min and max: the origin of SQA3D's situation frame (§3.5).
    pub fn center(&self) -> [f64; 3] {
        [0, 1, 2].map(|i| (self.min[i] + self.max[i]) / 2.0)
    }
}

/// Longest PLY header accepted.
const MAX_PLY_HEADER: usize = 1 << 16;

fn parse_ply_header(header: &str, file: &Path) -> Result<Vec<PlyElement>> {
    let mut lines = header.lines().enumerate();
    match lines.next() {
        Some((_, "ply")) => {}
        _ => return Err(ScanNetError::format(file, "header", "first line is not `ply`")),
    }
    let mut elements: Vec<PlyElement> = Vec::new();
    let mut format_seen = false;
    for (n, line) in lines {
        let record = format!("header line {}", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] | ["comment", ..] | ["obj_info", ..] => {}
            ["format", "binary_little_endian", _] => format_seen = true,
            ["format", other, ..] => {
                return Err(ScanNetError::format(
                    file,
                    record,
                    format!("format {other} is not supported; expected binary_little_endian"),
                ))
            }
            ["element", name, count] => {
                let count = count.parse::<u64>().map_err(|_| {
                    ScanNetError::format(file, &record, format!("element count {count:?} is not a number"))
                })?;
                elements.push(PlyElement {
                    name: name.to_string(),
                    count,
                    properties: vec![],
                });
            }
            ["property", "list", count, item, _name] => {
                let parse = |t: &str| {
                    PlyScalar::parse(t)
                        .ok_or_else(|| ScanNetError::format(file, &record, format!("unknown type {t:?}")))
                };
                let prop = PlyProperty::List {
                    count: parse(count)?,
                    item: parse(item)?,
                };
                elements
                    .last_mut()
                    .ok_or_else(|| ScanNetError::format(file, &record, "property before any element"))?
                    .properties
                    .push(prop);
            }
            ["property", ty, name] => {
                let ty = PlyScalar::parse(ty)
                    .ok_or_else(|| ScanNetError::format(file, &record, format!("unknown type {ty:?}")))?;
                elements
                    .last_mut()
                    .ok_or_else(|| ScanNetError::format(file, &record, "property before any element"))?
                    .properties
                    .push(PlyProperty::Scalar {
                        name: name.to_string(),
                        ty,
                    });
            }
            _ => {
                return Err(ScanNetError::format(
                    file,
                    record,
                    format!("unexpected header line {:?}", clip(line)),
                ))
            }
        }
    }
    if !format_seen {
        return Err(ScanNetError::format(
            file,
            "header",
            "no `format binary_little_endian 1.0` line",
        ));
    }
    Ok(elements)
}

/// Reads the header of a PLY stream: the text up to and including `end_header\n`.
fn read_ply_header_text<R: Read>(r: &mut R, file: &Path) -> Result<String> {
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"end_header\n") {
        if header.len() >= MAX_PLY_HEADER {
            return Err(ScanNetError::format(
                file,
                "header",
                "no `end_header` in the first 64 KiB",
            ));
        }
        match r.read(&mut byte) {
            Ok(0) => return Err(ScanNetError::format(file, "header", "file ends before `end_header`")),
            Ok(_) => header.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ScanNetError::io(file, e)),
        }
    }
    header.truncate(header.len() - "end_header\n".len());
    String::from_utf8(header).map_err(|_| ScanNetError::format(file, "header", "header is not UTF-8 text"))
}

/// Streams the vertices of a binary little-endian PLY, calling `visit` with each (x, y, z).
/// Properties are found by name, so extra ones (colours, alpha, normals) are skipped.
pub fn for_each_ply_vertex<R: Read>(mut r: R, file: &Path, mut visit: impl FnMut([f64; 3])) -> Result<u64> {
    let header = read_ply_header_text(&mut r, file)?;
    let elements = parse_ply_header(&header, file)?;
    for element in &elements {
        if element.name == "vertex" {
            let mut offsets = [None; 3];
            let mut stride = 0usize;
            for p in &element.properties {
                match p {
                    PlyProperty::Scalar { name, ty } => {
                        if let Some(axis) = ["x", "y", "z"].iter().position(|a| a == name) {
                            offsets[axis] = Some((stride, *ty));
                        }
                        stride += ty.size();
                    }
                    PlyProperty::List { .. } => {
                        return Err(ScanNetError::format(
                            file,
                            "header",
                            "list properties in `vertex` are not supported",
                        ))
                    }
                }
            }
            let [Some(ox), Some(oy), Some(oz)] = offsets else {
                return Err(ScanNetError::format(file, "header", "vertex element lacks x, y or z"));
            };
            let mut record = vec![0u8; stride];
            for v in 0..element.count {
                r.read_exact(&mut record).map_err(|e| {
                    ScanNetError::format(
                        file,
                        format!("vertex {v}"),
                        format!("truncated: {} vertices declared: {e}", element.count),
                    )
                })?;
                let get = |(o, ty): (usize, PlyScalar)| ty.value(&record[o..o + ty.size()]);
                visit([get(ox), get(oy), get(oz)]);
            }
            return Ok(element.count);
        }
        skip_ply_element(&mut r, element, file)?;
    }
    Err(ScanNetError::format(file, "header", "no `vertex` element"))
}

/// Reads over an element that precedes `vertex` (rare, but legal PLY).
fn skip_ply_element<R: Read>(r: &mut R, element: &PlyElement, file: &Path) -> Result<()> {
    let mut buf = [0u8; 8];
    let sink = |r: &mut R, n: u64, what: &str| -> Result<()> {
        let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| ScanNetError::io(file, e))?;
        if copied != n {
            return Err(ScanNetError::format(file, what, "file truncated"));
        }
        Ok(())
    };
    for i in 0..element.count {
        let what = format!("{} {i}", element.name);
        for p in &element.properties {
            match p {
                PlyProperty::Scalar { ty, .. } => sink(r, ty.size() as u64, &what)?,
                PlyProperty::List { count, item } => {
                    let b = &mut buf[..count.size()];
                    r.read_exact(b)
                        .map_err(|_| ScanNetError::format(file, &what, "file truncated"))?;
                    let n = count.value(b);
                    if !(0.0..=u32::MAX as f64).contains(&n) {
                        return Err(ScanNetError::format(file, &what, format!("list length {n} is invalid")));
                    }
                    sink(r, n as u64 * item.size() as u64, &what)?;
                }
            }
        }
    }
    Ok(())
}

/// Bounds of the vertices of a PLY stream; errors when there are none or any is non-finite.
pub fn ply_vertex_bounds<R: Read>(r: R, file: &Path) -> Result<VertexBounds> {
    let mut min = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    let mut finite = true;
    let count = for_each_ply_vertex(r, file, |p| {
        for i in 0..3 {
            finite &= p[i].is_finite();
            min[i] = min[i].min(p[i]);
            max[i] = max[i].max(p[i]);
        }
    })?;
    if count == 0 {
        return Err(ScanNetError::format(file, "vertex", "the mesh has no vertices"));
    }
    if !finite {
        return Err(ScanNetError::format(
            file,
            "vertex",
            "a vertex coordinate is not finite",
        ));
    }
    Ok(VertexBounds {
        vertex_count: count,
        min,
        max,
    })
}

/// Reads `<scene>_vh_clean_2.ply` and returns its vertex bounds and the file's sha256.
pub fn read_ply_bounds_hashed(path: &Path) -> Result<(VertexBounds, [u8; 32])> {
    let bytes = std::fs::read(path).map_err(|e| ScanNetError::io(path, e))?;
    let bounds = ply_vertex_bounds(&bytes[..], path)?;
    Ok((bounds, Sha256::digest(&bytes).into()))
}

// ---------------------------------------------------------------------------------------------
// One scan → one `scenes` row

/// A prepared ScanNet scene.
#[derive(Debug)]
pub struct PreparedScene {
    pub record: SceneRecord,
    /// The sample reference frame (anchored at the first view).
    pub reference: ReferenceFrame,
    /// Frames (or metadata records) rejected on the way; the scene is still usable.
    pub rejects: Vec<Reject>,
    pub raw_inputs: Vec<RawInput>,
}

/// A scene that could not be prepared: `rejects` ends with the reason; its samples must be
/// rejected too.
#[derive(Debug)]
pub struct SceneFailure {
    pub rejects: Vec<Reject>,
    pub raw_inputs: Vec<RawInput>,
    /// Why, in a few words, for the samples' rejects.
    pub reason: String,
}

impl SceneFailure {
    /// The failure of scene `scene_id` for `reject` (added to the scene's other rejects).
    fn of_scene(scene_id: &str, mut rejects: Vec<Reject>, raw_inputs: Vec<RawInput>, reject: Reject) -> Self {
        let reason = format!("scene {scene_id} could not be prepared: {}", reject.reason);
        rejects.push(reject);
        SceneFailure {
            rejects,
            raw_inputs,
            reason,
        }
    }

    /// The output of a failed scene: its rejects plus one per sample, given as (file, record).
    pub fn into_output(self, samples: impl IntoIterator<Item = (String, String)>) -> SceneOutput {
        let mut rejects = self.rejects;
        rejects.extend(
            samples
                .into_iter()
                .map(|(file, record)| Reject::new(file, record, &self.reason)),
        );
        SceneOutput {
            scene: None,
            samples: vec![],
            sample_files: vec![],
            rejects,
            raw_inputs: self.raw_inputs,
        }
    }
}

/// Whether `<root>/scans/<scene_id>` (or, with `exports`, `<exports>/<scene_id>`) exists.
pub fn scan_exists(root: &InputRoot, exports: Option<&InputRoot>, scene_id: &str) -> bool {
    root.dir.join("scans").join(scene_id).is_dir()
        || exports.is_some_and(|e| e.dir.join(scene_id).is_dir())
}

/// The reason given to the samples of a scene that has no scan folder.
pub fn missing_scan_reason(root: &InputRoot, scene_id: &str) -> String {
    format!("scene {scene_id} not found: no folder {}:scans/{scene_id}", root.name)
}

/// The dataset name in `scenes` rows.
pub const DATASET: &str = "scannet";

/// A selected frame, decoded and stored.
struct LoadedView {
    index: u64,
    jpeg: Vec<u8>,
    width: u32,
    height: u32,
    /// Intrinsics of the stored image.
    k: Mat3,
    /// Camera-to-world of the stored image.
    c2w: Rigid,
    raw_c2w: Mat4,
    depth: DepthStats,
}

/// A frame with a valid pose.
#[derive(Clone)]
struct Candidate {
    index: u64,
    c2w: Rigid,
    raw_c2w: Mat4,
}

fn mat3_of(m: &Mat4) -> Mat3 {
    [
        [m[0][0], m[0][1], m[0][2]],
        [m[1][0], m[1][1], m[1][2]],
        [m[2][0], m[2][1], m[2][2]],
    ]
}

struct SceneReader<'a> {
    root: &'a InputRoot,
    source: ScanSource,
    opts: &'a ViewOptions,
    k_color: Mat3,
    k_depth: Mat3,
    /// The colour size the scan's own header or metadata gives (a `.sens` header; the scan `.txt`
    /// beside an export), with where it comes from; every colour image must have it.
    color_size: Option<(u32, u32, String)>,
    rejects: Vec<Reject>,
}

impl SceneReader<'_> {
    fn reject(&mut self, e: &ScanNetError) {
        self.rejects
            .push(Reject::new(self.root.label(e.file()), e.record(), e.reason()));
    }

    fn depth_stats(&self, index: u64) -> Result<(DepthImage, DepthStats)> {
        let depth = self.source.decode_depth(index)?;
        validate_intrinsics(&self.k_depth, depth.width, depth.height).map_err(|e| {
            ScanNetError::format(
                &self.source.depth_file(index),
                format!("frame {index}"),
                format!("the {}x{} depth image does not fit the depth intrinsics: {e}", depth.width, depth.height),
            )
        })?;
        let map = DepthMap::new(depth.width, depth.height, &depth.data, 1.0 / depth.depth_shift as f64)
            .map_err(|e| ScanNetError::format(&self.source_path(), format!("frame {index}"), e.to_string()))?;
        let stats = depth_histogram(&map, &self.opts.depth_bins);
        Ok((depth, stats))
    }

    /// Decodes a frame's colour (and depth unless its statistics are known) and stores the image.
    fn load(&self, c: &Candidate, depth: Option<DepthStats>) -> Result<LoadedView> {
        let record = format!("frame {}", c.index);
        let color_file = self.source.color_file(c.index);
        // A JPEG is decoded at the DCT scale Pillow's draft mode would pick for the stored size
        // (1/2 for ScanNet's 1296×968 → 518 wide), then resized the rest of the way.
        let (rgb, (width, height)) = match self.source.color_jpeg(c.index)? {
            Some(bytes) => {
                let jpeg_err = |e: ImagingError| {
                    ScanNetError::format(&color_file, &record, format!("cannot decode Jpeg colour: {e}"))
                };
                let (w, h) = jpeg_size(&bytes).map_err(jpeg_err)?;
                let (tw, th) = match self.opts.size_rule.plan(w, h).first() {
                    Some(ImageOp::Resize { width, height }) => (*width, *height),
                    _ => (w, h),
                };
                let decoded = decode_jpeg_for_resize(&bytes, tw, th).map_err(jpeg_err)?;
                (decoded.image, decoded.full_size)
            }
            None => {
                let rgb = self.source.decode_color(c.index)?;
                let size = rgb.dimensions();
                (rgb, size)
            }
        };
        if let Some((w, h, from)) = &self.color_size {
            if (width, height) != (*w, *h) {
                return Err(ScanNetError::format(
                    &color_file,
                    &record,
                    format!("the colour image is {width}x{height} but {from} says {w}x{h}"),
                ));
            }
        }
        validate_intrinsics(&self.k_color, width, height).map_err(|e| {
            ScanNetError::format(
                &color_file,
                &record,
                format!("the {width}x{height} colour image does not fit the colour intrinsics: {e}"),
            )
        })?;
        let depth = match depth {
            Some(d) => d,
            None => self.depth_stats(c.index)?.1,
        };
        let file = self.source_path();
        let image_err = |e: String| ScanNetError::format(&file, &record, e);
        let plan = self.opts.size_rule.plan(width, height);
        let image = CameraImage::apply_all_from_reduced(rgb, (width, height), self.k_color, &plan)
            .map_err(|e| image_err(e.to_string()))?;
        let jpeg = encode_jpeg(&image.image, self.opts.jpeg_quality).map_err(|e| image_err(e.to_string()))?;
        Ok(LoadedView {
            index: c.index,
            jpeg,
            width: image.image.width(),
            height: image.image.height(),
            k: image.k,
            c2w: image.adjust_pose(&c.c2w),
            raw_c2w: c.raw_c2w,
            depth,
        })
    }

    fn source_path(&self) -> PathBuf {
        match &self.source {
            ScanSource::Sens(r) => r.path().to_path_buf(),
            ScanSource::Export(e) => e.dir.clone(),
        }
    }

    /// Loads the candidates not tried yet into `tried`, in parallel (on the pool this runs on, so
    /// that the views of one scene spread over idle workers); `depth` gives known statistics.
    fn load_missing<'c>(
        &self,
        wanted: impl Iterator<Item = (&'c Candidate, Option<DepthStats>)>,
        tried: &mut BTreeMap<u64, Result<LoadedView>>,
    ) {
        let missing: Vec<(&Candidate, Option<DepthStats>)> = wanted.filter(|(c, _)| !tried.contains_key(&c.index)).collect();
        let loaded: Vec<(u64, Result<LoadedView>)> = missing
            .into_par_iter()
            .map(|(c, depth)| (c.index, self.load(c, depth)))
            .collect();
        tried.extend(loaded);
    }

    /// Uniform selection; a frame that fails to decode is rejected and the selection redone
    /// without it. The picks are loaded in parallel, but a frame's failure is rejected only when
    /// the one-at-a-time order (picks in order, stopping at the first failure) reaches it, so the
    /// rejects and the views are the same whatever the thread count.
    fn select_uniform(&mut self, mut pool: Vec<Candidate>) -> Vec<LoadedView> {
        let mut tried: BTreeMap<u64, Result<LoadedView>> = BTreeMap::new();
        loop {
            let picks: Vec<Candidate> = select_uniform(pool.len(), self.opts.num_views)
                .into_iter()
                .map(|i| pool[i].clone())
                .collect();
            self.load_missing(picks.iter().map(|c| (c, None)), &mut tried);
            match picks.iter().find(|c| tried[&c.index].is_err()) {
                Some(c) => {
                    if let Some(Err(e)) = tried.remove(&c.index) {
                        self.reject(&e);
                    }
                    pool.retain(|p| p.index != c.index);
                }
                None => {
                    return picks
                        .iter()
                        .filter_map(|c| tried.remove(&c.index).and_then(|r| r.ok()))
                        .collect()
                }
            }
        }
    }

    /// Coverage selection over up to `max_candidates` evenly spaced frames (their depth read in
    /// parallel; rejects in frame order, as one thread would give them).
    fn select_coverage(&mut self, pool: Vec<Candidate>, params: &CoverageParams) -> Vec<LoadedView> {
        let considered: Vec<&Candidate> = select_uniform(pool.len(), params.max_candidates)
            .into_iter()
            .map(|i| &pool[i])
            .collect();
        let depths: Vec<Result<(Vec<[i32; 3]>, DepthStats)>> = considered
            .par_iter()
            .map(|c| {
                let (depth, stats) = self.depth_stats(c.index)?;
                let map = DepthMap::new(depth.width, depth.height, &depth.data, 1.0 / depth.depth_shift as f64)
                    .expect("checked by depth_stats");
                Ok((visible_voxels(&map, &self.k_depth, &c.c2w, params), stats))
            })
            .collect();
        let mut candidates: Vec<(Candidate, Vec<[i32; 3]>, DepthStats)> = Vec::new();
        for (c, result) in considered.into_iter().zip(depths) {
            match result {
                Ok((voxels, stats)) => candidates.push((c.clone(), voxels, stats)),
                Err(e) => self.reject(&e),
            }
        }
        let mut tried: BTreeMap<u64, Result<LoadedView>> = BTreeMap::new();
        loop {
            let voxels: Vec<Vec<[i32; 3]>> = candidates.iter().map(|(_, v, _)| v.clone()).collect();
            let picks = select_coverage(&voxels, self.opts.num_views);
            self.load_missing(
                picks.iter().map(|&i| (&candidates[i].0, Some(candidates[i].2.clone()))),
                &mut tried,
            );
            match picks.iter().position(|&i| tried[&candidates[i].0.index].is_err()) {
                Some(k) => {
                    let i = picks[k];
                    if let Some(Err(e)) = tried.remove(&candidates[i].0.index) {
                        self.reject(&e);
                    }
                    candidates.remove(i);
                }
                None => {
                    return picks
                        .iter()
                        .filter_map(|&i| tried.remove(&candidates[i].0.index).and_then(|r| r.ok()))
                        .collect()
                }
            }
        }
    }
}

/// Prepares `<root>/scans/<scene_id>` (raw `.sens` or export folders; with `exports`, the
/// SensReader export `<exports>/<scene_id>/` when there is one): validates every frame's pose,
/// selects and decodes `opts.num_views` views, stores them at the configured size with their
/// geometry in the reference frame of the first one. Bad frames are rejects; the scene fails only
/// when no view is left or the scan cannot be read at all.
pub fn prepare_scene(
    root: &InputRoot,
    exports: Option<&InputRoot>,
    scene_id: &str,
    opts: &ViewOptions,
) -> std::result::Result<PreparedScene, SceneFailure> {
    let scan_dir = root.dir.join("scans").join(scene_id);
    let mut rejects = Vec::new();
    let mut raw_inputs = Vec::new();
    let fail = |rejects, raw_inputs, reject| SceneFailure::of_scene(scene_id, rejects, raw_inputs, reject);
    // With --scannet-exports, the scene's SensReader export there is its frame source; otherwise
    // the `.sens` or the export in `scans/<scene>/` (today's layouts).
    let export_dir = exports
        .map(|e| (e, e.dir.join(scene_id)))
        .filter(|(_, dir)| ExportScan::is_export(dir));
    let (source_root, source_dir) = match &export_dir {
        Some((e, dir)) => (*e, dir.clone()),
        None => (root, scan_dir.clone()),
    };
    if !scan_dir.is_dir() && export_dir.is_none() {
        let reject = Reject::new(root.label(&scan_dir), scene_id, "scan folder not found");
        return Err(fail(rejects, raw_inputs, reject));
    }
    // Metadata: optional (the export does not write it); without it the alignment is identity.
    let meta_path = scan_dir.join(format!("{scene_id}.txt"));
    let mut meta = None;
    if meta_path.is_file() {
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                raw_inputs.push(raw_input_of_bytes(&root.label(&meta_path), &bytes));
                let parsed = String::from_utf8(bytes)
                    .map_err(|e| ScanNetError::format(&meta_path, "text", format!("not UTF-8: {e}")))
                    .and_then(|text| parse_scan_meta(&text, &meta_path));
                match parsed {
                    Ok(m) => meta = Some(m),
                    Err(e) => rejects.push(Reject::new(
                        root.label(&meta_path),
                        e.record(),
                        format!("{}; axis alignment taken as identity", e.reason()),
                    )),
                }
            }
            Err(e) => rejects.push(Reject::new(root.label(&meta_path), "whole file", e.to_string())),
        }
    }
    // A `.sens` is indexed here (its frame headers, seeking over payloads) and hashed beside the
    // rest of the scene's work: the sha256 pass over every byte is one serial stream, and run on
    // its own it leaves the other workers idle at the end of a run (BENCHMARKS.md, issue 11).
    let source = match ScanSource::open(&source_dir, scene_id, false) {
        Ok((source, _)) => source,
        Err(e) => {
            let reject = Reject::new(source_root.label(e.file()), e.record(), e.reason());
            return Err(fail(rejects, raw_inputs, reject));
        }
    };
    let sens_path = match &source {
        ScanSource::Sens(r) => Some(r.path().to_path_buf()),
        ScanSource::Export(_) => None,
    };
    // Where the `.sens` entry goes among the raw inputs (reject labels list them in order), and
    // what the scene reports if hashing fails.
    let sens_entry_at = raw_inputs.len();
    let before_hashing = (rejects.clone(), raw_inputs.clone());
    // The hash first on this thread, the views open to idle workers: at the end of a run the
    // unsplittable stream is then not what is left.
    let (digest, prepared) = rayon::join(
        || sens_path.as_deref().map(|path| root.hash_cache.sha256(path).map(|(sha256, _)| (path, sha256))),
        || select_and_store(root, source_root, &source_dir, scene_id, meta, &meta_path, source, opts, rejects, raw_inputs),
    );
    let sens_entry = match digest {
        None => None,
        Some(Ok((path, sha256))) => Some(RawInput {
            path: source_root.label(path),
            kind: RawInputKind::File,
            sha256,
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        }),
        Some(Err(e)) => {
            let path = sens_path.as_deref().expect("hashed only for a .sens");
            let (rejects, raw_inputs) = before_hashing;
            let reject = Reject::new(source_root.label(path), "whole file", format!("cannot hash: {e:#}"));
            return Err(fail(rejects, raw_inputs, reject));
        }
    };
    let mut prepared = prepared;
    if let Some(entry) = sens_entry {
        match &mut prepared {
            Ok(p) => p.raw_inputs.insert(sens_entry_at, entry),
            Err(f) => f.raw_inputs.insert(sens_entry_at, entry),
        }
    }
    prepared
}

/// The part of [`prepare_scene`] after the scan is opened: header checks, pose validation, view
/// selection and loading, the scene record.
#[allow(clippy::too_many_arguments)]
fn select_and_store(
    root: &InputRoot,
    source_root: &InputRoot,
    source_dir: &Path,
    scene_id: &str,
    meta: Option<ScanMeta>,
    meta_path: &Path,
    source: ScanSource,
    opts: &ViewOptions,
    mut rejects: Vec<Reject>,
    mut raw_inputs: Vec<RawInput>,
) -> std::result::Result<PreparedScene, SceneFailure> {
    let fail = |rejects, raw_inputs, reject| SceneFailure::of_scene(scene_id, rejects, raw_inputs, reject);
    match &source {
        ScanSource::Sens(r) => {
            if let Some(t) = r.truncation() {
                let total = r.header().num_frames;
                let kept = r.frames().len();
                rejects.push(Reject::new(
                    source_root.label(t.file()),
                    t.record(),
                    format!(
                        "{}; frames {kept}..{total} are lost, frames 0..{kept} are used",
                        t.reason()
                    ),
                ));
            }
        }
        ScanSource::Export(_) => {
            for sub in EXPORT_FOLDERS {
                match RawInput::listing(source_root.name, &source_root.dir, &source_dir.join(sub)) {
                    Ok(input) => raw_inputs.push(input),
                    Err(e) => {
                        let reject = Reject::new(source_root.label(&source_dir.join(sub)), "listing", e.to_string());
                        return Err(fail(rejects, raw_inputs, reject));
                    }
                }
            }
        }
    }
    // The colour size every image must have, from the scan's own header or metadata; what the rest
    // of a file contradicts is rejected, not trusted.
    let meta_label = root.label(meta_path);
    let meta_camera = match meta.as_ref().map(ScanMeta::color_camera).transpose() {
        Ok(camera) => camera.flatten(),
        Err((record, reason)) => {
            rejects.push(Reject::new(&meta_label, record, format!("{reason}; the colour size there is not used")));
            None
        }
    };
    let color_size = match &source {
        ScanSource::Sens(r) => {
            let h = r.header();
            let header_checks = [
                ("intrinsic_color", validate_intrinsics4(&h.intrinsic_color, h.color_width, h.color_height), "colour"),
                ("intrinsic_depth", validate_intrinsics4(&h.intrinsic_depth, h.depth_width, h.depth_height), "depth"),
            ];
            for (field, check, what) in header_checks {
                if let Err(e) = check {
                    let reject = Reject::new(
                        source_root.label(r.path()),
                        format!("header {field}"),
                        format!("{e} (the header's {what} size)"),
                    );
                    return Err(fail(rejects, raw_inputs, reject));
                }
            }
            if let Some((w, h_, _)) = &meta_camera {
                if (*w, *h_) != (h.color_width, h.color_height) {
                    rejects.push(Reject::new(
                        &meta_label,
                        "colorWidth/colorHeight",
                        format!(
                            "{w}x{h_} contradicts the .sens header ({}x{}), which is used",
                            h.color_width, h.color_height
                        ),
                    ));
                }
            }
            Some((h.color_width, h.color_height, "the .sens header".to_string()))
        }
        ScanSource::Export(_) => meta_camera.map(|(w, h, _)| (w, h, format!("{meta_label} (colorWidth, colorHeight)"))),
    };
    let mut reader = SceneReader {
        root: source_root,
        k_color: mat3_of(&source.intrinsic_color()),
        k_depth: mat3_of(&source.intrinsic_depth()),
        color_size,
        source,
        opts,
        rejects,
    };
    let frames = reader.source.frames();
    let total_frames = frames.len();
    let mut pool = Vec::new();
    for f in frames {
        match f.camera_to_world {
            Err(e) => reader.reject(&e),
            Ok(raw) => match validate_pose(&raw) {
                Ok(c2w) => pool.push(Candidate {
                    index: f.index,
                    c2w,
                    raw_c2w: raw,
                }),
                Err(e) => reader.rejects.push(Reject::new(
                    source_root.label(&f.pose_file),
                    format!("frame {}", f.index),
                    e.to_string(),
                )),
            },
        }
    }
    let views = match opts.selection {
        ViewSelection::Uniform => reader.select_uniform(pool),
        ViewSelection::Coverage(params) => reader.select_coverage(pool, &params),
    };
    let rejects = reader.rejects;
    let Some(first) = views.first() else {
        let reject = Reject::new(
            source_root.label(source_dir),
            scene_id,
            format!("no usable frame: none of its {total_frames} frames has a valid pose and decodable images"),
        );
        return Err(fail(rejects, raw_inputs, reject));
    };
    let reference = ReferenceFrame::from_camera(&first.c2w);
    let reference_world_pose = Some(mat4_to_row_major(&first.raw_c2w));
    let views = views
        .into_iter()
        .map(|v| ViewRecord {
            frame_id: v.index.to_string(),
            image: v.jpeg,
            encoding: ENCODING_JPEG.to_string(),
            width: v.width,
            height: v.height,
            geometry: Some(Geometry::new(&reference.camera_to_reference(&v.c2w), &v.k, v.depth)),
        })
        .collect();
    let (axis_alignment, from_metadata) = match &meta {
        Some(m) => (m.axis_alignment, m.axis_alignment_present),
        None => (IDENTITY4, false),
    };
    let record = SceneRecord {
        dataset: DATASET.to_string(),
        scene_id: scene_id.to_string(),
        views,
        reference_world_pose,
        axis_alignment: mat4_to_row_major(&axis_alignment),
        axis_alignment_from_metadata: from_metadata,
    };
    Ok(PreparedScene {
        record,
        reference,
        rejects,
        raw_inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn p() -> &'static Path {
        Path::new("t")
    }

    #[test]
    fn matrix_text_accepts_numpy_nonfinite_tokens() {
        let m = parse_mat4_text("-inf -inf -inf -inf\ninf 0 0 0\nnan 0 1 0\n0 0 0 1\n", p()).unwrap();
        assert_eq!(m[0][0], f64::NEG_INFINITY);
        assert_eq!(m[1][0], f64::INFINITY);
        assert!(m[2][0].is_nan());
        assert_eq!(m[3], [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn matrix_text_errors_name_line_and_token() {
        let e = parse_mat4_text("1 0 0 0\n0 1 x 0\n0 0 1 0\n0 0 0 1", p()).unwrap_err();
        assert_eq!(e.to_string(), "t: line 2: expected a number, found \"x\"");
        let e = parse_mat4_text("1 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1", p()).unwrap_err();
        assert_eq!(e.to_string(), "t: line 1: expected 4 numbers, found 3");
        let e = parse_mat4_text("1 0 0 0\n", p()).unwrap_err();
        assert_eq!(e.to_string(), "t: matrix: expected 4 non-empty lines, found 1");
    }

    #[test]
    fn scan_meta_axis_alignment_optional() {
        let text = "axisAlignment = 0.945519 0.325568 0.000000 -5.384390 -0.325568 0.945519 0.000000 -2.871780 0.000000 0.000000 1.000000 -0.064350 0.000000 0.000000 0.000000 1.000000 \ncolorWidth = 1296\nsceneType = Bedroom / Hotel\n";
        let m = parse_scan_meta(text, p()).unwrap();
        assert!(m.axis_alignment_present);
        assert_eq!(m.axis_alignment[0][3], -5.384390);
        assert_eq!(m.axis_alignment[1][0], -0.325568);
        assert_eq!(m.get_u64("colorWidth"), Some(1296));
        assert_eq!(m.scene_type(), Some("Bedroom / Hotel"));
        let m = parse_scan_meta("colorWidth = 1296\n\n", p()).unwrap();
        assert!(!m.axis_alignment_present);
        assert_eq!(m.axis_alignment, IDENTITY4);
        let e = parse_scan_meta("axisAlignment = 1 0 0\n", p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: axisAlignment: expected 16 numbers (a 4x4 matrix), found 3"
        );
        let e = parse_scan_meta("colorWidth 1296\n", p()).unwrap_err();
        assert!(e.to_string().starts_with("t: line 1: expected `key = value`"), "{e}");
    }

    /// A minimal .sens with raw colour and zlib depth, built by hand.
    fn tiny_sens(frames: &[([f32; 16], [u8; 12], [u16; 4])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(4u32.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"abc");
        for k in 0..4 {
            for i in 0..16 {
                let v: f32 = if i % 5 == 0 { 1.0 + k as f32 } else { 0.0 };
                b.extend(v.to_le_bytes());
            }
        }
        b.extend(0i32.to_le_bytes()); // raw colour
        b.extend(1i32.to_le_bytes()); // zlib depth
        for d in [2u32, 2, 2, 2] {
            b.extend(d.to_le_bytes());
        }
        b.extend(1000f32.to_le_bytes());
        b.extend((frames.len() as u64).to_le_bytes());
        for (pose, color, depth) in frames {
            for v in pose {
                b.extend(v.to_le_bytes());
            }
            b.extend(7u64.to_le_bytes());
            b.extend(8u64.to_le_bytes());
            let raw: Vec<u8> = depth.iter().flat_map(|d| d.to_le_bytes()).collect();
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            io::Write::write_all(&mut z, &raw).unwrap();
            let z = z.finish().unwrap();
            b.extend((color.len() as u64).to_le_bytes());
            b.extend((z.len() as u64).to_le_bytes());
            b.extend(color);
            b.extend(z);
        }
        b.extend(0u64.to_le_bytes()); // no IMU records
        b
    }

    #[test]
    fn sens_reads_selected_frames_and_hash_covers_the_file() {
        let mut pose = [0f32; 16];
        pose[0] = 1.0;
        pose[15] = 1.0;
        let mut bad = [f32::NEG_INFINITY; 16];
        bad[15] = f32::NEG_INFINITY;
        let bytes = tiny_sens(&[
            (pose, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [0, 1000, 2000, 65535]),
            (bad, [0; 12], [5, 6, 7, 8]),
        ]);
        let (r, digest) = SensReader::from_reader(Cursor::new(bytes.clone()), p(), true).unwrap();
        assert_eq!(digest.unwrap(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        assert_eq!(r.header().sensor_name, "abc");
        assert_eq!(r.header().intrinsic_depth[0][0], 3.0);
        assert_eq!(r.frames().len(), 2);
        assert_eq!(r.frames()[0].camera_to_world[0][0], 1.0);
        assert_eq!(r.frames()[1].camera_to_world[2][1], f64::NEG_INFINITY);
        let d = r.decode_depth(1).unwrap();
        assert_eq!(d.data, vec![5, 6, 7, 8]);
        let d = r.decode_depth(0).unwrap();
        assert_eq!(d.data, vec![0, 1000, 2000, 65535]);
        assert_eq!(d.metres(1, 0), 1.0);
        let c = r.decode_color(0).unwrap();
        assert_eq!(c.get_pixel(1, 1).0, [10, 11, 12]);
        let e = r.decode_color(2).unwrap_err();
        assert_eq!(e.to_string(), "t: frame 2: no such frame (the file has 2)");
    }

    /// Views are decoded in parallel, but a frame that fails is rejected only when loading one
    /// frame at a time (the picks in order, stopping at the first failure, then selecting again
    /// without it) would have tried it: the same rejects and views on any number of threads.
    #[test]
    fn failed_frames_are_rejected_as_one_at_a_time_loading_would() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = roomplan_synth::SynthConfig {
            num_scenes: 1,
            frames_per_scene: 12,
            scannet_color_size: (64, 48),
            scannet_depth_size: (32, 24),
            scannet_format: roomplan_synth::ScannetFormat::Sens,
            ..roomplan_synth::SynthConfig::default()
        };
        roomplan_synth::generate(&cfg, tmp.path()).unwrap();
        let root = InputRoot::new("scannet", &tmp.path().join("scannet")).unwrap();
        let scene = std::fs::read_dir(root.dir.join("scans"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .into_string()
            .unwrap();
        let sens = root.dir.join("scans").join(&scene).join(format!("{scene}.sens"));
        // 12 frames, 4 views: the picks are frames 0 4 7 11; without 0, 1 4 8 11; without 0 and 4,
        // 1 5 8 11. Frame 7 is decoded (and fails) in the first round, but one-at-a-time loading
        // stops at frame 0 and never picks 7 again: it is not a reject.
        let offsets: Vec<u64> = SensReader::open(&sens).unwrap().frames().iter().map(|f| f.color_offset).collect();
        let mut bytes = std::fs::read(&sens).unwrap();
        for frame in [0, 4, 7] {
            let at = offsets[frame] as usize;
            bytes[at..at + 16].fill(0);
        }
        std::fs::write(&sens, &bytes).unwrap();
        let opts = ViewOptions {
            num_views: 4,
            ..ViewOptions::default()
        };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let prepared = pool.install(|| prepare_scene(&root, None, &scene, &opts)).unwrap();
            let rejected: Vec<&str> = prepared.rejects.iter().map(|r| r.record.as_str()).collect();
            assert_eq!(rejected, ["frame 0", "frame 4"], "{threads} threads: {:?}", prepared.rejects);
            let views: Vec<&str> = prepared.record.views.iter().map(|v| v.frame_id.as_str()).collect();
            assert_eq!(views, ["1", "5", "8", "11"], "{threads} threads");
        }
    }

    #[test]
    fn depth_inflate_checks_the_stream_and_its_length() {
        let zlib = |raw: &[u8]| {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            io::Write::write_all(&mut z, raw).unwrap();
            z.finish().unwrap()
        };
        let raw: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        let inflate = |z: &[u8]| {
            let mut out = [0u8; 201];
            inflate_depth(z, &mut out).map(|n| out[..n].to_vec())
        };
        assert_eq!(inflate(&zlib(&raw)).unwrap(), raw);
        // Shorter than expected, or one byte longer: inflated as is (the caller names both sizes).
        assert_eq!(inflate(&zlib(&raw[..150])).unwrap(), &raw[..150]);
        let long: Vec<u8> = raw.iter().copied().cycle().take(1000).collect();
        assert_eq!(inflate(&zlib(&long[..201])).unwrap(), &long[..201]);
        // Longer still: refused without inflating the rest.
        assert_eq!(
            inflate(&zlib(&long)).unwrap_err(),
            "depth inflates to more than 200 bytes"
        );
        // Cut short, a flipped checksum byte, not zlib at all.
        let z = zlib(&raw);
        let mut flipped = z.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for bad in [&z[..z.len() - 6], &flipped[..], &b"not a zlib stream"[..]] {
            assert_eq!(
                inflate(bad).unwrap_err(),
                "bad zlib depth: corrupt or truncated zlib stream"
            );
        }
    }

    #[test]
    fn sens_truncation_names_the_frame() {
        let pose = [0f32; 16];
        let bytes = tiny_sens(&[(pose, [0; 12], [0; 4]), (pose, [0; 12], [0; 4])]);
        // Cut inside the second frame's colour payload: frame 0 stays readable.
        let cut = bytes.len() - 8 - 20;
        for hash in [false, true] {
            let (r, digest) = SensReader::from_reader(Cursor::new(bytes[..cut].to_vec()), p(), hash).unwrap();
            let msg = r.truncation().unwrap().to_string();
            assert!(msg.starts_with("t: frame 1: file truncated"), "{msg}");
            assert_eq!(r.frames().len(), 1);
            assert_eq!(r.decode_depth(0).unwrap().data, vec![0; 4]);
            if hash {
                assert_eq!(digest.unwrap(), <[u8; 32]>::from(Sha256::digest(&bytes[..cut])));
            }
        }
        let e = SensReader::from_reader(Cursor::new(bytes[..10].to_vec()), p(), false)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("t: header: "), "{e}");
    }

    fn ply(props: &str, vertices: &[Vec<u8>], extra: &str) -> Vec<u8> {
        let mut b = format!(
            "ply\nformat binary_little_endian 1.0\ncomment x\n{extra}element vertex {}\n{props}element face 0\nproperty list uchar int vertex_indices\nend_header\n",
            vertices.len()
        )
        .into_bytes();
        for v in vertices {
            b.extend(v);
        }
        b
    }

    fn vertex(xyz: [f32; 3], rgba: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = xyz.iter().flat_map(|f| f.to_le_bytes()).collect();
        v.extend(rgba);
        v
    }

    #[test]
    fn ply_bounds_with_and_without_alpha() {
        for (props, rgba) in [
            ("property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n", &[1u8, 2, 3, 255][..]),
            ("property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n", &[1u8, 2, 3][..]),
        ] {
            let b = ply(props, &[vertex([0.0, -1.0, 2.0], rgba), vertex([4.0, 3.0, -2.0], rgba)], "");
            let bounds = ply_vertex_bounds(&b[..], p()).unwrap();
            assert_eq!(bounds.vertex_count, 2);
            assert_eq!(bounds.min, [0.0, -1.0, -2.0]);
            assert_eq!(bounds.max, [4.0, 3.0, 2.0]);
            assert_eq!(bounds.center(), [2.0, 1.0, 0.0]);
        }
        // Properties in another order are found by name.
        let props = "property uchar red\nproperty float z\nproperty float y\nproperty float x\n";
        let mut v = vec![9u8];
        v.extend([5f32, 6.0, 7.0].iter().flat_map(|f| f.to_le_bytes()));
        let bounds = ply_vertex_bounds(&ply(props, &[v], "")[..], p()).unwrap();
        assert_eq!(bounds.min, [7.0, 6.0, 5.0]);
    }

    #[test]
    fn ply_errors() {
        let props = "property float x\nproperty float y\nproperty float z\n";
        let mut b = ply(props, &[vertex([0.0; 3], &[]), vertex([1.0; 3], &[])], "");
        b.truncate(b.len() - 5);
        let e = ply_vertex_bounds(&b[..], p()).unwrap_err();
        assert!(e.to_string().starts_with("t: vertex 1: truncated"), "{e}");
        let b = b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n";
        let e = ply_vertex_bounds(&b[..], p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: header line 2: format ascii is not supported; expected binary_little_endian"
        );
        let b = ply("property float x\nproperty float y\n", &[], "");
        let e = ply_vertex_bounds(&b[..], p()).unwrap_err();
        assert_eq!(e.to_string(), "t: header: vertex element lacks x, y or z");
    }
}
