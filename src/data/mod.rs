//! Images and data sets: CLIP preprocessing, ImageFolder and Parquet reading, the paper tasks'
//! class names and templates.

mod folder;
mod labeled;
mod parquet;
mod preprocess;
mod tasks;

pub use folder::{files_under, is_image};
pub use labeled::{ImageRef, LabeledImages, scan_unlabeled};
pub use preprocess::{
    Preprocessor, Rgb8, center_crop, decode, decode_bytes, resize_bicubic, shortest_edge_size,
};
pub use tasks::TaskSpec;
