//! CLIPImageProcessor preprocessing, exactly as `transformers`' PIL backend computes it: RGB
//! conversion (alpha composited onto white), shortest-edge resize with Pillow's 8-bit bicubic,
//! center crop, rescale, normalise, channels first.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// An 8-bit RGB image, rows of `width × 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB bytes.
    pub data: Vec<u8>,
}

/// The settings of a `preprocessor_config.json` that CLIP uses (defaults: OpenAI CLIP's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Preprocessor {
    /// Resize so the shortest edge has this length.
    pub shortest_edge: usize,
    /// Center-crop height and width.
    pub crop: (usize, usize),
    /// Multiplier taking bytes to [0, 1].
    pub rescale_factor: f64,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
}

impl Default for Preprocessor {
    // The constants as `transformers` spells them (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        Self {
            shortest_edge: 224,
            crop: (224, 224),
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    size: Option<serde_json::Value>,
    crop_size: Option<serde_json::Value>,
    rescale_factor: Option<f64>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

impl Preprocessor {
    /// Reads `dir/preprocessor_config.json`, or CLIP's defaults for `image_size` when absent.
    pub fn from_dir(dir: &Path, image_size: usize) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let mut p = Self {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            ..Self::default()
        };
        if !path.is_file() {
            return Ok(p);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            key: "<root>".into(),
            reason: e.to_string(),
        })?;
        let bad = |key: &str| {
            Error::Config {
            path: path.clone(),
            key: key.into(),
            reason: "expected a positive integer or {\"shortest_edge\": n} / {\"height\": h, \"width\": w}".into(),
        }
        };
        if let Some(size) = raw.size {
            p.shortest_edge = match &size {
                serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| bad("size"))? as usize,
                v => v
                    .get("shortest_edge")
                    .and_then(|n| n.as_u64())
                    .ok_or_else(|| bad("size.shortest_edge"))? as usize,
            };
        }
        if let Some(crop) = raw.crop_size {
            p.crop = match &crop {
                serde_json::Value::Number(n) => {
                    let n = n.as_u64().ok_or_else(|| bad("crop_size"))? as usize;
                    (n, n)
                }
                v => {
                    let get = |k: &str| v.get(k).and_then(|n| n.as_u64()).map(|n| n as usize);
                    (
                        get("height").ok_or_else(|| bad("crop_size.height"))?,
                        get("width").ok_or_else(|| bad("crop_size.width"))?,
                    )
                }
            };
        }
        if p.shortest_edge == 0 || p.crop.0 == 0 || p.crop.1 == 0 {
            return Err(bad("size"));
        }
        p.rescale_factor = raw.rescale_factor.unwrap_or(p.rescale_factor);
        p.image_mean = raw.image_mean.unwrap_or(p.image_mean);
        p.image_std = raw.image_std.unwrap_or(p.image_std);
        Ok(p)
    }

    /// Preprocesses one image into channels-first normalised pixels [3, crop_h, crop_w].
    pub fn pixels(&self, img: &Rgb8) -> Vec<f32> {
        let (h, w) = shortest_edge_size(img.width, img.height, self.shortest_edge);
        let resized = resize_bicubic(img, w, h);
        let cropped = center_crop(&resized, self.crop.0, self.crop.1);
        let plane = self.crop.0 * self.crop.1;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in cropped.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let x = (px[c] as f64 * self.rescale_factor) as f32;
                out[c * plane + i] = (x - self.image_mean[c]) / self.image_std[c];
            }
        }
        out
    }
}

/// The (height, width) after resizing the shortest edge to `edge`, the long edge truncated.
pub fn shortest_edge_size(width: usize, height: usize, edge: usize) -> (usize, usize) {
    if width <= height {
        (edge * height / width.max(1), edge)
    } else {
        (edge, edge * width / height.max(1))
    }
}

/// Center crop to (h, w), zero-padding an image that is smaller.
pub fn center_crop(img: &Rgb8, h: usize, w: usize) -> Rgb8 {
    let mut data = vec![0u8; h * w * 3];
    // Offsets of the crop inside the image (floor), or of the image inside the padded crop.
    let (top, pad_top) = if img.height >= h {
        ((img.height - h) / 2, 0)
    } else {
        (0, (h - img.height).div_ceil(2))
    };
    let (left, pad_left) = if img.width >= w {
        ((img.width - w) / 2, 0)
    } else {
        (0, (w - img.width).div_ceil(2))
    };
    for y in 0..h.min(img.height) {
        for x in 0..w.min(img.width) {
            let src = ((top + y) * img.width + left + x) * 3;
            let dst = ((pad_top + y) * w + pad_left + x) * 3;
            data[dst..dst + 3].copy_from_slice(&img.data[src..src + 3]);
        }
    }
    Rgb8 {
        width: w,
        height: h,
        data,
    }
}

const PRECISION_BITS: u32 = 22;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's fixed-point filter taps for one axis: (first input index, taps) per output index.
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|j| bicubic((j as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let taps = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1u32 << PRECISION_BITS) as f64;
                    (if scaled < 0.0 {
                        scaled - 0.5
                    } else {
                        scaled + 0.5
                    }) as i32
                })
                .collect();
            (xmin, taps)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's 8-bit bicubic resize (`Image.resize(..., BICUBIC)`): horizontal pass first into an
/// 8-bit intermediate, then vertical; an axis whose size does not change is skipped.
pub fn resize_bicubic(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width);
        let mut data = vec![0u8; cur.height * width * 3];
        for y in 0..cur.height {
            for (x, (xmin, taps)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (j, &k) in taps.iter().enumerate() {
                        ss += cur.data[(y * cur.width + xmin + j) * 3 + c] as i32 * k;
                    }
                    data[(y * width + x) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb8 {
            width,
            height: cur.height,
            data,
        };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height);
        let mut data = vec![0u8; height * cur.width * 3];
        for (y, (ymin, taps)) in coeffs.iter().enumerate() {
            for x in 0..cur.width {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (j, &k) in taps.iter().enumerate() {
                        ss += cur.data[((ymin + j) * cur.width + x) * 3 + c] as i32 * k;
                    }
                    data[(y * cur.width + x) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb8 {
            width: cur.width,
            height,
            data,
        };
    }
    cur
}
