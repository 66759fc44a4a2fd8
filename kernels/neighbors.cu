// Verlet neighbor list on the GPU: wrapping, candidate search (all pairs within cutoff + skin,
// periodic images included) into fixed-capacity rows, and the index of each pair's reverse.
// Rebuild kernels run every step inside the CUDA graph but return at once unless the
// displacement check (in first_half, integrate.cu) or the host stamped `rebuild_step` with the
// current step.

struct Rebuild {
    const u64* step;    // current step (device)
    u64* rebuild_step;  // step at which a rebuild was requested
    int* overflow;      // set when a row would exceed the capacity: the host grows it and redoes
};

__device__ __forceinline__ bool rebuilding(const Rebuild& rb) { return *rb.rebuild_step == *rb.step; }

// Wraps atom a into the cell and records its reference position.
__device__ __forceinline__ void wrap_atom(int a, double* pos, double* reference, const Cell& cell) {
    double r[3] = {pos[3 * a], pos[3 * a + 1], pos[3 * a + 2]};
    if (cell.periodic) {
        double s[3];
        for (int k = 0; k < 3; ++k) {
            s[k] = r[0] * cell.inv[0][k] + r[1] * cell.inv[1][k] + r[2] * cell.inv[2][k];
            s[k] -= floor(s[k]);
            if (s[k] >= 1.0) s[k] = 0.0;
        }
        for (int k = 0; k < 3; ++k) r[k] = s[0] * cell.v[0][k] + s[1] * cell.v[1][k] + s[2] * cell.v[2][k];
    }
    for (int k = 0; k < 3; ++k) {
        pos[3 * a + k] = r[k];
        reference[3 * a + k] = r[k];
    }
}

// Wraps positions into the cell and records the reference positions (rebuild steps only).
extern "C" __global__ void wrap_positions(double* pos, double* reference, Cell cell, Rebuild rb, int n_atoms) {
    follow_previous_kernels();
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_atoms || !rebuilding(rb)) return;
    wrap_atom(a, pos, reference, cell);
}

// Row i of the all-pairs candidate search: every j and every image in reach. O(N) per row.
__device__ __forceinline__ void build_row_all_pairs(int i, const double* pos, const Cell& cell, int3 reach,
                                                    float radius2, int* count, int* nbr_j, int3* nbr_image,
                                                    int capacity, int* overflow, int n_atoms) {
    int n = 0;
    for (int j = 0; j < n_atoms; ++j) {
        for (int na = -reach.x; na <= reach.x; ++na)
            for (int nb = -reach.y; nb <= reach.y; ++nb)
                for (int nc = -reach.z; nc <= reach.z; ++nc) {
                    if (i == j && na == 0 && nb == 0 && nc == 0) continue;
                    int3 image = make_int3(na, nb, nc);
                    float3 r = pair_vector(pos, i, j, cell, image);
                    if (r.x * r.x + r.y * r.y + r.z * r.z < radius2) {
                        if (n < capacity) {
                            nbr_j[i * capacity + n] = j;
                            nbr_image[i * capacity + n] = image;
                        }
                        ++n;
                    }
                }
    }
    if (n > capacity) {
        *overflow = 1;
        n = capacity;
    }
    count[i] = n;
}

// All-pairs candidate search: one thread per atom i over every j and every image in reach.
// O(N²): the simple search, exact for any cell.
extern "C" __global__ void build_neighbors_all_pairs(const double* pos, Cell cell, int3 reach, float radius2, int* count,
                                                     int* nbr_j, int3* nbr_image, int capacity, Rebuild rb,
                                                     int n_atoms) {
    follow_previous_kernels();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_atoms || !rebuilding(rb)) return;
    build_row_all_pairs(i, pos, cell, reach, radius2, count, nbr_j, nbr_image, capacity, rb.overflow, n_atoms);
}

// The index of the reverse of pair (i, slot): (i → j, n) ↔ (j → i, −n). The lists are symmetric,
// so it exists unless a row overflowed.
__device__ __forceinline__ void reverse_pair(int i, int slot, const int* count, const int* nbr_j, const int3* nbr_image,
                                             int* reverse, int capacity, int* overflow) {
    int p = i * capacity + slot;
    int j = nbr_j[p];
    int3 n = nbr_image[p];
    int found = -1;
    for (int q = j * capacity; q < j * capacity + count[j]; ++q) {
        int3 m = nbr_image[q];
        if (nbr_j[q] == i && m.x == -n.x && m.y == -n.y && m.z == -n.z) {
            found = q;
            break;
        }
    }
    if (found < 0) {
        *overflow = 1;
        found = p;
    }
    reverse[p] = found;
}

extern "C" __global__ void reverse_pairs(const int* count, const int* nbr_j, const int3* nbr_image, int* reverse,
                                         int capacity, Rebuild rb, int n_atoms) {
    follow_previous_kernels();
    int i = blockIdx.x;
    if (!rebuilding(rb)) return;
    for (int slot = threadIdx.x; slot < count[i]; slot += blockDim.x)
        reverse_pair(i, slot, count, nbr_j, nbr_image, reverse, capacity, rb.overflow);
}

// The rebuild of first_half_and_rebuild (one block, a thread per atom, after the block's
// positions were written): stamp the step, wrap, search, reverse index.
__device__ __forceinline__ void rebuild_all_pairs_in_block(u64 step, double* pos, const DisplacementCheck& check,
                                                           const Cell& cell, int3 reach, float radius2, int* count,
                                                           int* nbr_j, int3* nbr_image, int* reverse, int capacity,
                                                           int* overflow, int n_atoms) {
    const int a = threadIdx.x;
    if (a == 0) *check.rebuild_step = step;
    if (a < n_atoms) wrap_atom(a, pos, check.reference, cell);
    __syncthreads();
    if (a < n_atoms) build_row_all_pairs(a, pos, cell, reach, radius2, count, nbr_j, nbr_image, capacity, overflow, n_atoms);
    __syncthreads();
    for (int k = a; k < n_atoms * capacity; k += blockDim.x) {
        const int i = k / capacity, slot = k % capacity;
        if (slot < count[i]) reverse_pair(i, slot, count, nbr_j, nbr_image, reverse, capacity, overflow);
    }
}

// Systems of at most one block of atoms with the all-pairs search (perf-notes v43): the MD step's
// first integrator half, the displacement check and, on rebuild steps, the wrap, the search and
// the reverse index in one kernel, where they took four (first_half, wrap_positions,
// build_neighbors_all_pairs, reverse_pairs; the last three returned at once on most steps). One
// block, so __syncthreads orders the phases; the same device functions as those kernels, in the
// same order on the same values: the same rows.
extern "C" __global__ void first_half_and_rebuild(double* pos, double* vel, const float* force, Integration in,
                                                  const u64* step_counter, Cell cell, int n_atoms,
                                                  DisplacementCheck check, int3 reach, float radius2, int* count,
                                                  int* nbr_j, int3* nbr_image, int* reverse, int capacity,
                                                  int* overflow) {
    follow_previous_kernels();
    const int a = threadIdx.x;
    const u64 step = *step_counter;
    const bool requested = *check.rebuild_step == step;  // by the host (a forced rebuild)
    bool moved = false;
    if (a < n_atoms) {
        const double3 reference = reference_position(a, check);
        const double3 r = first_half_atom(a, pos, vel, in.heat, force, in, step + 1);  // the step being taken
        moved = moved_past_half_skin(r, reference, check);
    }
    if (!__syncthreads_or(moved) && !requested) return;
    rebuild_all_pairs_in_block(step, pos, check, cell, reach, radius2, count, nbr_j, nbr_image, reverse, capacity,
                               overflow, n_atoms);
}

// An MD step's closing half kick and the next step's first half in one kernel of one block, a
// warp per atom (the kernel takes up to 32 atoms, the host joins up to 16; the one-block rebuild): inside a graph of several steps
// (perf-notes v63) each boundary between two steps but the last. pair_forces_and_second_half then
// first_half_and_rebuild, the same device functions on the same values (the force and velocity
// passed in registers): the same bits. Every warp reads the positions for its forces before any
// is moved, and the step counter before it is advanced.
// __launch_bounds__: up to 32 warps in the block (the host joins up to JOINED_STEP_MAX_ATOMS = 16, forces.rs).
extern "C" __global__ void __launch_bounds__(1024) pair_forces_kick_and_first_half(double* pos, Cell cell, Neighbors nb, float cutoff,
                                                           const float4* pair_grad, float* forces, int n_atoms,
                                                           double* vel, Integration in, u64* step_counter,
                                                           DisplacementCheck check, int3 reach, float radius2,
                                                           int* count, int* nbr_j, int3* nbr_image, int* reverse,
                                                           int capacity, int* overflow) {
    follow_previous_kernels();
    const int a = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool atom = a < n_atoms && lane == 0;
    // Steps done once the kick is given (the counter's value after it); the first half taken is step + 1.
    const u64 step = *step_counter + 1;
    const bool requested = *check.rebuild_step == step;
    double v[3], r[3];
    double3 reference = make_double3(0.0, 0.0, 0.0);
    float inv_mass = 0.f;
    if (atom) {
        inv_mass = in.inv_mass[a];
        for (int k = 0; k < 3; ++k) {
            v[k] = vel[3 * a + k];
            r[k] = pos[3 * a + k];
        }
        reference = reference_position(a, check);
    }
    float3 f3 = make_float3(0.f, 0.f, 0.f);
    if (a < n_atoms) f3 = force_from_pairs(a, lane, pos, cell, nb, cutoff, pair_grad, n_atoms);
    __syncthreads();  // every force read its positions
    bool moved = false;
    if (atom) {
        const float f[3] = {f3.x, f3.y, f3.z};
        half_kick(v, f, in.dt, inv_mass);
        for (int k = 0; k < 3; ++k) forces[3 * a + k] = f[k];
        moved = moved_past_half_skin(first_half_values(a, v, f, r, pos, vel, in.heat, in, step + 1), reference, check);
    }
    const bool rebuild = __syncthreads_or(moved) || requested;
    if (threadIdx.x == 0) *step_counter = step;
    if (!rebuild) return;
    rebuild_all_pairs_in_block(step, pos, check, cell, reach, radius2, count, nbr_j, nbr_image, reverse, capacity,
                               overflow, n_atoms);
}

// ---------------------------------------------------------------------------------------------
// Cell list for periodic cells (O(N)): atoms binned in fractional coordinates, bins scanned within
// `reach` of the home bin along each lattice vector, with the image shift of bins past the edge.
// Same scheme as neighbors/cell_list.rs on the CPU. Row order is deterministic: bins in scan
// order, atoms by index within a bin.

struct Bins {
    int3 n;         // bins along a, b, c
    int3 reach;     // bins scanned each way
    int* count;     // [bins] (also the fill cursor)
    int* start;     // [bins + 1]
    int* atoms;     // [N] atoms sorted by bin
    int* atom_bin;  // [N]
};

__device__ __forceinline__ int flat_bin(const Bins& b, int x, int y, int z) { return (x * b.n.y + y) * b.n.z + z; }

extern "C" __global__ void bins_clear(Bins bins, Rebuild rb) {
    follow_previous_kernels();
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < bins.n.x * bins.n.y * bins.n.z && rebuilding(rb)) bins.count[k] = 0;
}

extern "C" __global__ void bins_assign(const double* pos, Cell cell, Bins bins, Rebuild rb, int n_atoms) {
    follow_previous_kernels();
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_atoms || !rebuilding(rb)) return;
    int idx[3];
    int n[3] = {bins.n.x, bins.n.y, bins.n.z};
    for (int k = 0; k < 3; ++k) {
        double s = pos[3 * a] * cell.inv[0][k] + pos[3 * a + 1] * cell.inv[1][k] + pos[3 * a + 2] * cell.inv[2][k];
        s -= floor(s);
        idx[k] = min(max((int)floor(s * n[k]), 0), n[k] - 1);
    }
    int b = flat_bin(bins, idx[0], idx[1], idx[2]);
    bins.atom_bin[a] = b;
    atomicAdd(&bins.count[b], 1);
}

// Exclusive scan of the counts into `start` (one block), then the counts become fill cursors.
extern "C" __global__ void bins_scan(Bins bins, Rebuild rb) {
    follow_previous_kernels();
    __shared__ int partial[1024];
    if (!rebuilding(rb)) return;
    int n_bins = bins.n.x * bins.n.y * bins.n.z;
    int per = (n_bins + blockDim.x - 1) / blockDim.x;
    int begin = threadIdx.x * per, end = min(n_bins, begin + per);
    int sum = 0;
    for (int k = begin; k < end; ++k) sum += bins.count[k];
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        int running = 0;
        for (int k = 0; k < blockDim.x; ++k) {
            int v = partial[k];
            partial[k] = running;
            running += v;
        }
        bins.start[n_bins] = running;
    }
    __syncthreads();
    int running = partial[threadIdx.x];
    for (int k = begin; k < end; ++k) {
        bins.start[k] = running;
        running += bins.count[k];
        bins.count[k] = 0;
    }
}

extern "C" __global__ void bins_fill(Bins bins, Rebuild rb, int n_atoms) {
    follow_previous_kernels();
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_atoms || !rebuilding(rb)) return;
    int b = bins.atom_bin[a];
    bins.atoms[bins.start[b] + atomicAdd(&bins.count[b], 1)] = a;
}

// Atoms within a bin by index (the fill order above is a race): deterministic rows.
extern "C" __global__ void bins_sort(Bins bins, Rebuild rb) {
    follow_previous_kernels();
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    int n_bins = bins.n.x * bins.n.y * bins.n.z;
    if (b >= n_bins || !rebuilding(rb)) return;
    int* list = bins.atoms + bins.start[b];
    int len = bins.start[b + 1] - bins.start[b];
    for (int i = 1; i < len; ++i) {
        int v = list[i], k = i - 1;
        while (k >= 0 && list[k] > v) {
            list[k + 1] = list[k];
            --k;
        }
        list[k + 1] = v;
    }
}

extern "C" __global__ void build_neighbors_cells(const double* pos, Cell cell, Bins bins, float radius2, int* count,
                                                 int* nbr_j, int3* nbr_image, int capacity, Rebuild rb, int n_atoms) {
    follow_previous_kernels();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_atoms || !rebuilding(rb)) return;
    int home = bins.atom_bin[i];
    int hz = home % bins.n.z, hy = (home / bins.n.z) % bins.n.y, hx = home / (bins.n.z * bins.n.y);
    int n = 0;
    for (int dx = -bins.reach.x; dx <= bins.reach.x; ++dx)
        for (int dy = -bins.reach.y; dy <= bins.reach.y; ++dy)
            for (int dz = -bins.reach.z; dz <= bins.reach.z; ++dz) {
                int t[3] = {hx + dx, hy + dy, hz + dz};
                int nb[3] = {bins.n.x, bins.n.y, bins.n.z};
                int w[3], img[3];
                for (int k = 0; k < 3; ++k) {
                    w[k] = ((t[k] % nb[k]) + nb[k]) % nb[k];
                    img[k] = (t[k] - w[k]) / nb[k];
                }
                int3 image = make_int3(img[0], img[1], img[2]);
                int b = flat_bin(bins, w[0], w[1], w[2]);
                for (int q = bins.start[b]; q < bins.start[b + 1]; ++q) {
                    int j = bins.atoms[q];
                    if (j == i && image.x == 0 && image.y == 0 && image.z == 0) continue;
                    float3 r = pair_vector(pos, i, j, cell, image);
                    if (r.x * r.x + r.y * r.y + r.z * r.z < radius2) {
                        if (n < capacity) {
                            nbr_j[i * capacity + n] = j;
                            nbr_image[i * capacity + n] = image;
                        }
                        ++n;
                    }
                }
            }
    if (n > capacity) {
        *rb.overflow = 1;
        n = capacity;
    }
    count[i] = n;
}
