//! Periodic simulation cells: lattice vectors, fractional coordinates and wrapping.

use nalgebra::{Matrix3, Vector3};

pub type Vec3 = [f64; 3];

/// A periodic cell, fully periodic along its three lattice vectors `a`, `b`, `c` (Å).
///
/// Open (non-periodic) systems have no `Cell` at all (`Option<Cell>` is `None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// Rows are the lattice vectors a, b, c in Å.
    vectors: Matrix3<f64>,
    /// Inverse of `vectors`: fractional = cartesian · inverse (row vectors).
    inverse: Matrix3<f64>,
}

impl Cell {
    /// A cell from its three lattice vectors (rows). Fails for a degenerate or left-handed cell.
    pub fn new(vectors: [[f64; 3]; 3]) -> Result<Cell, String> {
        let m = Matrix3::from_row_slice(&vectors.concat());
        if !m.iter().all(|x| x.is_finite()) {
            return Err("cell vectors contain NaN or infinity".into());
        }
        let det = m.determinant();
        if det <= 1e-6 {
            return Err(format!(
                "cell volume is {det:.3e} Å³: the lattice vectors must be right-handed and not degenerate"
            ));
        }
        let inverse = m.try_inverse().ok_or("cell matrix cannot be inverted")?;
        Ok(Cell { vectors: m, inverse })
    }

    /// An orthorhombic cell with edge lengths `a`, `b`, `c` in Å.
    pub fn orthorhombic(lengths: Vec3) -> Result<Cell, String> {
        Cell::new([[lengths[0], 0.0, 0.0], [0.0, lengths[1], 0.0], [0.0, 0.0, lengths[2]]])
    }

    /// Lattice vectors as rows.
    pub fn vectors(&self) -> [[f64; 3]; 3] {
        let m = &self.vectors;
        [
            [m[(0, 0)], m[(0, 1)], m[(0, 2)]],
            [m[(1, 0)], m[(1, 1)], m[(1, 2)]],
            [m[(2, 0)], m[(2, 1)], m[(2, 2)]],
        ]
    }

    pub fn volume(&self) -> f64 {
        self.vectors.determinant()
    }

    /// Distances between opposite faces of the cell (Å): the largest sphere that fits has a
    /// diameter of the smallest of them.
    pub fn perpendicular_widths(&self) -> Vec3 {
        let a = self.vectors.row(0).transpose();
        let b = self.vectors.row(1).transpose();
        let c = self.vectors.row(2).transpose();
        let v = self.volume();
        [v / b.cross(&c).norm(), v / c.cross(&a).norm(), v / a.cross(&b).norm()]
    }

    pub fn to_fractional(&self, r: &Vec3) -> Vec3 {
        let s = Vector3::from(*r).transpose() * self.inverse;
        [s[0], s[1], s[2]]
    }

    pub fn to_cartesian(&self, s: &Vec3) -> Vec3 {
        let r = Vector3::from(*s).transpose() * self.vectors;
        [r[0], r[1], r[2]]
    }

    /// Cartesian translation n_a·a + n_b·b + n_c·c for an integer image.
    pub fn translation(&self, image: [i32; 3]) -> Vec3 {
        self.to_cartesian(&[image[0] as f64, image[1] as f64, image[2] as f64])
    }

    /// Wraps a position into the cell (fractional coordinates in [0, 1)).
    pub fn wrap(&self, r: &mut Vec3) {
        let mut s = self.to_fractional(r);
        for x in s.iter_mut() {
            *x -= x.floor();
            // floor can leave exactly 1.0 after rounding of a tiny negative value.
            if *x >= 1.0 {
                *x = 0.0;
            }
        }
        *r = self.to_cartesian(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_of_a_triclinic_cell() {
        let cell = Cell::new([[10.0, 0.0, 0.0], [3.0, 9.0, 0.0], [1.0, 2.0, 8.0]]).unwrap();
        let w = cell.perpendicular_widths();
        // The c-width of a cell whose a and b lie in the xy-plane is c_z.
        assert!((w[2] - 8.0).abs() < 1e-12);
        assert!(w[0] <= 10.0 && w[1] <= 9.0_f64.hypot(3.0));
        let mut r = [-1.0, 25.0, 9.5];
        cell.wrap(&mut r);
        let s = cell.to_fractional(&r);
        assert!(s.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn degenerate_cells_are_refused() {
        assert!(Cell::new([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).is_err());
        assert!(Cell::orthorhombic([5.0, 5.0, -5.0]).is_err());
    }
}
