//! The cell list against brute force on random systems, open and periodic, orthorhombic and
//! triclinic, including cells narrower than twice the cutoff; and the Verlet skin logic.

mod common;

use common::random_structure;
use mdrun::cell::{Cell, Vec3};
use mdrun::neighbors::{brute_force_candidates, brute_force_pairs, cell_list_candidates, NeighborList, PairList};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn random_cell(rng: &mut StdRng, min_edge: f64, max_edge: f64, triclinic: bool) -> Cell {
    loop {
        let a = rng.random_range(min_edge..max_edge);
        let b = rng.random_range(min_edge..max_edge);
        let c = rng.random_range(min_edge..max_edge);
        let t = if triclinic { 0.35 } else { 0.0 };
        let mut tilt = || rng.random_range(-t..=t) * min_edge;
        let vectors = [[a, 0.0, 0.0], [tilt(), b, 0.0], [tilt(), tilt(), c]];
        if let Ok(cell) = Cell::new(vectors) {
            return cell;
        }
    }
}

fn wrapped(positions: &[Vec3], cell: &Cell) -> Vec<Vec3> {
    positions
        .iter()
        .map(|r| {
            let mut r = *r;
            cell.wrap(&mut r);
            r
        })
        .collect()
}

#[test]
fn cell_list_equals_brute_force_open_boundaries() {
    let mut rng = StdRng::seed_from_u64(1);
    for trial in 0..20 {
        let n = rng.random_range(1..120);
        let edge = rng.random_range(2.0..25.0);
        let radius = rng.random_range(0.5..7.0);
        let (_, positions) = random_structure(n, edge, 0.0, None, 1000 + trial);
        let fast = cell_list_candidates(&positions, None, radius);
        let slow = brute_force_candidates(&positions, None, radius);
        assert_eq!(fast, slow, "trial {trial}: n = {n}, edge = {edge}, radius = {radius}");
    }
}

#[test]
fn cell_list_equals_brute_force_periodic_cells_of_every_size() {
    let mut rng = StdRng::seed_from_u64(2);
    for trial in 0..40 {
        let triclinic = trial % 2 == 1;
        // From cells narrower than the radius (many images of one neighbour) to wide ones.
        let cell = random_cell(&mut rng, 2.5, 16.0, triclinic);
        let radius = rng.random_range(1.0..7.0);
        let n = rng.random_range(1..60);
        let (_, positions) = random_structure(n, 1.0, 0.0, None, 2000 + trial);
        // Spread over the whole cell through fractional coordinates.
        let positions: Vec<Vec3> = positions.iter().map(|r| cell.to_cartesian(r)).collect();
        let positions = wrapped(&positions, &cell);
        let fast = cell_list_candidates(&positions, Some(&cell), radius);
        let slow = brute_force_candidates(&positions, Some(&cell), radius);
        assert_eq!(
            fast.len(),
            slow.len(),
            "trial {trial}: radius {radius}, cell {:?}",
            cell.vectors()
        );
        assert_eq!(fast, slow, "trial {trial}");
    }
}

#[test]
fn a_small_cell_gives_several_images_of_one_neighbor_and_of_the_atom_itself() {
    let cell = Cell::orthorhombic([4.0, 4.0, 4.0]).unwrap();
    let positions = vec![[0.5, 0.5, 0.5], [2.5, 0.5, 0.5]];
    let pairs = brute_force_pairs(&positions, Some(&cell), 5.0);
    let images_of_1_from_0 = (0..pairs.len())
        .filter(|&p| pairs.first[p] == 0 && pairs.second[p] == 1)
        .count();
    let self_images = (0..pairs.len())
        .filter(|&p| pairs.first[p] == 0 && pairs.second[p] == 0)
        .count();
    // j at ±2 Å along x, and the other images within 5 Å: more than one each.
    assert!(images_of_1_from_0 > 2, "{images_of_1_from_0}");
    // Face images at 4 Å are in; edge images at 4√2 = 5.66 Å are out.
    assert_eq!(self_images, 6, "images of atom 0 itself within 5 Å of it in a 4 Å cube");
    let wide = brute_force_pairs(&positions, Some(&cell), 6.0);
    let self_images_6 = (0..wide.len())
        .filter(|&p| wide.first[p] == 0 && wide.second[p] == 0)
        .count();
    assert_eq!(
        self_images_6,
        6 + 12,
        "within 6 Å: faces and edges, not corners (6.93 Å)"
    );
    let cells = cell_list_candidates(&positions, Some(&cell), 5.0);
    assert_eq!(cells, brute_force_candidates(&positions, Some(&cell), 5.0));
}

fn sorted_pairs(p: &PairList) -> Vec<(usize, usize, [i64; 3])> {
    let mut v: Vec<_> = (0..p.len())
        .map(|k| (p.first[k], p.second[k], p.vectors[k].map(|x| (x * 1e6).round() as i64)))
        .collect();
    v.sort();
    v
}

/// Random walk with occasional long jumps; after every move the Verlet list must give exactly the
/// brute-force pairs, although it rebuilds only when the skin requires.
fn verlet_list_follows_motion(cell: Option<Cell>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cutoff = 3.0;
    let (_, mut positions) = random_structure(40, 8.0, 0.0, None, seed);
    let mut list = NeighborList::new(cutoff, 0.8);
    let mut pairs = PairList::default();
    for step in 0..300 {
        let jump = if rng.random_range(0..50) == 0 { 0.5 } else { 0.03 };
        for r in positions.iter_mut() {
            for x in r.iter_mut() {
                *x += rng.random_range(-jump..jump);
            }
        }
        list.update(&mut positions, cell.as_ref());
        list.pairs(&positions, cell.as_ref(), &mut pairs);
        let reference = brute_force_pairs(&positions, cell.as_ref(), cutoff);
        assert_eq!(sorted_pairs(&pairs), sorted_pairs(&reference), "step {step}");
    }
    assert!(
        list.rebuilds() > 1 && list.rebuilds() < 300,
        "rebuilds: {}",
        list.rebuilds()
    );
}

#[test]
fn verlet_list_with_skin_never_misses_a_pair_open() {
    verlet_list_follows_motion(None, 11);
}

#[test]
fn verlet_list_with_skin_never_misses_a_pair_periodic_across_the_boundary() {
    // Atoms drift through the faces of a small triclinic cell: wrapping happens only at rebuilds.
    let cell = Cell::new([[8.0, 0.0, 0.0], [1.5, 7.5, 0.0], [-1.0, 0.8, 7.0]]).unwrap();
    verlet_list_follows_motion(Some(cell), 12);
}

#[test]
fn rebuild_happens_exactly_when_an_atom_moved_more_than_half_the_skin() {
    let cell = Cell::orthorhombic([10.0, 10.0, 10.0]).unwrap();
    let mut positions = vec![[9.9, 5.0, 5.0], [2.0, 5.0, 5.0]];
    let mut list = NeighborList::new(3.0, 1.0);
    assert!(list.update(&mut positions, Some(&cell)));
    // Move atom 0 across the face by 0.45 Å: no rebuild needed, the position stays unwrapped.
    positions[0][0] += 0.45;
    assert!(!list.update(&mut positions, Some(&cell)));
    assert!(positions[0][0] > 10.0);
    // Another 0.1 Å: 0.55 > skin/2, rebuild; the atom is wrapped back into the box.
    positions[0][0] += 0.1;
    assert!(list.update(&mut positions, Some(&cell)));
    assert!(positions[0][0] < 1.0);
    let mut pairs = PairList::default();
    list.pairs(&positions, Some(&cell), &mut pairs);
    assert_eq!(
        sorted_pairs(&pairs),
        sorted_pairs(&brute_force_pairs(&positions, Some(&cell), 3.0))
    );
}
