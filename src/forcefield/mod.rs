//! Force fields behind one interface; `cpu` is the f64 reference every GPU kernel is held to.

pub mod cpu;

use crate::cell::Vec3;
use crate::model::PainnModel;
use crate::neighbors::PairList;

/// Energy (eV) and forces (eV/Å) from atoms and their directed pairs within the cutoff.
pub trait ForceField {
    fn cutoff(&self) -> f64;
    /// Writes the forces into `forces` and returns the energy.
    fn compute(&mut self, numbers: &[u8], pairs: &PairList, forces: &mut [Vec3]) -> f64;
}

/// The f64 CPU reference PaiNN.
pub struct CpuPainn {
    pub model: PainnModel,
    workspace: cpu::Workspace,
}

impl CpuPainn {
    pub fn new(model: PainnModel) -> CpuPainn {
        CpuPainn {
            model,
            workspace: cpu::Workspace::default(),
        }
    }
}

impl ForceField for CpuPainn {
    fn cutoff(&self) -> f64 {
        self.model.cutoff()
    }

    fn compute(&mut self, numbers: &[u8], pairs: &PairList, forces: &mut [Vec3]) -> f64 {
        let evaluation = cpu::evaluate_in(&mut self.workspace, &self.model, numbers, pairs);
        forces.copy_from_slice(&evaluation.forces);
        evaluation.energy
    }
}
