//! The per-matrix arithmetic of the spectral merges (TSV-M, Iso-C, Iso-CTS) in f64 with faer:
//! one matrix unit's K task matrices in, each requested variant's merged update Δ out, every
//! SVD computed once and shared by the variants that need it (docs/design.md §3).

use faer::{Mat, MatRef};
use rayon::prelude::*;

/// A spectral merge's rule for one matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    /// TSV-M: each task's top ⌊r/K⌋ singular components, their vectors orthogonalised across
    /// tasks (polar factors), their singular values kept.
    TsvM,
    /// Iso-C: the polar factor of Σ τ_k at the mean singular value of Σ τ_k.
    IsoC,
    /// Iso-CTS: Σ τ_k's top components (the common subspace, this fraction of the rank before
    /// rounding) and each task's top components off it, orthogonalised, at one mean level.
    IsoCts {
        /// Fraction of the rank given to the common subspace (FusionBench: 0.8).
        common: f64,
    },
}

/// No decomposition converged, faer's SVD and its fallbacks alike (non-finite input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoConvergence;

/// A thin SVD: `u` [m, r], `s` descending, `v` [n, r] (right vectors as columns).
struct Factors {
    u: Mat<f64>,
    s: Vec<f64>,
    v: Mat<f64>,
}

impl Factors {
    /// The first `n` components only: what TSV-M keeps of each task, so K tasks' factors take
    /// the room of one.
    fn truncated(self, n: usize) -> Self {
        Self {
            u: self.u.subcols(0, n).to_owned(),
            s: self.s[..n].to_vec(),
            v: self.v.subcols(0, n).to_owned(),
        }
    }

    /// The factors of Aᵀ from those of A: the singular vectors trade sides.
    fn transposed(self) -> Self {
        Self {
            u: self.v,
            s: self.s,
            v: self.u,
        }
    }

    /// Owned copies of a faer SVD's factors.
    fn of(f: &faer::linalg::solvers::Svd<f64>) -> Self {
        Self {
            u: f.U().to_owned(),
            s: f.S().column_vector().iter().copied().collect(),
            v: f.V().to_owned(),
        }
    }
}

/// The thin SVD of `a`. faer's bidiagonal QR iteration can stop short on a matrix with many
/// zero singular values (an Iso-CTS residual, rank r − c, seen at ViT-B/32 size); the SVD of the
/// transpose is tried next, then the eigendecomposition of the smaller Gram matrix, whose values
/// under √ε·σ₁ are round-off and are set to zero (their directions are then dropped).
fn svd(a: MatRef<'_, f64>) -> Result<Factors, NoConvergence> {
    if let Ok(f) = a.thin_svd() {
        return Ok(Factors::of(&f));
    }
    if let Ok(f) = a.transpose().thin_svd() {
        return Ok(Factors::of(&f).transposed());
    }
    gram_svd(a)
}

/// The thin SVD of `a` from the eigendecomposition of AᵀA (or AAᵀ for a wide `a`).
fn gram_svd(a: MatRef<'_, f64>) -> Result<Factors, NoConvergence> {
    if a.nrows() < a.ncols() {
        return Ok(gram_svd(a.transpose())?.transposed());
    }
    let gram = a.transpose() * a;
    let eig = gram
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|_| NoConvergence)?;
    let n = a.ncols();
    // Eigenvalues ascend: reverse into descending singular values.
    let values: Vec<f64> = eig.S().column_vector().iter().copied().collect();
    let top = values.last().copied().unwrap_or(0.0).max(0.0).sqrt();
    let mut s = Vec::with_capacity(n);
    let mut v = Mat::zeros(n, n);
    for (j, i) in (0..n).rev().enumerate() {
        let sigma = values[i].max(0.0).sqrt();
        s.push(if sigma > top * f64::EPSILON.sqrt() {
            sigma
        } else {
            0.0
        });
        v.col_mut(j).copy_from(eig.U().col(i));
    }
    let mut u = a * &v;
    for (j, sigma) in s.iter().enumerate() {
        let scale = if *sigma > 0.0 { 1.0 / sigma } else { 0.0 };
        u.col_mut(j).iter_mut().for_each(|x| *x *= scale);
    }
    Ok(Factors { u, s, v })
}

/// Singular values at or below this are zero up to round-off: their vectors are arbitrary (they
/// depend on the SVD routine), so their directions are dropped (numpy's `matrix_rank` bound,
/// with the Frobenius norm of the matrix the values come from as the scale).
fn tolerance(a: MatRef<'_, f64>) -> f64 {
    a.nrows().max(a.ncols()) as f64 * f64::EPSILON * a.norm_l2()
}

/// The orthogonal polar factor of `x` [m, p] (p ≤ m): the nearest matrix with orthonormal
/// columns, `U Vᵀ` of its thin SVD.
fn polar(x: MatRef<'_, f64>) -> Result<Mat<f64>, NoConvergence> {
    let f = svd(x)?;
    Ok(f.u * f.v.transpose())
}

/// The chosen columns (a matrix of `m` rows and a column index each), side by side.
fn columns(m: usize, parts: &[(MatRef<'_, f64>, usize)]) -> Mat<f64> {
    let mut out = Mat::zeros(m, parts.len());
    for (j, (a, c)) in parts.iter().enumerate() {
        out.col_mut(j).copy_from(a.col(*c));
    }
    out
}

/// Σ_i w_i · polar(U)_i polar(V)_iᵀ over the stacked components (zero when there are none).
fn recombine(
    shape: (usize, usize),
    us: &[(MatRef<'_, f64>, usize)],
    vs: &[(MatRef<'_, f64>, usize)],
    weights: &[f64],
) -> Result<Mat<f64>, NoConvergence> {
    if us.is_empty() {
        return Ok(Mat::zeros(shape.0, shape.1));
    }
    let pu = polar(columns(shape.0, us).as_ref())?;
    let mut pv = polar(columns(shape.1, vs).as_ref())?;
    for (j, w) in weights.iter().enumerate() {
        pv.col_mut(j).iter_mut().for_each(|x| *x *= w);
    }
    Ok(pu * pv.transpose())
}

/// TSV-M's per-task rank, FusionBench's `int(r * (1 / K))` (the same float expression).
pub fn tsv_rank(r: usize, tasks: usize) -> usize {
    (r as f64 * (1.0 / tasks as f64)) as usize
}

/// Iso-CTS's common rank c and per-task rank n for rank r: c₀ = ⌊r·f⌋, the task-specific total
/// rounded (half to even, as Python's `round`) to a multiple of K. Where that total would exceed
/// r (a small r with a small fraction, where FusionBench slices with a negative index) it is
/// rounded down instead.
pub fn cts_ranks(r: usize, tasks: usize, common: f64) -> (usize, usize) {
    let c0 = (r as f64 * common) as usize;
    let mut total = ((r - c0.min(r)) as f64 / tasks as f64).round_ties_even() as usize * tasks;
    if total > r {
        total = r / tasks * tasks;
    }
    let c = r - total;
    (c, total / tasks)
}

/// Each variant's Δ [m, n] for one matrix unit whose task matrices are `mats` (all [m, n]).
/// The SVD of Σ τ_k is computed once for every Iso variant, each task's once for TSV-M; tasks
/// are decomposed in parallel.
pub fn deltas(mats: &[Mat<f64>], variants: &[Variant]) -> Result<Vec<Mat<f64>>, NoConvergence> {
    let k = mats.len();
    let (m, n) = (mats[0].nrows(), mats[0].ncols());
    let r = m.min(n);
    let iso = variants.iter().any(|v| !matches!(v, Variant::TsvM));
    let sum = iso.then(|| {
        let mut w = mats[0].clone();
        for t in &mats[1..] {
            w += t;
        }
        w
    });
    let sum_svd = sum.as_ref().map(|w| svd(w.as_ref())).transpose()?;
    let sum_tol = sum.as_ref().map_or(0.0, |w| tolerance(w.as_ref()));
    let task_tol: Vec<f64> = mats.iter().map(|t| tolerance(t.as_ref())).collect();
    let top = tsv_rank(r, k);
    let task_svd: Option<Vec<Factors>> = variants
        .contains(&Variant::TsvM)
        .then(|| {
            mats.par_iter()
                .map(|t| Ok(svd(t.as_ref())?.truncated(top)))
                .collect()
        })
        .transpose()?;

    variants
        .iter()
        .map(|v| match *v {
            Variant::TsvM => {
                let fs = task_svd.as_ref().expect("decomposed above");
                let (mut us, mut vs, mut ws) = (Vec::new(), Vec::new(), Vec::new());
                for (f, tol) in fs.iter().zip(&task_tol) {
                    for i in (0..top).filter(|&i| f.s[i] > *tol) {
                        us.push((f.u.as_ref(), i));
                        vs.push((f.v.as_ref(), i));
                        ws.push(f.s[i]);
                    }
                }
                recombine((m, n), &us, &vs, &ws)
            }
            Variant::IsoC => {
                let f = sum_svd.as_ref().expect("decomposed above");
                let level = f.s.iter().sum::<f64>() / r as f64;
                let kept: Vec<usize> = (0..r).filter(|&i| f.s[i] > sum_tol).collect();
                let mut u = Mat::zeros(m, kept.len());
                let mut vt = Mat::zeros(kept.len(), n);
                for (j, &i) in kept.iter().enumerate() {
                    u.col_mut(j).copy_from(f.u.col(i));
                    for (c, x) in f.v.col(i).iter().enumerate() {
                        vt[(j, c)] = x * level;
                    }
                }
                Ok(u * vt)
            }
            Variant::IsoCts { common } => {
                let f = sum_svd.as_ref().expect("decomposed above");
                let (c, per_task) = cts_ranks(r, k, common);
                let common_kept: Vec<usize> = (0..c).filter(|&i| f.s[i] > sum_tol).collect();
                let uc = columns(
                    m,
                    &common_kept
                        .iter()
                        .map(|&i| (f.u.as_ref(), i))
                        .collect::<Vec<_>>(),
                );
                let residuals: Vec<Factors> = mats
                    .par_iter()
                    .map(|t| {
                        let projected = &uc * (uc.transpose() * t);
                        Ok(svd((t - projected).as_ref())?.truncated(per_task))
                    })
                    .collect::<Result<_, _>>()?;
                let mut total: f64 = f.s[..c].iter().sum();
                let (mut us, mut vs) = (Vec::new(), Vec::new());
                for (res, tol) in residuals.iter().zip(&task_tol) {
                    total += res.s[..per_task].iter().sum::<f64>();
                    for i in (0..per_task).filter(|&i| res.s[i] > *tol) {
                        us.push((res.u.as_ref(), i));
                        vs.push((res.v.as_ref(), i));
                    }
                }
                for &i in &common_kept {
                    us.push((f.u.as_ref(), i));
                    vs.push((f.v.as_ref(), i));
                }
                let level = total / r as f64;
                recombine((m, n), &us, &vs, &vec![level; us.len()])
            }
        })
        .collect()
}

/// Where a learned merge over singular components (AdaRank) takes each task's components from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComponentBase {
    /// Each task's own top components: ⌊rank·r⌋ of them (at least one), AdaRank's.
    TaskArithmetic {
        /// Fraction of the rank r kept per task.
        rank: f64,
    },
    /// TSV-M's: each task's top ⌊r/K⌋, their vectors orthogonalised across tasks.
    TsvM,
}

/// One task's singular components of one matrix unit: `u` [m, p], `s` [p], `v` [n, p], and
/// what the components leave of the task matrix when asked for.
pub struct TaskComponents {
    /// Left vectors as columns.
    pub u: Mat<f64>,
    /// Singular values, descending (TSV-M: each task's own).
    pub s: Vec<f64>,
    /// Right vectors as columns.
    pub v: Mat<f64>,
    /// τ − U diag(s) Vᵀ (task-arithmetic base only, when `rest` was asked for).
    pub rest: Option<Mat<f64>>,
}

/// Each task's singular components of one matrix unit whose task matrices are `mats`. Components
/// at or below the round-off tolerance are dropped, as in the spectral merges (design.md §3).
pub fn components(
    mats: &[Mat<f64>],
    base: ComponentBase,
    rest: bool,
) -> Result<Vec<TaskComponents>, NoConvergence> {
    let k = mats.len();
    let r = mats[0].nrows().min(mats[0].ncols());
    let top = match base {
        ComponentBase::TaskArithmetic { rank } => ((rank * r as f64) as usize).clamp(1, r),
        ComponentBase::TsvM => tsv_rank(r, k),
    };
    let kept: Vec<Factors> = mats
        .par_iter()
        .map(|t| {
            let f = svd(t.as_ref())?.truncated(top.min(r));
            let tol = tolerance(t.as_ref());
            let n = f.s.iter().take_while(|s| **s > tol).count();
            Ok(f.truncated(n))
        })
        .collect::<Result<_, _>>()?;
    match base {
        ComponentBase::TaskArithmetic { .. } => Ok(kept
            .into_iter()
            .zip(mats)
            .map(|(f, t)| {
                let rest = rest.then(|| {
                    let mut us = f.u.clone();
                    for (j, s) in f.s.iter().enumerate() {
                        us.col_mut(j).iter_mut().for_each(|x| *x *= s);
                    }
                    t - us * f.v.transpose()
                });
                TaskComponents {
                    u: f.u,
                    s: f.s,
                    v: f.v,
                    rest,
                }
            })
            .collect()),
        ComponentBase::TsvM => {
            let (m, n) = (mats[0].nrows(), mats[0].ncols());
            let cols = |side: fn(&Factors) -> MatRef<'_, f64>| {
                kept.iter()
                    .flat_map(|f| (0..f.s.len()).map(move |i| (side(f), i)))
                    .collect::<Vec<_>>()
            };
            let us = cols(|f| f.u.as_ref());
            if us.is_empty() {
                return Ok(kept
                    .into_iter()
                    .map(|f| TaskComponents {
                        u: f.u,
                        s: f.s,
                        v: f.v,
                        rest: None,
                    })
                    .collect());
            }
            let pu = polar(columns(m, &us).as_ref())?;
            let pv = polar(columns(n, &cols(|f| f.v.as_ref())).as_ref())?;
            let mut start = 0;
            Ok(kept
                .into_iter()
                .map(|f| {
                    let p = f.s.len();
                    let c = TaskComponents {
                        u: pu.subcols(start, p).to_owned(),
                        s: f.s,
                        v: pv.subcols(start, p).to_owned(),
                        rest: None,
                    };
                    start += p;
                    c
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Mat<f64> {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Mat::from_fn(m, n, |_, _| rng.random_range(-1.0..1.0))
    }

    fn close(a: &Mat<f64>, b: &Mat<f64>, tol: f64) -> bool {
        (a - b).norm_l2() <= tol * b.norm_l2().max(1e-300)
    }

    #[test]
    fn ranks_follow_fusionbench_with_ties_to_even() {
        assert_eq!(tsv_rank(768, 8), 96);
        assert_eq!(tsv_rank(32, 3), 10);
        assert_eq!(cts_ranks(768, 8, 0.8), (616, 19));
        assert_eq!(cts_ranks(768, 20, 0.8), (608, 8));
        // 0.5 and 6.5 are ties: Python's round takes them to the even number.
        assert_eq!(cts_ranks(50, 20, 0.8), (50, 0));
        assert_eq!(cts_ranks(257, 8, 0.8), (209, 6));
        // A total above r is rounded down rather than sliced from the end.
        assert_eq!(cts_ranks(5, 3, 0.1), (2, 1));
    }

    #[test]
    fn one_task_tsv_gives_its_own_matrix_and_iso_c_flattens_the_spectrum() {
        let t = random(7, 5, 1);
        let d = deltas(std::slice::from_ref(&t), &[Variant::TsvM, Variant::IsoC]).unwrap();
        assert!(close(&d[0], &t, 1e-12));
        // Iso-C: σ̄ U Vᵀ, whose singular values are all σ̄.
        let s = d[1].thin_svd().unwrap();
        let sv: Vec<f64> = s.S().column_vector().iter().copied().collect();
        let level = t
            .thin_svd()
            .unwrap()
            .S()
            .column_vector()
            .iter()
            .sum::<f64>()
            / 5.0;
        assert!(
            sv.iter().all(|x| (x - level).abs() < 1e-12 * level),
            "{sv:?}"
        );
    }

    #[test]
    fn the_gram_fallback_gives_the_same_decomposition() {
        for (m, n) in [(9, 5), (5, 9)] {
            let a = random(m, n, 3);
            let f = gram_svd(a.as_ref()).unwrap();
            let want = svd(a.as_ref()).unwrap();
            for (x, y) in f.s.iter().zip(&want.s) {
                assert!((x - y).abs() < 1e-10 * want.s[0], "{:?} {:?}", f.s, want.s);
            }
            let mut us = f.u.clone();
            for (j, s) in f.s.iter().enumerate() {
                us.col_mut(j).iter_mut().for_each(|x| *x *= s);
            }
            assert!(close(&(us * f.v.transpose()), &a, 1e-10));
        }
    }

    #[test]
    fn zero_singular_values_drop_their_directions() {
        // A rank-one task among full-rank ones: its zero components must not move the others.
        let a = Mat::from_fn(6, 4, |i, j| ((i + 1) * (j + 2)) as f64 / 8.0);
        let b = random(6, 4, 2);
        let with = deltas(&[a.clone(), b.clone()], &[Variant::TsvM]).unwrap();
        // Only a's first component and b's top two survive (r = 4, K = 2: two each).
        let fa = a.thin_svd().unwrap();
        let fb = b.thin_svd().unwrap();
        let x = columns(6, &[(fa.U(), 0), (fb.U(), 0), (fb.U(), 1)]);
        let y = columns(4, &[(fa.V(), 0), (fb.V(), 0), (fb.V(), 1)]);
        let s = [fa.S()[0], fb.S()[0], fb.S()[1]];
        let mut py = polar(y.as_ref()).unwrap();
        for (j, w) in s.iter().enumerate() {
            py.col_mut(j).iter_mut().for_each(|x| *x *= w);
        }
        let want = polar(x.as_ref()).unwrap() * py.transpose();
        assert!(close(&with[0], &want, 1e-12));
        // All-zero tasks give zero, not NaN.
        let z = deltas(
            &[Mat::zeros(3, 2), Mat::zeros(3, 2)],
            &[
                Variant::TsvM,
                Variant::IsoC,
                Variant::IsoCts { common: 0.8 },
            ],
        )
        .unwrap();
        assert!(z.iter().all(|d| d.norm_l2() == 0.0));
    }
}
