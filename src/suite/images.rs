//! The suite's procedural images: every 32×32 picture draws all factors at random (a striped,
//! tinted background, one solid shape, a few dots, sensor noise); each task asks about one
//! factor. The tasks therefore see the same kind of pixels and conflict when merged.
//!
//! Every image is a pure function of (seed, task, split, index), so generation is parallel and
//! the same seed gives the same bytes.

use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Image side in pixels.
pub const SIDE: usize = 32;

/// A factor of variation drawn in every image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// Hue of the shape.
    Colour,
    /// Colour of the 2-px frame around the image.
    Frame,
    /// Orientation of the background stripes.
    Stripes,
    /// Period of the background stripes.
    Frequency,
    /// Tint of the background.
    Background,
    /// Colour of the dots (a pretraining target, not a task).
    DotColour,
    /// Amplitude of the stripes (a pretraining target, not a task).
    Contrast,
    /// Lightness of the shape (a pretraining target, not a task).
    Lightness,
    /// 3×3 grid cell of the shape's centre (nuisance: the tiny ViT does not learn it in budget).
    Position,
    /// Kind of shape (nuisance).
    Shape,
    /// Radius of the shape (nuisance).
    Size,
    /// Number of dots (nuisance).
    Count,
}

/// Every factor, in drawing order (the enum's discriminant order).
pub const FACTORS: [Factor; 12] = [
    Factor::Colour,
    Factor::Frame,
    Factor::Stripes,
    Factor::Frequency,
    Factor::Background,
    Factor::DotColour,
    Factor::Contrast,
    Factor::Lightness,
    Factor::Position,
    Factor::Shape,
    Factor::Size,
    Factor::Count,
];

/// The factors pretraining learns, jointly and in full (the generative factors that are not
/// nuisance).
pub const PRETRAINING_FACTORS: [Factor; 8] = [
    Factor::Colour,
    Factor::Frame,
    Factor::Stripes,
    Factor::Frequency,
    Factor::Background,
    Factor::DotColour,
    Factor::Contrast,
    Factor::Lightness,
];

const HUES: [[f32; 3]; 8] = [
    [0.95, 0.10, 0.10],
    [0.95, 0.55, 0.05],
    [0.95, 0.95, 0.10],
    [0.15, 0.85, 0.15],
    [0.10, 0.90, 0.90],
    [0.15, 0.25, 0.95],
    [0.60, 0.15, 0.90],
    [0.95, 0.40, 0.75],
];
const FRAMES: [[f32; 3]; 6] = [
    [0.85, 0.85, 0.85],
    [0.10, 0.10, 0.10],
    [0.80, 0.45, 0.10],
    [0.10, 0.55, 0.55],
    [0.55, 0.15, 0.55],
    [0.55, 0.75, 0.20],
];
const FRAME_WIDTH: f32 = 2.0;
const BACKGROUNDS: [[f32; 3]; 6] = [
    [0.45, 0.25, 0.25],
    [0.25, 0.45, 0.25],
    [0.25, 0.25, 0.50],
    [0.45, 0.45, 0.20],
    [0.20, 0.42, 0.45],
    [0.42, 0.22, 0.45],
];
const DOT_COLOURS: [[f32; 3]; 6] = [
    [1.0, 1.0, 1.0],
    [0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
    [1.0, 1.0, 0.0],
];
const SIZES: [f32; 5] = [4.0, 5.0, 6.0, 7.0, 8.0];
const CENTRES: [f32; 3] = [8.0, 16.0, 24.0];
const STRIPE_ANGLES: [f32; 6] = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0];
const PERIODS: [f32; 5] = [3.0, 4.0, 5.25, 7.0, 9.5];
const CONTRASTS: [f32; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];
const LIGHTNESS: [f32; 5] = [0.3, 0.475, 0.65, 0.825, 1.0];
const COUNTS: [usize; 5] = [1, 2, 3, 4, 5];
const NOISE: f32 = 0.03;

impl Factor {
    /// The names of this factor's values, in label order.
    fn value_names(self) -> &'static [&'static str] {
        match self {
            Self::Colour => &[
                "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink",
            ],
            Self::Frame => &["silver", "black", "orange", "teal", "plum", "lime"],
            Self::Stripes => &["0deg", "30deg", "60deg", "90deg", "120deg", "150deg"],
            Self::Frequency => &["period-3", "period-4", "period-5", "period-7", "period-9"],
            Self::Background => &["rose", "moss", "navy", "olive", "teal", "plum"],
            Self::DotColour => &["white", "black", "red", "green", "blue", "yellow"],
            Self::Contrast => &["c10", "c30", "c50", "c70", "c90"],
            Self::Lightness => &["l30", "l48", "l65", "l83", "l100"],
            Self::Position => &[
                "top-left",
                "top",
                "top-right",
                "left",
                "centre",
                "right",
                "bottom-left",
                "bottom",
                "bottom-right",
            ],
            Self::Shape => &["circle", "square", "triangle", "cross", "ring"],
            Self::Size => &["r4", "r5", "r6", "r7", "r8"],
            Self::Count => &["one", "two", "three", "four", "five"],
        }
    }

    /// Number of values.
    pub fn num_classes(self) -> usize {
        self.value_names().len()
    }

    /// The factor's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Colour => "colour",
            Self::Frame => "frame",
            Self::Stripes => "stripes",
            Self::Frequency => "frequency",
            Self::Background => "background",
            Self::DotColour => "dotcolour",
            Self::Contrast => "contrast",
            Self::Lightness => "lightness",
            Self::Position => "position",
            Self::Shape => "shape",
            Self::Size => "size",
            Self::Count => "count",
        }
    }
}

/// A task of the suite: one factor read either in full or with its values grouped crosswise
/// (value v is class v mod `classes`). A grouped task re-reads the factor of a full one with
/// another partition, so the two tasks' fine-tunes pull the same features apart: they conflict
/// when merged, which is what learned coefficients are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// Folder name under `models/`, `heads/` and `data/`.
    pub name: &'static str,
    /// The factor it reads.
    pub factor: Factor,
    /// Number of classes (the factor's value count, or the group count).
    pub classes: usize,
}

impl Task {
    const fn new(name: &'static str, factor: Factor, classes: usize) -> Self {
        Self {
            name,
            factor,
            classes,
        }
    }

    /// The class of a sample.
    pub fn label(&self, sample: &Sample) -> usize {
        sample.labels[self.factor as usize] % self.classes
    }

    /// Class folder names in label order; numbered so that ImageFolder's sorted order is the
    /// label order, a grouped class named by its values ("0-red+cyan").
    pub fn class_names(&self) -> Vec<String> {
        let values = self.factor.value_names();
        (0..self.classes)
            .map(|c| {
                let members: Vec<&str> = values
                    .iter()
                    .skip(c)
                    .step_by(self.classes)
                    .copied()
                    .collect();
                format!("{c}-{}", members.join("+"))
            })
            .collect()
    }
}

/// The suite's eight tasks, in order.
pub const TASKS: [Task; 8] = [
    Task::new("colour", Factor::Colour, 8),
    Task::new("frame", Factor::Frame, 6),
    Task::new("stripes", Factor::Stripes, 6),
    Task::new("frequency", Factor::Frequency, 5),
    Task::new("background", Factor::Background, 6),
    // Grouped tasks: background tints in pairs, complementary hues, orthogonal orientations.
    Task::new("bgpair", Factor::Background, 3),
    Task::new("huepair", Factor::Colour, 4),
    Task::new("stripepair", Factor::Stripes, 3),
];

/// One generated image: RGB bytes (row-major, 32×32×3) and the class of every factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
    /// Class per factor, in [`FACTORS`] order.
    pub labels: [usize; FACTORS.len()],
}

/// Where an image comes from; its bytes are a pure function of this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey {
    /// The suite's seed.
    pub seed: u64,
    /// Task index.
    pub task: usize,
    /// 0 for train, 1 for test.
    pub split: usize,
    /// Index within the split.
    pub index: usize,
}

impl ImageKey {
    fn rng(self) -> ChaCha8Rng {
        let mut k = splitmix(self.seed ^ 0x5017e_u64);
        for v in [self.task, self.split, self.index] {
            k = splitmix(k ^ v as u64);
        }
        ChaCha8Rng::seed_from_u64(k)
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// Whether pixel centre (x, y) is inside shape `kind` of radius `r` centred at (cx, cy).
fn inside(kind: usize, x: f32, y: f32, cx: f32, cy: f32, r: f32) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    match kind {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs().max(dy.abs()) <= 0.88 * r,
        2 => {
            let t = (dy + r) / (1.9 * r);
            dy >= -r && dy <= 0.9 * r && dx.abs() <= t * 1.1 * r
        }
        3 => {
            let w = 0.38 * r;
            (dx.abs() <= w && dy.abs() <= r) || (dy.abs() <= w && dx.abs() <= r)
        }
        _ => {
            let d2 = dx * dx + dy * dy;
            d2 <= r * r && d2 >= (0.55 * r) * (0.55 * r)
        }
    }
}

/// Renders the image of `key`, every factor drawn at random except `balanced`, whose class
/// cycles with the index so that a task's classes are equally frequent.
// One function on purpose: the random draws happen in one fixed order, which every seed's
// images (and the suite's recipe version) depend on; split, that order would be easy to break.
pub fn render(key: ImageKey, balanced: Factor) -> Sample {
    let mut rng = key.rng();
    let mut labels = [0usize; FACTORS.len()];
    for (l, f) in labels.iter_mut().zip(FACTORS) {
        *l = rng.random_range(0..f.num_classes());
    }
    labels[balanced as usize] = key.index % balanced.num_classes();
    let label = |f: Factor| labels[f as usize];
    let n = SIDE * SIDE;
    let mut img = vec![0f32; n * 3];
    // Background: a tint times oriented sinusoidal stripes of random phase.
    let theta = (STRIPE_ANGLES[label(Factor::Stripes)] + uniform(&mut rng, -5.0, 5.0)).to_radians();
    let period = PERIODS[label(Factor::Frequency)] * uniform(&mut rng, 0.95, 1.05);
    let phase = uniform(&mut rng, 0.0, std::f32::consts::TAU);
    let base = BACKGROUNDS[label(Factor::Background)];
    let tint: [f32; 3] = std::array::from_fn(|c| base[c] * uniform(&mut rng, 0.85, 1.15));
    let amp = CONTRASTS[label(Factor::Contrast)];
    let (cos, sin) = (theta.cos(), theta.sin());
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let u = (px * cos + py * sin) * (std::f32::consts::TAU / period) + phase;
            let stripe = 0.5 + 0.5 * u.sin();
            for c in 0..3 {
                img[(y * SIDE + x) * 3 + c] = tint[c] * (1.0 - amp + 2.0 * amp * stripe);
            }
        }
    }
    // The frame: every pixel whose centre lies within FRAME_WIDTH of an edge.
    let frame = FRAMES[label(Factor::Frame)];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let edge = |v: usize| (v as f32 + 0.5).min(SIDE as f32 - v as f32 - 0.5);
            if edge(x) < FRAME_WIDTH || edge(y) < FRAME_WIDTH {
                img[(y * SIDE + x) * 3..][..3].copy_from_slice(&frame);
            }
        }
    }
    // The shape.
    let pos = label(Factor::Position);
    let cx = CENTRES[pos % 3] + uniform(&mut rng, -1.0, 1.0);
    let cy = CENTRES[pos / 3] + uniform(&mut rng, -1.0, 1.0);
    let r = SIZES[label(Factor::Size)] * uniform(&mut rng, 0.95, 1.05);
    let hue = HUES[label(Factor::Colour)];
    let light = LIGHTNESS[label(Factor::Lightness)];
    let colour: [f32; 3] = std::array::from_fn(|c| {
        ((hue[c] + uniform(&mut rng, -0.05, 0.05)) * light).clamp(0.0, 1.0)
    });
    let kind = label(Factor::Shape);
    for y in 0..SIDE {
        for x in 0..SIDE {
            if inside(kind, x as f32 + 0.5, y as f32 + 0.5, cx, cy, r) {
                img[(y * SIDE + x) * 3..][..3].copy_from_slice(&colour);
            }
        }
    }
    // Dots (3×3), away from the shape's box and from each other when possible.
    let dot = DOT_COLOURS[label(Factor::DotColour)];
    let mut placed: Vec<(usize, usize)> = Vec::new();
    for _ in 0..COUNTS[label(Factor::Count)] {
        let mut at = (0, 0);
        for _ in 0..30 {
            at = (rng.random_range(0..30usize), rng.random_range(0..30usize));
            let (x, y) = (at.0 as f32, at.1 as f32);
            let near_shape = (x + 1.5 - cx).abs() < r + 2.5 && (y + 1.5 - cy).abs() < r + 2.5;
            let near_dot = placed
                .iter()
                .any(|&(px, py)| px.abs_diff(at.0) < 5 && py.abs_diff(at.1) < 5);
            if !near_shape && !near_dot {
                break;
            }
        }
        placed.push(at);
        for y in at.1..at.1 + 3 {
            for x in at.0..at.0 + 3 {
                img[(y * SIDE + x) * 3..][..3].copy_from_slice(&dot);
            }
        }
    }
    // Sensor noise, then 8-bit quantisation.
    let noise = Normal::new(0.0f32, NOISE).expect("a positive constant σ");
    let pixels = img
        .iter()
        .map(|&v| ((v + noise.sample(&mut rng)).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    Sample { pixels, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_a_function_of_their_key() {
        let key = ImageKey {
            seed: 3,
            task: 1,
            split: 0,
            index: 7,
        };
        let f = Factor::Position;
        assert_eq!(render(key, f), render(key, f));
        assert_eq!(render(key, f).labels[f as usize], 7);
        let other = render(ImageKey { index: 8, ..key }, f);
        assert_ne!(render(key, f).pixels, other.pixels);
    }

    #[test]
    fn class_names_sort_in_label_order_and_groups_partition_the_values() {
        for t in TASKS {
            let names = t.class_names();
            assert_eq!(names.len(), t.classes);
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(sorted, names, "{}", t.name);
            assert_eq!(t.factor.num_classes() % t.classes, 0, "{}", t.name);
        }
        let huepair = TASKS.iter().find(|t| t.name == "huepair").unwrap();
        assert_eq!(huepair.class_names()[0], "0-red+cyan");
        let key = ImageKey {
            seed: 1,
            task: 6,
            split: 1,
            index: 5,
        };
        // Value 5 (blue) falls in group 1 (orange+blue).
        assert_eq!(huepair.label(&render(key, Factor::Colour)), 1);
    }

    #[test]
    fn the_frame_has_its_colour() {
        let key = ImageKey {
            seed: 0,
            task: 1,
            split: 0,
            index: 4,
        };
        let s = render(key, Factor::Frame);
        let want = FRAMES[4].map(|v| v * 255.0);
        // Corner pixel (0, 0) is frame (dots may cover a corner, so check two).
        let ok = [0usize, SIDE * SIDE - 1].iter().any(|&p| {
            (0..3).all(|c| (s.pixels[p * 3 + c] as f32 - want[c]).abs() <= 0.03 * 255.0 * 4.0)
        });
        assert!(ok);
    }
}
