//! Time integration: velocity Verlet (NVE) and Langevin BAOAB (NVT), plus initial velocities
//! and kinetic observables. Units: Å, fs, eV, amu, K.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::cell::Vec3;
use crate::rng::gaussian4;
use crate::units::{ACCELERATION_A_PER_FS2, AMU_A2_PER_FS2_IN_EV, BOLTZMANN_EV_PER_K, FS_PER_PS};

/// How the velocities are propagated between force evaluations.
#[derive(Debug, Clone, PartialEq)]
pub enum Integrator {
    /// Velocity Verlet: B(½) A(1) · force · B(½).
    VelocityVerlet { timestep_fs: f64 },
    /// BAOAB Langevin splitting (Leimkuhler & Matthews 2013): B(½) A(½) O(1) A(½) · force · B(½).
    Langevin {
        timestep_fs: f64,
        temperature_k: f64,
        friction_per_ps: f64,
        seed: u64,
    },
}

impl Integrator {
    pub fn timestep_fs(&self) -> f64 {
        match self {
            Integrator::VelocityVerlet { timestep_fs } | Integrator::Langevin { timestep_fs, .. } => *timestep_fs,
        }
    }

    /// Degrees of freedom for the temperature: Verlet conserves total momentum (zeroed at the
    /// start), so three are gone; Langevin friction does not conserve it, so all 3N count.
    pub fn degrees_of_freedom(&self, n_atoms: usize) -> usize {
        match self {
            Integrator::VelocityVerlet { .. } if n_atoms > 1 => 3 * n_atoms - 3,
            _ => 3 * n_atoms,
        }
    }

    /// Everything up to the next force evaluation, for step `step` (1-based). Returns the
    /// kinetic energy the thermostat put in (eV), so a conserved quantity can be tracked.
    pub fn first_half(
        &self,
        step: u64,
        positions: &mut [Vec3],
        velocities: &mut [Vec3],
        forces: &[Vec3],
        masses: &[f64],
    ) -> f64 {
        let dt = self.timestep_fs();
        kick(velocities, forces, masses, 0.5 * dt);
        match self {
            Integrator::VelocityVerlet { .. } => {
                drift(positions, velocities, dt);
                0.0
            }
            Integrator::Langevin {
                temperature_k,
                friction_per_ps,
                seed,
                ..
            } => {
                drift(positions, velocities, 0.5 * dt);
                let before = kinetic_energy(velocities, masses);
                let damping = (-friction_per_ps / FS_PER_PS * dt).exp();
                let noise = (1.0 - damping * damping).sqrt();
                let kt = BOLTZMANN_EV_PER_K * temperature_k;
                for (atom, (v, m)) in velocities.iter_mut().zip(masses).enumerate() {
                    let sigma = (kt * ACCELERATION_A_PER_FS2 / m).sqrt();
                    let xi = gaussian4(*seed, step, atom as u32, 0);
                    for a in 0..3 {
                        v[a] = damping * v[a] + noise * sigma * xi[a];
                    }
                }
                let heat = kinetic_energy(velocities, masses) - before;
                drift(positions, velocities, 0.5 * dt);
                heat
            }
        }
    }

    /// The closing half kick with the new forces.
    pub fn second_half(&self, velocities: &mut [Vec3], forces: &[Vec3], masses: &[f64]) {
        kick(velocities, forces, masses, 0.5 * self.timestep_fs());
    }
}

fn kick(velocities: &mut [Vec3], forces: &[Vec3], masses: &[f64], dt: f64) {
    for ((v, f), m) in velocities.iter_mut().zip(forces).zip(masses) {
        let scale = dt * ACCELERATION_A_PER_FS2 / m;
        for a in 0..3 {
            v[a] += scale * f[a];
        }
    }
}

fn drift(positions: &mut [Vec3], velocities: &[Vec3], dt: f64) {
    for (r, v) in positions.iter_mut().zip(velocities) {
        for a in 0..3 {
            r[a] += dt * v[a];
        }
    }
}

/// Kinetic energy in eV.
pub fn kinetic_energy(velocities: &[Vec3], masses: &[f64]) -> f64 {
    0.5 * AMU_A2_PER_FS2_IN_EV
        * velocities
            .iter()
            .zip(masses)
            .map(|(v, m)| m * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]))
            .sum::<f64>()
}

/// Instantaneous temperature in K.
pub fn temperature(kinetic_energy_ev: f64, degrees_of_freedom: usize) -> f64 {
    if degrees_of_freedom == 0 {
        return 0.0;
    }
    2.0 * kinetic_energy_ev / (degrees_of_freedom as f64 * BOLTZMANN_EV_PER_K)
}

/// Maxwell–Boltzmann velocities at `temperature_k` (Å/fs), seeded: each component drawn from
/// N(0, kT/m), net momentum removed, then scaled so the temperature over `degrees_of_freedom` is
/// exactly the target (as LAMMPS' `velocity create` does).
pub fn maxwell_boltzmann(masses: &[f64], temperature_k: f64, degrees_of_freedom: usize, seed: u64) -> Vec<Vec3> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kt = BOLTZMANN_EV_PER_K * temperature_k;
    let mut velocities: Vec<Vec3> = masses
        .iter()
        .map(|m| {
            let sigma = (kt * ACCELERATION_A_PER_FS2 / m).sqrt();
            [0, 1, 2].map(|_| sigma * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng))
        })
        .collect();
    if masses.len() > 1 {
        crate::system::System::remove_net_momentum(&mut velocities, masses);
    }
    let current = temperature(kinetic_energy(&velocities, masses), degrees_of_freedom);
    if current > 0.0 && temperature_k > 0.0 {
        let scale = (temperature_k / current).sqrt();
        velocities
            .iter_mut()
            .for_each(|v| v.iter_mut().for_each(|x| *x *= scale));
    }
    velocities
}
