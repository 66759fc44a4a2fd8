//! mdrun: molecular dynamics with a PaiNN machine-learned force field.
//!
//! Units everywhere: Å, fs, eV, amu, K (forces in eV/Å, velocities in Å/fs).

// Numerical loops over atoms, pairs and Cartesian components read best with indices.
#![allow(clippy::needless_range_loop)]

pub mod bench;
pub mod cell;

pub mod engine;
pub mod forcefield;
pub mod gpu;
pub mod input;
pub mod integrate;
pub mod model;
pub mod neighbors;
pub mod output;
pub mod restart;
pub mod rng;
pub mod simulation;
pub mod system;
pub mod units;
pub mod validate;
