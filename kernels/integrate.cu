// Integrators on the GPU (Å, fs, eV, amu): velocity Verlet and Langevin BAOAB. The step counter
// lives on the device so that a captured CUDA graph can be replayed unchanged; the Langevin noise
// of atom i at step n is Philox4x32-10 of (seed, n, i), the same numbers as rng.rs on the CPU.

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k.x += W0;
            k.y += W1;
        }
        u32 hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        u32 hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

__device__ __forceinline__ double open_unit(u32 x) { return ((double)x + 1.0) / 4294967296.0; }

// The integrator's parameters (Å, fs): the same struct on the host (src/gpu/md.rs).
struct Integration {
    const float* inv_mass;       // acc/m, the conversion to Å/fs² included
    const float* half_mass;      // m/2 in eV·fs²/Å²: half_mass·v² is a kinetic energy in eV
    const float* thermal_sigma;  // √(kT acc/m) (Å/fs): the thermal velocity of each atom
    double* heat;                // per atom, the kinetic energy the thermostat added (eV)
    u64 seed;
    float dt, damping, noise;
    int langevin;
};

// Atom a's first half of step `step` (1-based, as on the CPU): v += dt/2 · F/m, then (Verlet)
// x += dt v, or (BAOAB) A(½) O A(½). E_tot − Σ heat is conserved. One function for the
// integrator kernels and the one-cluster kernel's MD steps: the same arithmetic on both paths.
// `heat` is in.heat or a copy of it. Returns the new position (what was stored at pos: read back,
// it would wait on the velocity stores between, which may alias it).
// first_half_values: the same on the atom's velocity v, force f and position r in registers
// (the kernel that also gives the previous step's closing kick holds them so: perf-notes v63).
__device__ __forceinline__ double3 first_half_values(int a, double (&v)[3], const float (&f)[3], double (&r)[3],
                                                  double* pos, double* vel, double* heat, const Integration& in,
                                                  u64 step) {
    const float dt = in.dt;
    double s = 0.5 * dt * in.inv_mass[a];
    for (int k = 0; k < 3; ++k) v[k] += s * f[k];
    if (!in.langevin) {
        for (int k = 0; k < 3; ++k) r[k] += dt * v[k];
    } else {
        for (int k = 0; k < 3; ++k) r[k] += 0.5 * dt * v[k];
        uint4 bits = philox4x32_10(make_uint4((u32)step, (u32)(step >> 32), (u32)a, 0u),
                                   make_uint2((u32)in.seed, (u32)(in.seed >> 32)));
        double radius = sqrt(-2.0 * log(open_unit(bits.x)));
        double angle = 6.283185307179586 * open_unit(bits.y);
        double radius2 = sqrt(-2.0 * log(open_unit(bits.z)));
        double angle2 = 6.283185307179586 * open_unit(bits.w);
        double xi[3] = {radius * cos(angle), radius * sin(angle), radius2 * cos(angle2)};
        double sigma = in.thermal_sigma[a];
        double before = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        for (int k = 0; k < 3; ++k) {
            v[k] = in.damping * v[k] + in.noise * sigma * xi[k];
            r[k] += 0.5 * dt * v[k];
        }
        double after = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        heat[a] += in.half_mass[a] * (after - before);
    }
    for (int k = 0; k < 3; ++k) {
        vel[3 * a + k] = v[k];
        pos[3 * a + k] = r[k];
    }
    return make_double3(r[0], r[1], r[2]);
}

__device__ __forceinline__ double3 first_half_atom(int a, double* pos, double* vel, double* heat, const float* force,
                                                const Integration& in, u64 step) {
    double v[3], r[3];
    float f[3];
    for (int k = 0; k < 3; ++k) {
        v[k] = vel[3 * a + k];
        f[k] = force[3 * a + k];
        r[k] = pos[3 * a + k];
    }
    return first_half_values(a, v, f, r, pos, vel, heat, in, step);
}

// Atom a's closing half kick with the new forces.
// v += dt/2 · F/m on one atom's velocity in registers (inv_mass: acc/m).
__device__ __forceinline__ void half_kick(double (&v)[3], const float (&force)[3], float dt, float inv_mass) {
    double s = 0.5 * dt * inv_mass;
    for (int k = 0; k < 3; ++k) v[k] += s * force[k];
}

__device__ __forceinline__ void second_half_atom(int a, double* vel, const float* force, const Integration& in) {
    double v[3] = {vel[3 * a], vel[3 * a + 1], vel[3 * a + 2]};
    const float f[3] = {force[3 * a], force[3 * a + 1], force[3 * a + 2]};
    half_kick(v, f, in.dt, in.inv_mass[a]);
    for (int k = 0; k < 3; ++k) vel[3 * a + k] = v[k];
}

// The Verlet list's displacement check (the same struct on the host, src/gpu/params.rs), done by
// first_half on the positions it has just written instead of by a kernel of its own (perf-notes
// v41): a rebuild is requested for this step when any atom moved more than half the skin since
// the last one. reference == nullptr: no list to check.
struct DisplacementCheck {
    double* reference;        // positions at the last rebuild (written by it)
    u64* rebuild_step;        // stamped with the step counter to request a rebuild (neighbors.cu)
    float half_skin2;         // (skin / 2)² (Å²)
};

// Atom a's position at the last rebuild, read with the atom's state before first_half_atom's
// stores (after them it waited for another round of latency: they may alias it; perf-notes v51).
__device__ __forceinline__ double3 reference_position(int a, const DisplacementCheck& check) {
    const double* ref = check.reference + 3 * a;
    return make_double3(ref[0], ref[1], ref[2]);
}

// Whether an atom now at r has moved more than half the skin since the last rebuild (at reference).
__device__ __forceinline__ bool moved_past_half_skin(double3 r, double3 reference, const DisplacementCheck& check) {
    double dx = r.x - reference.x, dy = r.y - reference.y, dz = r.z - reference.z;
    return dx * dx + dy * dy + dz * dz > check.half_skin2;
}

extern "C" __global__ void first_half(double* pos, double* vel, const float* force, Integration in,
                                      const u64* step_counter, DisplacementCheck check, int n_atoms) {
    follow_previous_kernels();
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_atoms) return;
    const u64 step = *step_counter;
    const bool checking = check.reference != nullptr;
    const double3 reference = checking ? reference_position(a, check) : make_double3(0.0, 0.0, 0.0);
    const double3 r = first_half_atom(a, pos, vel, in.heat, force, in, step + 1);  // the step being taken
    if (checking && moved_past_half_skin(r, reference, check)) *check.rebuild_step = step;
}

// The closing half kick; the first thread advances the step counter.
extern "C" __global__ void second_half(double* vel, const float* force, Integration in, u64* step_counter,
                                       int n_atoms) {
    follow_previous_kernels();
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a == 0) *step_counter += 1;
    if (a >= n_atoms) return;
    second_half_atom(a, vel, force, in);
}

// An MD step's last kernel where the forces come from the fused kernels: pair_forces and the
// closing half kick in one launch (one kernel fewer per step, perf-notes v49). The same
// arithmetic as pair_forces then second_half, the force kept in registers for the kick.
extern "C" __global__ void pair_forces_and_second_half(const double* pos, Cell cell, Neighbors nb, float cutoff,
                                                       const float4* pair_grad, float* forces, int n_atoms,
                                                       double* vel, Integration in, u64* step_counter) {
    follow_previous_kernels();
    int a = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (a >= n_atoms) return;  // whole warps leave together
    // The kick's inputs that do not depend on the force, and the step counter, read before the
    // pair loop (read at the end, the counter was one more round of latency: perf-notes v51).
    const float inv_mass = in.inv_mass[a];
    double v[3];
    for (int k = 0; k < 3; ++k) v[k] = vel[3 * a + k];
    const u64 step = a == 0 ? *step_counter : 0;
    const float3 f = force_from_pairs(a, lane, pos, cell, nb, cutoff, pair_grad, n_atoms);
    if (lane == 0) {
        const float force[3] = {f.x, f.y, f.z};
        half_kick(v, force, in.dt, inv_mass);
        for (int k = 0; k < 3; ++k) {
            forces[3 * a + k] = force[k];
            vel[3 * a + k] = v[k];
        }
        if (a == 0) *step_counter = step + 1;
    }
}

// Potential energy, kinetic energy and thermostat heat (eV) in f64: one block of 256 threads,
// fixed order (deterministic).
extern "C" __global__ void energy_sums(const float* atom_energy, const double* vel, const float* half_mass,
                                       const double* heat, int n_atoms, double* out) {
    follow_previous_kernels();
    __shared__ double sh[3][256];
    double e = 0.0, kin = 0.0, q = 0.0;
    for (int a = threadIdx.x; a < n_atoms; a += blockDim.x) {
        e += atom_energy[a];
        double vx = vel[3 * a], vy = vel[3 * a + 1], vz = vel[3 * a + 2];
        kin += half_mass[a] * (vx * vx + vy * vy + vz * vz);
        q += heat[a];
    }
    sh[0][threadIdx.x] = e;
    sh[1][threadIdx.x] = kin;
    sh[2][threadIdx.x] = q;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride)
            for (int k = 0; k < 3; ++k) sh[k][threadIdx.x] += sh[k][threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        for (int k = 0; k < 3; ++k) out[k] = sh[k][0];
}
