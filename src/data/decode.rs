//! Image decoding with bounded memory. An image's dimensions are read from its header first and
//! an image above the pixel limit is refused by name before anything is allocated for it; the
//! images being decoded at once hold at most that many pixels in total, whatever the number of
//! threads, so a decompression bomb costs nothing and a folder of large images no more than one.

use std::io::{BufRead, BufReader, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::preprocess::Rgb8;
use crate::error::{Error, Result};

/// The default pixel limit: Pillow's own decompression-bomb threshold
/// (`PIL.Image.MAX_IMAGE_PIXELS`), which the reference pipelines read the paper's data sets
/// through, so any image they take without a warning is taken here too.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// Sets the largest image (width × height) decoded; larger ones are refused by path.
pub fn set_max_image_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

/// Pixels of the images being decoded now, across threads.
struct Budget {
    in_flight: Mutex<u64>,
    freed: Condvar,
}

static BUDGET: Budget = Budget {
    in_flight: Mutex::new(0),
    freed: Condvar::new(),
};

/// A share of the budget, given back when dropped.
struct Permit(u64);

impl Budget {
    /// Waits until `pixels` fit within `cap` beside the images in flight (one image alone
    /// always fits, so no request waits forever).
    fn acquire(&self, pixels: u64, cap: u64) -> Permit {
        let mut used = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *used > 0 && used.saturating_add(pixels) > cap {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += pixels;
        Permit(pixels)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = BUDGET
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *used -= self.0;
        BUDGET.freed.notify_all();
    }
}

/// Decodes a PNG or JPEG file into RGB, compositing any alpha onto white as `transformers` 5
/// does.
pub fn decode(path: &Path) -> Result<Rgb8> {
    decode_file_then(path, |img| img)
}

/// Decodes the file at `path` and hands the image to `use_it`, all within the decoding budget
/// (so the decoded image and what `use_it` derives from it count until it returns).
pub fn decode_file_then<T>(path: &Path, use_it: impl FnOnce(Rgb8) -> T) -> Result<T> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    decode_then(BufReader::new(file), use_it).map_err(|reason| Error::Data {
        path: path.to_path_buf(),
        row: None,
        reason,
    })
}

/// Decodes an encoded image from `reader` and hands it to `use_it` within the decoding budget.
pub fn decode_then<R: BufRead + Seek, T>(
    reader: R,
    use_it: impl FnOnce(Rgb8) -> T,
) -> std::result::Result<T, String> {
    let max = MAX_PIXELS.load(Ordering::Relaxed);
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    let mut limits = Limits::default();
    // The decoder's own allocation cap, sized for the largest image allowed (16-bit RGBA).
    limits.max_alloc = Some(max.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max {
        return Err(format!(
            "the image is {width}×{height} = {pixels} pixels, above the limit of {max} \
             (raise it with --max-image-pixels)"
        ));
    }
    let _permit = BUDGET.acquire(pixels.max(1), max);
    let img =
        DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(use_it(to_rgb(img)))
}

fn to_rgb(img: DynamicImage) -> Rgb8 {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_alpha() {
        img.to_rgba8()
            .pixels()
            .flat_map(|p| {
                let a = p[3] as u32;
                [0, 1, 2].map(|c| ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8)
            })
            .collect()
    } else {
        img.to_rgb8().into_raw()
    };
    Rgb8 {
        width,
        height,
        data,
    }
}
