//! Units and physical constants. mdrun works in Å, fs, eV, amu and K throughout.

/// Boltzmann constant in eV/K (CODATA 2018, exact).
pub const BOLTZMANN_EV_PER_K: f64 = 8.617_333_262e-5;

/// Converts force/mass in eV/(Å·amu) to acceleration in Å/fs².
///
/// 1 eV / (Å · amu) = 1.602176634e-19 J / (1e-10 m · 1.66053906660e-27 kg) = 9.6485332e17 m/s²
/// = 9.6485332e-3 Å/fs².
pub const ACCELERATION_A_PER_FS2: f64 = 1.602_176_634e-19 / (1e-10 * 1.660_539_066_60e-27) * 1e-20;

/// Converts m·v² in amu·Å²/fs² to eV (1 amu·Å²/fs² = 103.6427 eV).
pub const AMU_A2_PER_FS2_IN_EV: f64 = 1.660_539_066_60e-27 * 1e-20 / 1e-30 / 1.602_176_634e-19;

/// Femtoseconds per picosecond.
pub const FS_PER_PS: f64 = 1000.0;

/// Nanoseconds per day over femtoseconds per second: ns/day = steps/s · dt[fs] · this.
pub const NS_PER_DAY_PER_FS_PER_S: f64 = 86_400.0 * 1e-6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_factors_are_mutually_consistent() {
        // a = F/m and E_kin = m v²/2 must agree: the product of the two factors is 1.
        assert!((ACCELERATION_A_PER_FS2 * AMU_A2_PER_FS2_IN_EV - 1.0).abs() < 1e-12);
        assert!((AMU_A2_PER_FS2_IN_EV - 103.642_697).abs() < 1e-5);
    }
}
