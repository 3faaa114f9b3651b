//! The AdaMerging objective: the mean Shannon entropy of the predicted class distribution.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

/// mean_b H(softmax(logits_b)), H(p) = −Σ_c p_c log p_c, as a one-element tensor.
pub fn mean_entropy(logits: Tensor<2>) -> Tensor<1> {
    let log_p = log_softmax(logits, 1);
    let p = log_p.clone().exp();
    (p * log_p).sum_dim(1).mean().neg()
}
