//! Images and data sets: CLIP preprocessing, ImageFolder reading.

mod preprocess;

pub use preprocess::{Preprocessor, Rgb8, center_crop, decode, resize_bicubic, shortest_edge_size};
