//! The mdrun-painn safetensors format: round trip, and refusal of inconsistent files.

mod common;

use std::collections::HashMap;

use common::*;
use mdrun::forcefield::cpu::evaluate;
use mdrun::model::PainnModel;
use mdrun::neighbors::brute_force_pairs;
use safetensors::{Dtype, SafeTensors};

/// A fresh path per call: tests run in parallel.
fn temp_path(name: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mdrun-test-{}-{unique}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn round_trip_in_f64_is_exact_and_f32_is_close() {
    let model = random_model(small_config(4.0), 5);
    let (numbers, positions) = random_structure(8, 4.0, 0.9, None, 6);
    let pairs = brute_force_pairs(&positions, None, 4.0);
    let reference = evaluate(&model, &numbers, &pairs);
    for (single, tolerance) in [(false, 0.0), (true, 1e-5)] {
        let path = temp_path(&format!("roundtrip-{single}.safetensors"));
        model.save(&path, single).unwrap();
        let loaded = PainnModel::load(&path).unwrap();
        assert_eq!(loaded.config, model.config);
        let again = evaluate(&loaded, &numbers, &pairs);
        assert!(
            (again.energy - reference.energy).abs() <= tolerance * reference.energy.abs(),
            "single = {single}: {} vs {}",
            again.energy,
            reference.energy
        );
    }
}

/// Rewrites a saved model with `edit` applied to its tensors and metadata; returns the load error.
fn load_error_after(
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) -> String {
    let model = random_model(small_config(4.0), 9);
    let path = temp_path("edit-source.safetensors");
    model.save(&path, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut metadata);
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F64, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = temp_path("edited.safetensors");
    std::fs::write(&out, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
    let error = PainnModel::load(&out)
        .expect_err("an inconsistent file must be refused")
        .to_string();
    assert!(
        error.contains("edited.safetensors"),
        "the error names the file: {error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    error
}

#[test]
fn a_tensor_of_the_wrong_shape_is_refused_by_name() {
    let error = load_error_after(|tensors, _| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "representation.mixing.1.mu_channel_mix.weight")
            .unwrap();
        t.1 = vec![16, 32];
    });
    assert!(
        error.contains("representation.mixing.1.mu_channel_mix.weight") && error.contains("shape"),
        "{error}"
    );
}

#[test]
fn metadata_that_disagrees_with_the_tensors_is_refused() {
    let error = load_error_after(|_, meta| {
        meta.insert("n_atom_basis".into(), "32".into());
    });
    assert!(error.contains("shape"), "{error}");
    let error = load_error_after(|_, meta| {
        meta.insert("n_interactions".into(), "3".into());
    });
    assert!(error.contains("missing") || error.contains("shape"), "{error}");
}

#[test]
fn missing_or_foreign_pieces_are_refused() {
    let error = load_error_after(|tensors, _| tensors.retain(|t| t.0 != "output_modules.0.outnet.1.bias"));
    assert!(
        error.contains("output_modules.0.outnet.1.bias") && error.contains("missing"),
        "{error}"
    );
    let error = load_error_after(|_, meta| {
        meta.remove("cutoff");
    });
    assert!(error.contains("cutoff"), "{error}");
    let error = load_error_after(|_, meta| {
        meta.insert("format".into(), "something-else".into());
    });
    assert!(error.contains("format"), "{error}");
    let error = load_error_after(|_, meta| {
        meta.insert("length_unit".into(), "nm".into());
    });
    assert!(error.contains("Angstrom"), "{error}");
    let error =
        load_error_after(|tensors, _| tensors.push(("extra.tensor".into(), vec![1], 1.0f64.to_le_bytes().to_vec())));
    assert!(error.contains("extra.tensor"), "{error}");
    let error = load_error_after(|tensors, _| {
        let t = tensors.iter_mut().find(|t| t.0 == "energy.scale").unwrap();
        t.2 = f64::NAN.to_le_bytes().to_vec();
    });
    assert!(error.contains("non-finite"), "{error}");
}

#[test]
fn a_file_that_is_not_safetensors_is_refused() {
    let path = temp_path("garbage.safetensors");
    std::fs::write(&path, b"not a model at all").unwrap();
    let error = PainnModel::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("garbage.safetensors") && error.contains("safetensors"),
        "{error}"
    );
}
