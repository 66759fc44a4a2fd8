//! mdrun's f64 reference against energies and forces that schnetpack itself computed (fixtures
//! made by tools/make_schnetpack_fixtures.py, exported by tools/export_schnetpack.py): open and
//! periodic geometries, per-layer and shared filters and interactions, Gaussian and Bessel bases.

mod common;

use std::path::Path;

use common::project_file;
use mdrun::cell::{Cell, Vec3};
use mdrun::forcefield::cpu::evaluate;
use mdrun::model::PainnModel;
use mdrun::neighbors::brute_force_pairs;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    model: String,
    name: String,
    numbers: Vec<u8>,
    positions: Vec<Vec3>,
    cell: Option<[[f64; 3]; 3]>,
    pbc: [bool; 3],
    energy: f64,
    forces: Vec<Vec3>,
}

#[derive(Deserialize)]
struct Reference {
    schnetpack_version: String,
    cases: Vec<Case>,
}

#[test]
fn cpu_reference_reproduces_schnetpack() {
    let dir = project_file("tests/fixtures/schnetpack");
    let text = std::fs::read_to_string(Path::new(&dir).join("reference.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert!(reference.cases.len() >= 12, "fixture cases: {}", reference.cases.len());
    let mut periodic_cases = 0;
    for case in &reference.cases {
        let model = PainnModel::load(&Path::new(&dir).join(&case.model)).unwrap();
        let cell = match (case.cell, case.pbc) {
            (Some(vectors), [true, true, true]) => {
                periodic_cases += 1;
                Some(Cell::new(vectors).unwrap())
            }
            (_, [false, false, false]) => None,
            (_, pbc) => panic!("{}: mixed periodicity {pbc:?} is not supported", case.name),
        };
        let pairs = brute_force_pairs(&case.positions, cell.as_ref(), model.cutoff());
        let ours = evaluate(&model, &case.numbers, &pairs);
        let e_err = (ours.energy - case.energy).abs() / case.energy.abs();
        let f_err = ours
            .forces
            .iter()
            .zip(&case.forces)
            .flat_map(|(a, b)| (0..3).map(move |k| (a[k] - b[k]).abs()))
            .fold(0.0, f64::max);
        eprintln!(
            "{} / {}: energy rel err {e_err:.1e}, force max abs err {f_err:.1e} eV/Å",
            case.model, case.name
        );
        assert!(
            e_err <= 1e-9,
            "{} / {}: energy {} vs schnetpack {}",
            case.model,
            case.name,
            ours.energy,
            case.energy
        );
        assert!(f_err <= 1e-8, "{} / {}: force error {f_err:e}", case.model, case.name);
    }
    assert!(periodic_cases >= 6, "periodic cases: {periodic_cases}");
    assert!(reference.schnetpack_version.starts_with('2'));
}
