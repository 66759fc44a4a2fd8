//! Neighbor search: a cell list with a Verlet skin, and brute force as its reference.
//!
//! Pairs are directed and complete (i→j and j→i), periodic images of an atom itself included,
//! sorted by the receiving atom i, as schnetpack builds them.

mod cell_list;

pub use cell_list::{brute_force_candidates, cell_list_candidates};

use crate::cell::{Cell, Vec3};

/// Directed pairs with their vectors r_ij = R_j − R_i + shift (Å), sorted by `first`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairList {
    pub first: Vec<usize>,
    pub second: Vec<usize>,
    pub vectors: Vec<Vec3>,
}

impl PairList {
    pub fn len(&self) -> usize {
        self.first.len()
    }
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
    pub fn clear(&mut self) {
        self.first.clear();
        self.second.clear();
        self.vectors.clear();
    }
}

/// A candidate pair found within cutoff + skin: j seen from i through lattice image `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    pub i: u32,
    pub j: u32,
    pub image: [i32; 3],
}

/// Verlet list: candidates within `cutoff + skin`, rebuilt once any atom has moved more than
/// half the skin since the last build, so no pair within `cutoff` can be missing in between.
#[derive(Debug, Clone)]
pub struct NeighborList {
    cutoff: f64,
    skin: f64,
    candidates: Vec<Candidate>,
    reference: Vec<Vec3>,
    built: bool,
    rebuilds: u64,
}

impl NeighborList {
    pub fn new(cutoff: f64, skin: f64) -> NeighborList {
        assert!(cutoff > 0.0 && skin >= 0.0);
        NeighborList {
            cutoff,
            skin,
            candidates: Vec::new(),
            reference: Vec::new(),
            built: false,
            rebuilds: 0,
        }
    }

    pub fn cutoff(&self) -> f64 {
        self.cutoff
    }

    pub fn skin(&self) -> f64 {
        self.skin
    }

    /// Number of builds so far.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Largest displacement of any atom since the last build (Å).
    pub fn max_displacement(&self, positions: &[Vec3]) -> f64 {
        positions
            .iter()
            .zip(&self.reference)
            .map(|(r, r0)| ((r[0] - r0[0]).powi(2) + (r[1] - r0[1]).powi(2) + (r[2] - r0[2]).powi(2)).sqrt())
            .fold(0.0, f64::max)
    }

    pub fn needs_rebuild(&self, positions: &[Vec3]) -> bool {
        !self.built || positions.len() != self.reference.len() || 2.0 * self.max_displacement(positions) > self.skin
    }

    /// Rebuilds when the skin requires it. A rebuild wraps periodic positions back into the cell
    /// first: positions only ever jump by a lattice vector at a build, never in between, so the
    /// displacement check always sees real motion. Returns whether it rebuilt.
    pub fn update(&mut self, positions: &mut [Vec3], cell: Option<&Cell>) -> bool {
        if !self.needs_rebuild(positions) {
            return false;
        }
        if let Some(cell) = cell {
            positions.iter_mut().for_each(|r| cell.wrap(r));
        }
        self.candidates = cell_list_candidates(positions, cell, self.cutoff + self.skin);
        self.reference = positions.to_vec();
        self.built = true;
        self.rebuilds += 1;
        true
    }

    /// What a restart needs to continue bit for bit: the positions of the last build (the
    /// candidates, and so the pair order, follow from them) and the build count. None before the
    /// first build.
    pub fn state(&self) -> Option<(Vec<Vec3>, u64)> {
        self.built.then(|| (self.reference.clone(), self.rebuilds))
    }

    /// Puts the list back as `state` left it: the candidates are searched again from the
    /// positions of that build, which gives the very same list, in the same order.
    pub fn restore(&mut self, reference: Vec<Vec3>, rebuilds: u64, cell: Option<&Cell>) {
        self.candidates = cell_list_candidates(&reference, cell, self.cutoff + self.skin);
        self.reference = reference;
        self.built = true;
        self.rebuilds = rebuilds;
    }

    /// The pairs strictly within the cutoff at the current positions.
    pub fn pairs(&self, positions: &[Vec3], cell: Option<&Cell>, out: &mut PairList) {
        out.clear();
        let cutoff2 = self.cutoff * self.cutoff;
        for c in &self.candidates {
            let (i, j) = (c.i as usize, c.j as usize);
            let shift = match cell {
                Some(cell) if c.image != [0, 0, 0] => cell.translation(c.image),
                _ => [0.0; 3],
            };
            let r = [
                positions[j][0] - positions[i][0] + shift[0],
                positions[j][1] - positions[i][1] + shift[1],
                positions[j][2] - positions[i][2] + shift[2],
            ];
            if r[0] * r[0] + r[1] * r[1] + r[2] * r[2] < cutoff2 {
                out.first.push(i);
                out.second.push(j);
                out.vectors.push(r);
            }
        }
    }
}

/// All pairs strictly within `cutoff`, found by brute force: for tests and single points.
pub fn brute_force_pairs(positions: &[Vec3], cell: Option<&Cell>, cutoff: f64) -> PairList {
    let mut list = NeighborList::new(cutoff, 0.0);
    list.candidates = brute_force_candidates(positions, cell, cutoff);
    list.reference = positions.to_vec();
    list.built = true;
    let mut pairs = PairList::default();
    list.pairs(positions, cell, &mut pairs);
    pairs
}

/// Smallest distance between any two atoms (periodic images included) if below `limit`.
pub fn closest_pair_below(positions: &[Vec3], cell: Option<&Cell>, limit: f64) -> Option<(usize, usize, f64)> {
    let mut wrapped = positions.to_vec();
    if let Some(cell) = cell {
        wrapped.iter_mut().for_each(|r| cell.wrap(r));
    }
    let mut pairs = PairList::default();
    let mut list = NeighborList::new(limit, 0.0);
    list.update(&mut wrapped, cell);
    list.pairs(&wrapped, cell, &mut pairs);
    (0..pairs.len())
        .map(|p| {
            let r = pairs.vectors[p];
            (
                pairs.first[p],
                pairs.second[p],
                (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt(),
            )
        })
        .min_by(|a, b| a.2.total_cmp(&b.2))
}
