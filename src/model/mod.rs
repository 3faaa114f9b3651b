//! CLIP as pure forwards over named [`Weights`](crate::weights::Weights): merged weights
//! (including ones built inside an autodiff graph) are passed in, never copied into modules.

mod heads;
mod layers;
mod text;
mod tokenizer;
mod vision;

pub use heads::{logits, normalize_rows, read_head, zero_shot_head};
pub use layers::{EncoderLayer, LayerNorm, Linear, LinearKind, NoObserver, Observer, Tap};
pub use text::{TextOutput, text_forward};
pub use tokenizer::{ClipTokenizer, Encoded};
pub use vision::{VisionOutput, VisionTower, vision_forward, vision_prefix};
