//! Images and data sets: CLIP preprocessing, ImageFolder and Parquet reading, the paper tasks'
//! class names and templates.

mod decode;
mod folder;
mod labeled;
mod parquet;
mod preprocess;
mod tasks;
mod unlabeled;

pub use decode::{DEFAULT_MAX_IMAGE_PIXELS, decode, set_max_image_pixels};
pub use folder::{entries, files_under, is_image};
pub use labeled::{ImageRef, LabeledImages, scan_unlabeled};
pub use preprocess::{Preprocessor, Rgb8, center_crop, resize_bicubic, shortest_edge_size};
pub use tasks::TaskClasses;
pub use unlabeled::{UnlabeledImages, split_for_adaptation};
