//! The exact estimator's per-image gradients from one batched backward. A zero leaf (a probe) is
//! added to the output of every operation of the vision tower that holds a merged tensor; images
//! do not interact in the tower, so the probe's gradient is ∂log p(y_i|x_i)/∂output for each
//! image i on its own. With the operation's input, that gives each tensor's per-image gradient
//! (a linear weight's is dY_iᵀ X_i, a bias's Σ_t dY_i, a norm's gain Σ_t dY_i ⊙ x̂_i), squared
//! and summed over the batch: the same Fisher as one backward per image, in one batched forward
//! and one backward that forms no weight gradient at all.

use burn::tensor::Gradients;
use burn::tensor::Tensor;
use burn::tensor::module::layer_norm;

use crate::kernels::outer_squares;
use crate::model::{Observer, Tap, vision_prefix};
use crate::weights::{TensorGrads, Weights};

/// The checkpoint tensors the operation at `tap` holds, as `(name, how its per-image gradient
/// is formed)`.
fn tensors(tap: Tap) -> Vec<(String, Grad)> {
    let prefix = vision_prefix(tap);
    match tap {
        Tap::Embeddings => vec![
            (format!("{prefix}.class_embedding"), Grad::ClassToken),
            (format!("{prefix}.position_embedding.weight"), Grad::Output),
        ],
        Tap::PreNorm | Tap::Norm1(_) | Tap::Norm2(_) | Tap::PostNorm => vec![
            (format!("{prefix}.weight"), Grad::Gain),
            (format!("{prefix}.bias"), Grad::TokenSum),
        ],
        Tap::PatchEmbedding | Tap::Linear(..) | Tap::Projection => vec![
            (format!("{prefix}.weight"), Grad::Outer),
            (format!("{prefix}.bias"), Grad::TokenSum),
        ],
    }
}

/// How a tensor's per-image gradient follows from its operation's input X [B, T, in] and the
/// gradient dY [B, T, out] of its output.
#[derive(Clone, Copy)]
enum Grad {
    /// A linear weight [out, in]: dY_iᵀ X_i.
    Outer,
    /// A bias: Σ_t dY_i.
    TokenSum,
    /// A layer norm's gain: Σ_t dY_i ⊙ x̂_i, x̂ the normalised input.
    Gain,
    /// The class embedding: dY_i at token 0.
    ClassToken,
    /// The position embedding: dY_i itself.
    Output,
}

/// One probed operation: where it is, its input (outside the graph) and the probe.
struct Probed {
    at: Tap,
    input: Tensor<3>,
    probe: Tensor<3>,
}

/// The observer that adds a probe at every operation holding one of `w`'s tensors.
pub(super) struct Probes<'a> {
    w: &'a Weights,
    probed: Vec<Probed>,
}

impl<'a> Probes<'a> {
    /// Probes for the tensors of `w` (the merged ones: the frozen ones need no Fisher).
    pub fn new(w: &'a Weights) -> Self {
        Self {
            w,
            probed: Vec::new(),
        }
    }

    /// Whether any operation was probed (else there is no graph to run backward).
    pub fn any(&self) -> bool {
        !self.probed.is_empty()
    }

    /// Σ_i g_i² over the batch for every tensor of `w`, in its order (None where no probe
    /// reached it), from the backward's `grads`; `eps` is the layer norms' ε.
    pub fn squares(self, grads: &Gradients, eps: f64) -> TensorGrads {
        let mut out: TensorGrads = vec![None; self.w.len()];
        for p in self.probed {
            let Some(dy) = p.probe.grad(grads) else {
                continue;
            };
            for (name, how) in tensors(p.at) {
                let Some(slot) = self.w.index_of(&name) else {
                    continue;
                };
                out[slot] = Some(square_sum(how, &dy, &p.input, eps));
            }
        }
        out
    }
}

/// Σ_i g_i², flat, for a tensor whose per-image gradient is formed `how`.
fn square_sum(how: Grad, dy: &Tensor<3>, input: &Tensor<3>, eps: f64) -> Tensor<1> {
    let flat = |t: Tensor<2>| {
        let [a, b] = t.dims();
        t.reshape([a * b])
    };
    let token_sum = |v: Tensor<3>| {
        let n = v.dims()[2];
        v.sum_dim(1).square().sum_dim(0).reshape([n])
    };
    match how {
        Grad::Outer => flat(outer_squares(dy, input)),
        Grad::TokenSum => token_sum(dy.clone()),
        Grad::Gain => {
            let width = input.dims()[2];
            let ones = Tensor::<1>::ones([width], &input.device());
            token_sum(dy.clone() * layer_norm(input.clone(), ones, None, eps))
        }
        Grad::ClassToken => token_sum(dy.clone().narrow(1, 0, 1)),
        Grad::Output => {
            let [_, t, n] = dy.dims();
            dy.clone().square().sum_dim(0).reshape([t * n])
        }
    }
}

/// `dims` as [B, middle, last]: a [B, n] tensor as [B, 1, n].
fn as_3d<const D: usize>(dims: [usize; D]) -> [usize; 3] {
    [dims[0], dims[1..D - 1].iter().product(), dims[D - 1]]
}

impl Observer for Probes<'_> {
    fn tap<const D: usize>(&mut self, at: Tap, input: &Tensor<D>, output: Tensor<D>) -> Tensor<D> {
        if !tensors(at)
            .iter()
            .any(|(name, _)| self.w.get(name).is_some())
        {
            return output;
        }
        let dims = output.dims();
        let probe = Tensor::<3>::zeros(as_3d(dims), &output.device())
            .autodiff()
            .require_grad();
        self.probed.push(Probed {
            at,
            input: input.clone().inner().reshape(as_3d(input.dims())),
            probe: probe.clone(),
        });
        output + probe.reshape(dims)
    }
}
