//! Candidate search by binning atoms into cells (O(N)) and by brute force (O(N²), the oracle).

use super::Candidate;
use crate::cell::{Cell, Vec3};

/// Upper bound on bins per atom: a very sparse open system (say, atoms that flew apart) must not
/// allocate a huge empty grid, so bins grow instead.
const MAX_BINS_PER_ATOM: usize = 8;

fn norm2(r: &Vec3) -> f64 {
    r[0] * r[0] + r[1] * r[1] + r[2] * r[2]
}

/// Candidates within `radius` of each other by a cell list. Periodic positions must be wrapped.
///
/// Periodic cells of any shape: atoms are binned in fractional coordinates; along lattice vector
/// a, a sphere of radius r spans ±r/w_a in fractional units (w_a the distance between the faces
/// normal to a), so scanning ±ceil(r·n_a/w_a) bins covers it. Bin offsets past the edge wrap
/// around with an image shift, and when r exceeds half the cell the scan passes the same bin
/// again under another image: every (j, image) is visited exactly once.
pub fn cell_list_candidates(positions: &[Vec3], cell: Option<&Cell>, radius: f64) -> Vec<Candidate> {
    let n = positions.len();
    if n == 0 {
        return Vec::new();
    }
    let radius2 = radius * radius;
    let max_bins = (MAX_BINS_PER_ATOM * n).max(27);
    // Fractional-like coordinates in [0, 1) per axis, bins per axis and scan range per axis.
    let (coords, bins, reach): (Vec<Vec3>, [usize; 3], [i64; 3]) = match cell {
        Some(cell) => {
            let widths = cell.perpendicular_widths();
            let mut bins = widths.map(|w| ((w / radius).floor() as usize).max(1));
            while bins.iter().product::<usize>() > max_bins {
                bins = bins.map(|b| (b / 2).max(1));
            }
            let reach = [0, 1, 2].map(|a| (radius * bins[a] as f64 / widths[a]).ceil() as i64);
            (positions.iter().map(|r| cell.to_fractional(r)).collect(), bins, reach)
        }
        None => {
            let mut lo = positions[0];
            let mut hi = positions[0];
            for r in positions {
                for a in 0..3 {
                    lo[a] = lo[a].min(r[a]);
                    hi[a] = hi[a].max(r[a]);
                }
            }
            let mut size = radius;
            let extent = [0, 1, 2].map(|a| (hi[a] - lo[a]).max(1e-9));
            let mut bins = extent.map(|e| ((e / size).floor() as usize).max(1));
            while bins.iter().product::<usize>() > max_bins {
                size *= 2.0;
                bins = extent.map(|e| ((e / size).floor() as usize).max(1));
            }
            // Bins are at least `radius` wide, so the neighbors of a bin are one bin away.
            let coords = positions
                .iter()
                .map(|r| [0, 1, 2].map(|a| (r[a] - lo[a]) / extent[a] * (1.0 - 1e-12)))
                .collect();
            (coords, bins, [1, 1, 1])
        }
    };
    let bin_of = |s: &Vec3| -> [usize; 3] {
        [0, 1, 2].map(|a| ((s[a] * bins[a] as f64).floor().max(0.0) as usize).min(bins[a] - 1))
    };
    let flat = |b: [usize; 3]| (b[0] * bins[1] + b[1]) * bins[2] + b[2];
    let n_bins = bins.iter().product::<usize>();

    // Counting sort of atoms by bin.
    let atom_bins: Vec<[usize; 3]> = coords.iter().map(bin_of).collect();
    let mut start = vec![0usize; n_bins + 1];
    for b in &atom_bins {
        start[flat(*b) + 1] += 1;
    }
    for b in 0..n_bins {
        start[b + 1] += start[b];
    }
    let mut fill = start.clone();
    let mut sorted = vec![0u32; n];
    for (atom, b) in atom_bins.iter().enumerate() {
        let slot = &mut fill[flat(*b)];
        sorted[*slot] = atom as u32;
        *slot += 1;
    }

    let mut out = Vec::new();
    for (i, home) in atom_bins.iter().enumerate() {
        let first = out.len();
        for da in -reach[0]..=reach[0] {
            for db in -reach[1]..=reach[1] {
                for dc in -reach[2]..=reach[2] {
                    let offset = [da, db, dc];
                    let mut target = [0usize; 3];
                    let mut image = [0i32; 3];
                    let mut outside = false;
                    for a in 0..3 {
                        let t = home[a] as i64 + offset[a];
                        let nb = bins[a] as i64;
                        if cell.is_none() && !(0..nb).contains(&t) {
                            outside = true;
                        }
                        target[a] = t.rem_euclid(nb) as usize;
                        image[a] = t.div_euclid(nb) as i32;
                    }
                    if outside {
                        continue;
                    }
                    let shift = match cell {
                        Some(cell) => cell.translation(image),
                        None => [0.0; 3],
                    };
                    let b = flat(target);
                    for &j in &sorted[start[b]..start[b + 1]] {
                        let ju = j as usize;
                        if ju == i && image == [0, 0, 0] {
                            continue;
                        }
                        let r = [0, 1, 2].map(|x| positions[ju][x] + shift[x] - positions[i][x]);
                        if norm2(&r) < radius2 {
                            out.push(Candidate { i: i as u32, j, image });
                        }
                    }
                }
            }
        }
        out[first..].sort_unstable();
    }
    out
}

/// Every (j, image) within `radius` of i, by looping over all atoms and all images that can
/// reach: O(N²), independent of any binning, the reference the cell list is tested against.
pub fn brute_force_candidates(positions: &[Vec3], cell: Option<&Cell>, radius: f64) -> Vec<Candidate> {
    let radius2 = radius * radius;
    let reach: [i32; 3] = match cell {
        // Positions anywhere (not wrapped): allow one extra image for the spread of positions.
        Some(cell) => {
            let spread = positions
                .iter()
                .map(|r| cell.to_fractional(r))
                .fold([0f64; 3], |m, s| [0, 1, 2].map(|a| m[a].max(s[a].abs())));
            let widths = cell.perpendicular_widths();
            [0, 1, 2].map(|a| ((radius / widths[a]).ceil() + 2.0 * spread[a].ceil() + 1.0) as i32)
        }
        None => [0, 0, 0],
    };
    let mut out = Vec::new();
    for i in 0..positions.len() {
        for j in 0..positions.len() {
            for na in -reach[0]..=reach[0] {
                for nb in -reach[1]..=reach[1] {
                    for nc in -reach[2]..=reach[2] {
                        let image = [na, nb, nc];
                        if i == j && image == [0, 0, 0] {
                            continue;
                        }
                        let shift = cell.map_or([0.0; 3], |c| c.translation(image));
                        let r = [0, 1, 2].map(|x| positions[j][x] + shift[x] - positions[i][x]);
                        if norm2(&r) < radius2 {
                            out.push(Candidate {
                                i: i as u32,
                                j: j as u32,
                                image,
                            });
                        }
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out
}
