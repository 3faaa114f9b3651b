//! CLIP as pure forwards over named [`Weights`](crate::weights::Weights): merged weights
//! (including ones built inside an autodiff graph) are passed in, never copied into modules.

mod layers;
mod vision;

pub use layers::Activation;
pub use vision::{VisionOutput, vision_forward};
