//! The f64 reference PaiNN: analytic forces against central finite differences, and the
//! symmetries of the energy, on fresh random models and geometries (open and periodic).

mod common;

use common::*;
use mdrun::cell::{Cell, Vec3};
use mdrun::forcefield::cpu::evaluate;
use mdrun::model::PainnModel;
use mdrun::neighbors::brute_force_pairs;

fn energy_and_forces(model: &PainnModel, numbers: &[u8], positions: &[Vec3], cell: Option<&Cell>) -> (f64, Vec<Vec3>) {
    let pairs = brute_force_pairs(positions, cell, model.cutoff());
    let e = evaluate(model, numbers, &pairs);
    (e.energy, e.forces)
}

/// Max relative error of analytic forces against central differences, relative to the largest
/// force component.
fn finite_difference_error(model: &PainnModel, numbers: &[u8], positions: &[Vec3], cell: Option<&Cell>) -> f64 {
    let (_, forces) = energy_and_forces(model, numbers, positions, cell);
    let h = 1e-5;
    let scale = forces.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 1e-3, "forces too small to test: {scale}");
    let mut worst = 0.0f64;
    for atom in 0..positions.len() {
        for axis in 0..3 {
            let mut plus = positions.to_vec();
            let mut minus = positions.to_vec();
            plus[atom][axis] += h;
            minus[atom][axis] -= h;
            let numeric = -(energy_and_forces(model, numbers, &plus, cell).0
                - energy_and_forces(model, numbers, &minus, cell).0)
                / (2.0 * h);
            worst = worst.max((numeric - forces[atom][axis]).abs() / scale);
        }
    }
    worst
}

#[test]
fn forces_match_finite_differences_open_boundaries() {
    for seed in 0..4 {
        let model = random_model(small_config(4.0), 100 + seed);
        let (numbers, positions) = random_structure(9, 4.0, 0.9, None, 200 + seed);
        let err = finite_difference_error(&model, &numbers, &positions, None);
        assert!(err < 1e-6, "seed {seed}: relative force error {err:e}");
    }
}

#[test]
fn forces_match_finite_differences_full_size_model() {
    let model = random_model(full_config(), 7);
    let (numbers, positions) = random_structure(8, 4.5, 0.9, None, 8);
    let err = finite_difference_error(&model, &numbers, &positions, None);
    assert!(err < 1e-6, "relative force error {err:e}");
}

#[test]
fn forces_match_finite_differences_shared_filters_and_bessel() {
    let mut config = small_config(3.5);
    config.shared_filters = true;
    let mut model = random_model(config, 11);
    let (numbers, positions) = random_structure(7, 3.5, 0.9, None, 12);
    assert!(finite_difference_error(&model, &numbers, &positions, None) < 1e-6);
    model.radial_basis = mdrun::model::RadialBasis::Bessel {
        freqs: (1..=8).map(|k| k as f64 * std::f64::consts::PI / 3.5).collect(),
    };
    let err = finite_difference_error(&model, &numbers, &positions, None);
    assert!(err < 1e-6, "bessel: relative force error {err:e}");
}

#[test]
fn forces_match_finite_differences_periodic_small_triclinic_cell() {
    // A cell narrower than twice the cutoff: several images of one neighbor are in range.
    let cell = Cell::new([[5.0, 0.0, 0.0], [1.2, 4.8, 0.0], [-0.7, 0.9, 5.2]]).unwrap();
    let model = random_model(small_config(4.0), 21);
    let (numbers, mut positions) = random_structure(6, 5.0, 1.0, Some(&cell), 22);
    // Put some atoms outside the cell: the energy must not care.
    positions[0][0] += 5.0;
    positions[1][2] -= 5.2;
    let err = finite_difference_error(&model, &numbers, &positions, Some(&cell));
    assert!(err < 1e-6, "relative force error {err:e}");
}

#[test]
fn energy_is_invariant_under_translation_rotation_and_permutation() {
    for seed in 0..3 {
        let model = random_model(small_config(4.0), 300 + seed);
        let (numbers, positions) = random_structure(10, 4.5, 0.9, None, 400 + seed);
        let (e0, f0) = energy_and_forces(&model, &numbers, &positions, None);
        let tolerance = 1e-10 * e0.abs().max(1.0);

        let shifted: Vec<Vec3> = positions
            .iter()
            .map(|r| [r[0] + 3.7, r[1] - 12.1, r[2] + 0.3])
            .collect();
        let (e1, f1) = energy_and_forces(&model, &numbers, &shifted, None);
        assert!((e1 - e0).abs() < tolerance, "translation: {e0} vs {e1}");
        for (a, b) in f0.iter().zip(&f1) {
            assert!((0..3).all(|x| (a[x] - b[x]).abs() < 1e-9));
        }

        let rot = random_rotation(500 + seed);
        let rotated: Vec<Vec3> = positions.iter().map(|r| rotate(&rot, r)).collect();
        let (e2, f2) = energy_and_forces(&model, &numbers, &rotated, None);
        assert!((e2 - e0).abs() < tolerance, "rotation: {e0} vs {e2}");
        // Forces rotate with the structure.
        for (a, b) in f0.iter().zip(&f2) {
            let ra = rotate(&rot, a);
            assert!(
                (0..3).all(|x| (ra[x] - b[x]).abs() < 1e-9),
                "rotated force {ra:?} vs {b:?}"
            );
        }

        let order: Vec<usize> = (0..numbers.len()).rev().collect();
        let perm_numbers: Vec<u8> = order.iter().map(|&i| numbers[i]).collect();
        let perm_positions: Vec<Vec3> = order.iter().map(|&i| positions[i]).collect();
        let (e3, f3) = energy_and_forces(&model, &perm_numbers, &perm_positions, None);
        assert!((e3 - e0).abs() < tolerance, "permutation: {e0} vs {e3}");
        for (k, &i) in order.iter().enumerate() {
            assert!((0..3).all(|x| (f3[k][x] - f0[i][x]).abs() < 1e-9));
        }
    }
}

#[test]
fn periodic_energy_is_invariant_under_wrapping_and_lattice_translation() {
    let cell = Cell::new([[6.0, 0.0, 0.0], [0.5, 6.2, 0.0], [0.3, -0.4, 5.8]]).unwrap();
    let model = random_model(small_config(4.0), 31);
    let (numbers, positions) = random_structure(8, 6.0, 1.0, Some(&cell), 32);
    let (e0, _) = energy_and_forces(&model, &numbers, &positions, Some(&cell));
    let mut moved = positions.clone();
    let t = cell.translation([2, -1, 3]);
    moved[3] = [moved[3][0] + t[0], moved[3][1] + t[1], moved[3][2] + t[2]];
    for r in moved.iter_mut().skip(5) {
        cell.wrap(r);
    }
    let (e1, _) = energy_and_forces(&model, &numbers, &moved, Some(&cell));
    assert!((e1 - e0).abs() < 1e-10 * e0.abs().max(1.0), "{e0} vs {e1}");
}

#[test]
fn forces_sum_to_zero_and_far_atoms_do_not_interact() {
    let model = random_model(small_config(4.0), 41);
    let (numbers, positions) = random_structure(8, 4.0, 0.9, None, 42);
    let (_, forces) = energy_and_forces(&model, &numbers, &positions, None);
    for axis in 0..3 {
        let total: f64 = forces.iter().map(|f| f[axis]).sum();
        assert!(total.abs() < 1e-10, "net force {total}");
    }
    // Two copies beyond the cutoff of each other: the energy is additive.
    let far: Vec<Vec3> = positions.iter().map(|r| [r[0] + 100.0, r[1], r[2]]).collect();
    let both_numbers: Vec<u8> = numbers.iter().chain(&numbers).cloned().collect();
    let both: Vec<Vec3> = positions.iter().chain(&far).cloned().collect();
    let (e1, _) = energy_and_forces(&model, &numbers, &positions, None);
    let (e2, _) = energy_and_forces(&model, &both_numbers, &both, None);
    assert!((e2 - 2.0 * e1).abs() < 1e-9 * e1.abs().max(1.0));
}

#[test]
fn two_identical_atoms_feel_equal_and_opposite_forces_along_the_bond() {
    let model = random_model(common::small_config(3.0), 51);
    let positions = vec![[0.0, 0.0, 0.0], [1.3, 0.0, 0.0]];
    let numbers = vec![1u8, 1];
    // With two identical atoms the forces are equal and opposite along the bond.
    let (_, f) = energy_and_forces(&model, &numbers, &positions, None);
    assert!((f[0][0] + f[1][0]).abs() < 1e-12);
    assert!(f[0][1].abs() < 1e-12 && f[0][2].abs() < 1e-12);
}
