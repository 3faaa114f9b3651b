//! Dense linear algebra on the host in f64 (faer): what merges that solve systems need.

/// A symmetric matrix that is not positive definite (its Cholesky factorisation fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositiveDefinite;

/// Solves A X = B for a symmetric positive definite `a` [n, n] and `b` [n, m] (both row-major)
/// by a Cholesky factorisation; returns X [n, m] row-major.
pub fn solve_spd(
    a: &[f64],
    b: &[f64],
    n: usize,
    m: usize,
) -> std::result::Result<Vec<f64>, NotPositiveDefinite> {
    use faer::linalg::solvers::Solve;
    assert_eq!(a.len(), n * n, "a is n × n");
    assert_eq!(b.len(), n * m, "b is n × m");
    let a = faer::Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let llt = a.llt(faer::Side::Lower).map_err(|_| NotPositiveDefinite)?;
    let mut x = faer::Mat::<f64>::from_fn(n, m, |i, j| b[i * m + j]);
    llt.solve_in_place(x.as_mut());
    if (0..n).any(|i| (0..m).any(|j| !x[(i, j)].is_finite())) {
        return Err(NotPositiveDefinite);
    }
    Ok((0..n)
        .flat_map(|i| (0..m).map(move |j| (i, j)))
        .map(|(i, j)| x[(i, j)])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_system_and_refuses_a_singular_one() {
        // A = [[4, 2], [2, 3]], X = [[1, 0], [0, 1], ...]: B = A X.
        let a = [4.0, 2.0, 2.0, 3.0];
        let x = [1.0, -2.0, 0.5, 3.0];
        let b = [
            4.0 * 1.0 + 2.0 * 0.5,
            4.0 * -2.0 + 2.0 * 3.0,
            2.0 * 1.0 + 3.0 * 0.5,
            2.0 * -2.0 + 3.0 * 3.0,
        ];
        let got = solve_spd(&a, &b, 2, 2).expect("solvable");
        for (g, w) in got.iter().zip(x) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(
            solve_spd(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0], 2, 1),
            Err(NotPositiveDefinite)
        );
    }
}
