//! CLIP image preprocessing against `transformers`' PIL image processor (fixtures written by
//! `scripts/fixtures/make_clip_fixtures.py`): decode, Pillow bicubic resize, crop, normalise.

use crate::common;

use adamerge::data::{Preprocessor, Rgb8, decode, resize_bicubic, shortest_edge_size};
use common::*;

fn image_from(values: &[f32], width: usize, height: usize) -> Rgb8 {
    Rgb8 {
        width,
        height,
        data: values.iter().map(|&v| v as u8).collect(),
    }
}

#[test]
fn preprocessing_matches_the_pil_image_processor() {
    let expected = read_all(&fixture("clip/preprocessed.safetensors"));
    let pre = Preprocessor::from_dir(&fixture("clip/quick_gelu"), 224).unwrap();
    assert_eq!((pre.shortest_edge, pre.crop), (32, (32, 32)));
    let files = [
        "rgb_37x23.png",
        "rgb_23x37.png",
        "rgb_50x50.png",
        "rgb_19x64.png",
        "rgb_64x19.png",
        "rgba_33x33.png",
        "gray_40x29.png",
        "jpeg_97x71.jpg",
    ];
    // One grey level after normalisation: 1/255 over the smallest std.
    let grey_level = 1.0 / 255.0 / 0.2613 + 1e-6;
    for f in files {
        let decoded = decode(&fixture("clip/images").join(f)).unwrap();
        let want_decoded = &expected[&format!("decoded.{f}")];
        let exact = !f.ends_with(".jpg");
        let decode_diff = decoded
            .data
            .iter()
            .zip(want_decoded)
            .map(|(&a, &b)| (a as f32 - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(decoded.data.len(), want_decoded.len(), "{f}");
        // JPEG decoders may differ a little (chroma upsampling, IDCT rounding): the `image`
        // crate's differs from libjpeg-turbo by at most a few levels on this file.
        assert!(
            decode_diff <= if exact { 0.0 } else { 4.0 },
            "{f}: decode off by {decode_diff}"
        );

        // From Pillow's own decode, the rest of the pipeline is exact.
        let pil = image_from(want_decoded, decoded.width, decoded.height);
        let (h, w) = shortest_edge_size(pil.width, pil.height, 32);
        let resized = resize_bicubic(&pil, w, h);
        let want_resized = &expected[&format!("resized.{f}")];
        assert_eq!(resized.data.len(), want_resized.len(), "{f}: resized size");
        assert!(
            resized
                .data
                .iter()
                .zip(want_resized)
                .all(|(&a, &b)| a as f32 == b),
            "{f}: resize differs from Pillow"
        );
        let want_pixels = &expected[&format!("pixel_values.{f}")];
        assert_close(&pre.pixels(&pil), want_pixels, 1e-6);
        // From our decode: exact for PNG; for JPEG within the decoders' own difference.
        let tol = if exact { 1e-6 } else { 4.0 * grey_level };
        assert_close(&pre.pixels(&decoded), want_pixels, tol);
    }
}

#[test]
fn unreadable_images_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.png");
    std::fs::write(&path, b"not a png").unwrap();
    let err = decode(&path).unwrap_err().to_string();
    assert!(
        err.contains("broken.png") && err.contains("cannot decode"),
        "{err}"
    );
}
