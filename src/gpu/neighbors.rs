//! The Verlet neighbor list on the GPU: fixed-capacity rows rebuilt on the device when the
//! displacement check asks for it; an overflow flag, never a silent truncation.

use anyhow::Result;
use cudarc::driver::CudaFunction;

use super::launch::Launch;
use super::params::{
    BinsParams, CellParams, DisplacementCheckParams, Int3, IntegrationParams, NeighborParams, RebuildParams,
};
use super::{block_per_item, grid_for, Buffer, Gpu};
use crate::cell::{Cell, Vec3};
use crate::neighbors::cell_list_candidates;

/// How candidates are searched on a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NeighborSearch {
    /// Cell list for periodic cells, all pairs for open systems.
    #[default]
    Auto,
    /// Every atom against every atom and image: O(N²), for any system.
    AllPairs,
    /// Binning in fractional coordinates: O(N), periodic cells only.
    CellList,
}

/// Bins of the cell list and their device buffers.
struct CellBins {
    params: BinsParams,
    n_bins: usize,
    _buffers: [Buffer<i32>; 4],
}

impl CellBins {
    fn new(gpu: &Gpu, n_atoms: usize, cell: &Cell, radius: f64) -> Result<CellBins> {
        let widths = cell.perpendicular_widths();
        let mut n = widths.map(|w| ((w / radius).floor() as usize).max(1));
        let max_bins = (8 * n_atoms).max(27);
        while n.iter().product::<usize>() > max_bins {
            n = n.map(|b| (b / 2).max(1));
        }
        let reach = [0, 1, 2].map(|a| (radius * n[a] as f64 / widths[a]).ceil() as i32);
        let n_bins = n.iter().product::<usize>();
        let buffers = [
            gpu.zeros(n_bins)?,
            gpu.zeros(n_bins + 1)?,
            gpu.zeros(n_atoms)?,
            gpu.zeros(n_atoms)?,
        ];
        let params = BinsParams {
            n: Int3 {
                x: n[0] as i32,
                y: n[1] as i32,
                z: n[2] as i32,
            },
            reach: Int3 {
                x: reach[0],
                y: reach[1],
                z: reach[2],
            },
            count: buffers[0].ptr,
            start: buffers[1].ptr,
            atoms: buffers[2].ptr,
            atom_bin: buffers[3].ptr,
        };
        Ok(CellBins {
            params,
            n_bins,
            _buffers: buffers,
        })
    }
}

/// Most atoms for which the MD step's first integrator half also runs the displacement check and
/// the whole all-pairs rebuild, in one block of [`ONE_BLOCK_THREADS`] threads (perf-notes v43).
/// Past it the rebuild's reverse index, one thread per 4+ pair slots, would slow the rebuild steps.
pub const ONE_BLOCK_MAX_ATOMS: usize = 64;
const ONE_BLOCK_THREADS: u32 = 256;
// The kernel takes one thread per atom, without a loop.
const _: () = assert!(ONE_BLOCK_MAX_ATOMS <= ONE_BLOCK_THREADS as usize);

pub struct GpuNeighbors {
    pub capacity: usize,
    bins: Option<CellBins>,
    n_atoms: usize,
    pub count: Buffer<i32>,
    pub j: Buffer<i32>,
    pub image: Buffer<Int3>,
    pub reverse: Buffer<i32>,
    reference: Buffer<f64>,
    /// The step at which the last rebuild was requested (u64::MAX: none pending).
    pub rebuild_step: Buffer<u64>,
    pub overflow: Buffer<i32>,
    pub cell: CellParams,
    reach: Int3,
    radius2: f32,
    /// The displacement check's parameters and the rows' capacity, as the one-block rebuild's
    /// kernels take them (built once: a launch holds references to its arguments).
    check: DisplacementCheckParams,
    row_capacity: i32,
    wrap: CudaFunction,
    build: CudaFunction,
    reverse_pairs: CudaFunction,
    first_half_and_rebuild: CudaFunction,
    bins_clear: CudaFunction,
    bins_assign: CudaFunction,
    bins_scan: CudaFunction,
    bins_fill: CudaFunction,
    bins_sort: CudaFunction,
    build_cells: CudaFunction,
}

/// Row capacity for `positions`: the largest number of candidates any atom has now, with room
/// for the density to fluctuate.
pub fn initial_capacity(positions: &[Vec3], cell: Option<&Cell>, radius: f64) -> usize {
    let mut wrapped = positions.to_vec();
    if let Some(c) = cell {
        wrapped.iter_mut().for_each(|r| c.wrap(r));
    }
    let candidates = cell_list_candidates(&wrapped, cell, radius);
    let mut counts = vec![0usize; positions.len()];
    for c in &candidates {
        counts[c.i as usize] += 1;
    }
    let max = counts.into_iter().max().unwrap_or(0);
    (max + max / 3 + 16).next_multiple_of(8)
}

impl GpuNeighbors {
    pub fn new(
        gpu: &Gpu,
        n_atoms: usize,
        cell: Option<&Cell>,
        cutoff: f64,
        skin: f64,
        capacity: usize,
        search: NeighborSearch,
    ) -> Result<GpuNeighbors> {
        let radius = cutoff + skin;
        let bins = match (search, cell) {
            (NeighborSearch::AllPairs, _) | (NeighborSearch::Auto, None) => None,
            (NeighborSearch::Auto | NeighborSearch::CellList, Some(cell)) => {
                Some(CellBins::new(gpu, n_atoms, cell, radius)?)
            }
            (NeighborSearch::CellList, None) => {
                anyhow::bail!("neighbor_search = \"cell-list\" needs a periodic cell; use \"all-pairs\" or \"auto\"")
            }
        };

        let reach = match cell {
            Some(c) => {
                let w = c.perpendicular_widths();
                let r = |a: usize| (radius / w[a]).ceil() as i32;
                Int3 {
                    x: r(0),
                    y: r(1),
                    z: r(2),
                }
            }
            None => Int3::default(),
        };
        let mut neighbors = GpuNeighbors {
            capacity,
            bins,
            n_atoms,
            count: gpu.zeros(n_atoms)?,
            j: gpu.zeros(n_atoms * capacity)?,
            image: gpu.zeros(n_atoms * capacity)?,
            reverse: gpu.zeros(n_atoms * capacity)?,
            reference: gpu.zeros(3 * n_atoms)?,
            rebuild_step: gpu.upload(&[u64::MAX])?,
            overflow: gpu.zeros(1)?,
            cell: CellParams::new(cell),
            reach,
            radius2: (radius * radius) as f32,
            check: DisplacementCheckParams::default(),
            row_capacity: i32::try_from(capacity)?,
            wrap: gpu.function("wrap_positions")?,
            build: gpu.function("build_neighbors_all_pairs")?,
            reverse_pairs: gpu.function("reverse_pairs")?,
            first_half_and_rebuild: gpu.function("first_half_and_rebuild")?,
            bins_clear: gpu.function("bins_clear")?,
            bins_assign: gpu.function("bins_assign")?,
            bins_scan: gpu.function("bins_scan")?,
            bins_fill: gpu.function("bins_fill")?,
            bins_sort: gpu.function("bins_sort")?,
            build_cells: gpu.function("build_neighbors_cells")?,
        };
        neighbors.check = DisplacementCheckParams {
            reference: neighbors.reference.ptr,
            rebuild_step: neighbors.rebuild_step.ptr,
            half_skin2: (0.25 * skin * skin) as f32,
            pad: 0,
        };
        Ok(neighbors)
    }

    pub fn params(&self) -> NeighborParams {
        NeighborParams {
            count: self.count.ptr,
            j: self.j.ptr,
            image: self.image.ptr,
            reverse: self.reverse.ptr,
            capacity: self.capacity as i32,
        }
    }

    fn rebuild_params(&self, step: &Buffer<u64>) -> RebuildParams {
        RebuildParams {
            step: step.ptr,
            rebuild_step: self.rebuild_step.ptr,
            overflow: self.overflow.ptr,
        }
    }

    /// Forces a rebuild at the next update whose step counter equals `step`.
    pub fn request_rebuild(&mut self, gpu: &Gpu, step: u64) -> Result<()> {
        gpu.stream
            .memcpy_htod(&[step], &mut self.rebuild_step.slice)
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    }

    /// The displacement check as the MD step's first integrator half runs it (perf-notes v41):
    /// that kernel has just written the positions, so the check costs no kernel of its own.
    pub fn displacement_check(&self) -> DisplacementCheckParams {
        self.check
    }

    /// The arguments that end the one-block rebuild's kernels (`first_half_and_rebuild`,
    /// `pair_forces_kick_and_first_half`): the displacement check, the search and the rows.
    pub fn push_one_block_rebuild_args<'a>(&'a self, launch: Launch<'a>) -> Launch<'a> {
        launch
            .arg(&self.check)
            .arg(&self.reach)
            .arg(&self.radius2)
            .arg(&self.count.ptr)
            .arg(&self.j.ptr)
            .arg(&self.image.ptr)
            .arg(&self.reverse.ptr)
            .arg(&self.row_capacity)
            .arg(&self.overflow.ptr)
    }

    /// Whether [`Self::enqueue_first_half_and_rebuild`] applies: the all-pairs search, at most
    /// [`ONE_BLOCK_MAX_ATOMS`] atoms.
    pub fn rebuilds_in_first_half(&self) -> bool {
        self.bins.is_none() && self.n_atoms <= ONE_BLOCK_MAX_ATOMS
    }

    /// The MD step's first integrator half, the displacement check and (on rebuild steps) the
    /// wrap, the all-pairs search and the reverse index, in one kernel of one block (perf-notes
    /// v43): what `first_half` and [`Self::enqueue_rebuild`] do in four.
    pub fn enqueue_first_half_and_rebuild(
        &self,
        gpu: &Gpu,
        positions: &Buffer<f64>,
        velocities: &Buffer<f64>,
        forces: &Buffer<f32>,
        integration: &IntegrationParams,
        step: &Buffer<u64>,
    ) -> Result<()> {
        debug_assert!(self.rebuilds_in_first_half());
        let n = self.n_atoms as i32;
        let launch = gpu
            .launch(&self.first_half_and_rebuild)
            .arg(&positions.ptr)
            .arg(&velocities.ptr)
            .arg(&forces.ptr)
            .arg(integration)
            .arg(&step.ptr)
            .arg(&self.cell)
            .arg(&n);
        unsafe {
            self.push_one_block_rebuild_args(launch)
                .launch(block_per_item(1, ONE_BLOCK_THREADS))
                .map_err(|e| anyhow::anyhow!("first_half_and_rebuild: {e:?}"))?;
        }
        Ok(())
    }

    /// On rebuild steps only (the displacement check, or a request, stamped this step): wrap,
    /// search and reverse index. The kernels run every step and return at once otherwise.
    pub fn enqueue_rebuild(&self, gpu: &Gpu, positions: &Buffer<f64>, step: &Buffer<u64>) -> Result<()> {
        let n = self.n_atoms as i32;
        let rb = self.rebuild_params(step);
        let launch = |e: cudarc::driver::DriverError| anyhow::anyhow!("neighbor kernels: {e:?}");
        unsafe {
            gpu.launch(&self.wrap)
                .arg(&positions.ptr)
                .arg(&self.reference.ptr)
                .arg(&self.cell)
                .arg(&rb)
                .arg(&n)
                .launch(grid_for(self.n_atoms, 256))
                .map_err(launch)?;
            match &self.bins {
                None => {
                    gpu.launch(&self.build)
                        .arg(&positions.ptr)
                        .arg(&self.cell)
                        .arg(&self.reach)
                        .arg(&self.radius2)
                        .arg(&self.count.ptr)
                        .arg(&self.j.ptr)
                        .arg(&self.image.ptr)
                        .arg(&self.row_capacity)
                        .arg(&rb)
                        .arg(&n)
                        .launch(grid_for(self.n_atoms, 128))
                        .map_err(launch)?;
                }
                Some(bins) => {
                    let p = &bins.params;
                    gpu.launch(&self.bins_clear)
                        .arg(p)
                        .arg(&rb)
                        .launch(grid_for(bins.n_bins, 256))
                        .map_err(launch)?;
                    gpu.launch(&self.bins_assign)
                        .arg(&positions.ptr)
                        .arg(&self.cell)
                        .arg(p)
                        .arg(&rb)
                        .arg(&n)
                        .launch(grid_for(self.n_atoms, 256))
                        .map_err(launch)?;
                    gpu.launch(&self.bins_scan)
                        .arg(p)
                        .arg(&rb)
                        .launch(block_per_item(1, 1024))
                        .map_err(launch)?;
                    gpu.launch(&self.bins_fill)
                        .arg(p)
                        .arg(&rb)
                        .arg(&n)
                        .launch(grid_for(self.n_atoms, 256))
                        .map_err(launch)?;
                    gpu.launch(&self.bins_sort)
                        .arg(p)
                        .arg(&rb)
                        .launch(grid_for(bins.n_bins, 128))
                        .map_err(launch)?;
                    gpu.launch(&self.build_cells)
                        .arg(&positions.ptr)
                        .arg(&self.cell)
                        .arg(p)
                        .arg(&self.radius2)
                        .arg(&self.count.ptr)
                        .arg(&self.j.ptr)
                        .arg(&self.image.ptr)
                        .arg(&self.row_capacity)
                        .arg(&rb)
                        .arg(&n)
                        .launch(grid_for(self.n_atoms, 128))
                        .map_err(launch)?;
                }
            }
            gpu.launch(&self.reverse_pairs)
                .arg(&self.count.ptr)
                .arg(&self.j.ptr)
                .arg(&self.image.ptr)
                .arg(&self.reverse.ptr)
                .arg(&self.row_capacity)
                .arg(&rb)
                .arg(&n)
                .launch(block_per_item(self.n_atoms, 64))
                .map_err(launch)?;
        }
        Ok(())
    }

    /// Whether a row overflowed since the flag was last cleared.
    pub fn overflowed(&self, gpu: &Gpu) -> Result<bool> {
        Ok(gpu.download(&self.overflow)?[0] != 0)
    }
}
