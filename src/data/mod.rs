//! Images and data sets: CLIP preprocessing, ImageFolder reading, the paper tasks' class names
//! and templates.

mod folder;
mod preprocess;
mod tasks;

pub use folder::{ImageFolder, files_under, is_image};
pub use preprocess::{Preprocessor, Rgb8, center_crop, decode, resize_bicubic, shortest_edge_size};
pub use tasks::TaskSpec;
