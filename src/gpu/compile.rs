//! NVRTC compilation of `kernels/*.cu`, and the kernel cache on disk.
//!
//! Start-up compiles the kernels for the device's own architecture (`sm_XY`) to machine code (a
//! cubin), so that the driver loads them without a JIT compile of its own. The cubin is cached
//! under a hash of the source and the NVRTC options, beside a `.options` record of those options:
//! `precompile` reads such records (a GPU machine's cache, say) and compiles the same launch
//! shapes for the current source on a machine without a GPU, so that the next start on the GPU
//! finds them compiled (perf-notes "Kernel cache": ~3 s a shape on the H100 machines).

use std::collections::hash_map::DefaultHasher;
use std::ffi::{CStr, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, result, sys, CompileOptions, Ptx};

use super::{KernelSizes, COMMON, SOURCES};

/// The first line of a cache record; the NVRTC options follow, one per line.
const RECORD_HEADER: &str = "# mdrun kernel cache record: the NVRTC options of the cubin beside it, one per line";

/// The kernels as one translation unit: common.cuh, then each source. Built once: every compile
/// and every cache name needs it.
fn full_source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let mut text = COMMON.replace("#pragma once", "");
        for (name, source) in SOURCES {
            text += &format!("\n// ---- {name}\n{source}");
        }
        text
    })
}

/// NVRTC options for `sizes` and `arch` (`compute_XY` for PTX, `sm_XY` for machine code).
fn nvrtc_options(sizes: KernelSizes, arch: &str) -> Vec<String> {
    [
        format!("--gpu-architecture={arch}"),
        format!("-DNF={}", sizes.features),
        format!("-DNK={}", sizes.rbf),
        format!("-DNH={}", sizes.readout_hidden),
        format!("-DSPLIT={}", sizes.split),
        format!("-DTILE={}", sizes.tile),
        format!("-DCLUSTER={}", sizes.cluster),
        format!("-DPAIR_SPLIT={}", sizes.pair_split),
        format!("-DCHANNEL_SLICES={}", sizes.channel_slices),
        // 0: the tensor-core message kernels are not built.
        format!(
            "-DMMA_PAIR_SPLIT={}",
            if sizes.message_mma { sizes.pair_split } else { 0 }
        ),
        format!("-DMMA_BACKWARD_DIVIDES={}", u8::from(sizes.mma_backward_divides)),
        format!("-DPAIR_RECORD={}", u8::from(sizes.pair_record)),
        format!("-DFIRST_LAYER={}", u8::from(sizes.first_layer)),
        format!("-DLAST_WITHOUT_A_VV={}", u8::from(sizes.last_without_a_vv)),
        format!("-DCLUSTER_MATVEC_W={}", sizes.cluster_matvec_products),
        format!("-DPDL_EARLY_TRIGGER={}", u8::from(sizes.pdl_early_trigger)),
        format!("-DDENSE_ALONE={}", u8::from(sizes.dense_alone)),
        "--std=c++17".into(),
    ]
    .into_iter()
    .chain(sizes.checks.then(|| "-DKERNEL_CHECKS=1".to_string()))
    .collect()
}

/// Compiles every kernel to PTX for `arch` (e.g. `compute_90`): what CI runs without a GPU to
/// keep the kernels compiling, and to read their resource use from the PTX.
pub fn compile(sizes: KernelSizes, arch: &str) -> Result<Ptx> {
    let options = CompileOptions {
        options: nvrtc_options(sizes, arch),
        ..Default::default()
    };
    compile_ptx_with_opts(full_source(), options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            anyhow!(
                "NVRTC could not compile the kernels for {arch}:\n{}",
                log.to_string_lossy()
            )
        }
        other => anyhow!("NVRTC failed: {other:?}"),
    })
}

/// Compiles every kernel to machine code for `sizes` and `arch` (`sm_XY`): what start-up loads.
pub fn compile_cubin(sizes: KernelSizes, arch: &str) -> Result<Vec<u8>> {
    compile_cubin_with(&nvrtc_options(sizes, arch))
}

/// An NVRTC program, destroyed when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn compile_cubin_with(options: &[String]) -> Result<Vec<u8>> {
    let source = CString::new(full_source()).expect("kernel sources hold no NUL byte");
    let program = Program(result::create_program(&source, None).map_err(|e| anyhow!("NVRTC: {e:?}"))?);
    if let Err(e) = unsafe { result::compile_program(program.0, options) } {
        let log = unsafe { result::get_program_log(program.0) }
            .map(|log| {
                let bytes: Vec<u8> = log.iter().map(|&c| c as u8).collect();
                CStr::from_bytes_until_nul(&bytes).map_or_else(
                    |_| String::from_utf8_lossy(&bytes).into_owned(),
                    |log| log.to_string_lossy().into_owned(),
                )
            })
            .unwrap_or_default();
        return Err(anyhow!(
            "NVRTC could not compile the kernels ({e:?}, options {}):\n{log}",
            options.join(" ")
        ));
    }
    let mut size = 0usize;
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }
        .result()
        .map_err(|e| anyhow!("NVRTC gave no cubin: {e:?}"))?;
    if size == 0 {
        // What NVRTC answers for a virtual architecture (compute_XY).
        return Err(anyhow!(
            "NVRTC gave no cubin: the options ({}) name no sm_XY architecture",
            options.join(" ")
        ));
    }
    let mut cubin = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| anyhow!("NVRTC gave no cubin: {e:?}"))?;
    Ok(cubin)
}

/// Whether `bytes` is a whole 64-bit ELF file (a cubin): the magic, and the section and
/// program header tables and every section's data inside the file (ptxas writes them to the
/// file's last byte). A cache entry cut short fails this before the driver sees it.
pub fn is_whole_cubin(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let len = bytes.len() as u64;
    let u64_at = |at: u64| u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap());
    let u32_at = |at: u64| u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
    let u16_at = |at: u64| u16::from_le_bytes(bytes[at as usize..at as usize + 2].try_into().unwrap()) as u64;
    let table_end = |offset: u64, entry: u64, count: u64| offset.saturating_add(entry.saturating_mul(count));
    let (sections, section_size, section_count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let (segments, segment_size, segment_count) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let sections_end = table_end(sections, section_size, section_count);
    if sections_end > len || table_end(segments, segment_size, segment_count) > len || section_size < 40 {
        return false;
    }
    const NOBITS: u32 = 8;
    let mut end = sections_end.max(table_end(segments, segment_size, segment_count));
    for i in 0..section_count {
        let header = sections + i * section_size;
        if u32_at(header + 4) != NOBITS {
            end = end.max(u64_at(header + 0x18).saturating_add(u64_at(header + 0x20)));
        }
    }
    end <= len
}

/// The kernel cache's folder: `MDRUN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/mdrun/kernels`, else
/// `~/.cache/mdrun/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MDRUN_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mdrun").join("kernels"))
}

/// NVRTC's (major, minor) version: cubins are machine code, so a cache entry holds for the
/// compiler that wrote it. (0, 0) where the library cannot say.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    match unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => (major, minor),
        Err(_) => (0, 0),
    }
}

/// The cubin's file name in the cache: a hash of the source, the options and NVRTC's version,
/// and the architecture the options name.
fn cache_name(options: &[String]) -> String {
    let mut hasher = DefaultHasher::new();
    full_source().hash(&mut hasher);
    options.hash(&mut hasher);
    nvrtc_version().hash(&mut hasher);
    let arch = options
        .iter()
        .find_map(|o| o.strip_prefix("--gpu-architecture="))
        .unwrap_or("unknown");
    format!("{:016x}-{arch}.cubin", hasher.finish())
}

/// Whether `path` holds a whole cubin.
fn holds_whole_cubin(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| is_whole_cubin(&bytes))
}

/// Where `sizes` compiled for `arch` lies in the cache (None without a cache folder).
pub fn cache_path(sizes: KernelSizes, arch: &str) -> Option<PathBuf> {
    cache_dir().map(|dir| dir.join(cache_name(&nvrtc_options(sizes, arch))))
}

/// Writes `bytes` to `path` through a file of its own, renamed into place: threads and processes
/// compiling the same shape at once never leave a mixed file behind.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Stores a cubin and its record in `dir`.
fn store(dir: &Path, options: &[String], cubin: &[u8]) -> std::io::Result<()> {
    let path = dir.join(cache_name(options));
    let record = std::iter::once(RECORD_HEADER)
        .chain(options.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::create_dir_all(dir)?;
    write_whole(&path, cubin)?;
    write_whole(&path.with_extension("options"), record.as_bytes())
}

/// Compiles `sizes` for `arch` (`sm_XY`) into the cache folder `dir`, record included, as a
/// start-up on such a device would, unless `dir` holds it whole already; returns the cubin's path.
pub fn compile_into(dir: &Path, sizes: KernelSizes, arch: &str) -> Result<PathBuf> {
    let options = nvrtc_options(sizes, arch);
    let path = dir.join(cache_name(&options));
    if holds_whole_cubin(&path) {
        return Ok(path);
    }
    let cubin = compile_cubin_with(&options)?;
    store(dir, &options, &cubin).with_context(|| format!("{}: cannot write", dir.display()))?;
    Ok(path)
}

/// What start-up compiles the kernels to for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for the device's own architecture (`sm_XY`), cached on disk.
    Machine(i32, i32),
    /// PTX for an older architecture (`compute_XY`), which the driver compiles forward for the
    /// device: where NVRTC is older than the GPU and does not know its architecture.
    Ptx(i32, i32),
}

impl Target {
    /// The compute capability the kernels are compiled for: what their code may assume (thread-
    /// block clusters and programmatic launches from 9.0, tensor cores from 8.0).
    pub fn capability(self) -> (i32, i32) {
        match self {
            Target::Machine(major, minor) | Target::Ptx(major, minor) => (major, minor),
        }
    }

    /// NVRTC's name of the architecture: `sm_XY` for machine code, `compute_XY` for PTX.
    pub fn arch(self) -> String {
        match self {
            Target::Machine(major, minor) => format!("sm_{major}{minor}"),
            Target::Ptx(major, minor) => format!("compute_{major}{minor}"),
        }
    }

    /// The target for a device of compute capability `cc` among the architectures NVRTC compiles
    /// for (`supported`, listed as NVRTC lists them: 10 · major + minor); None when NVRTC knows
    /// none at or below the device's.
    pub fn choose(cc: (i32, i32), supported: &[i32]) -> Option<Target> {
        let device = 10 * cc.0 + cc.1;
        if supported.contains(&device) {
            return Some(Target::Machine(cc.0, cc.1));
        }
        let newest = supported.iter().copied().filter(|&arch| arch <= device).max()?;
        Some(Target::Ptx(newest / 10, newest % 10))
    }
}

/// What start-up compiles for a device of compute capability `cc` with `sms` multiprocessors, and
/// the sizes at the capability compiled for (`KernelSizes::on_device`): what `Gpu::open` loads and
/// `mdrun precompile --input` compiles without the device.
pub fn device_shape(sizes: KernelSizes, cc: (i32, i32), sms: usize) -> Result<(Target, KernelSizes)> {
    let supported = supported_archs()?;
    let target = Target::choose(cc, &supported).ok_or_else(|| {
        anyhow!(
            "NVRTC compiles for none of the architectures up to compute capability {}.{}; it knows {supported:?}",
            cc.0,
            cc.1
        )
    })?;
    Ok((target, sizes.on_device(target.capability(), sms)))
}

/// Whether the NVRTC library can be loaded (cudarc panics on first use where it cannot).
pub fn nvrtc_present() -> bool {
    std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// The architectures NVRTC compiles for, as 10 · major + minor (e.g. 90 for sm_90).
pub fn supported_archs() -> Result<Vec<i32>> {
    if !nvrtc_present() {
        return Err(anyhow!(
            "the NVRTC library (libnvrtc) cannot be loaded: the GPU path compiles its kernels with it \
             (CUDA toolkit, or the PyPI wheel nvidia-cuda-nvrtc; LD_LIBRARY_PATH)"
        ));
    }
    let mut count = 0;
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
        .result()
        .map_err(|e| anyhow!("NVRTC: {e:?}"))?;
    let mut archs = vec![0; count.max(0) as usize];
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| anyhow!("NVRTC: {e:?}"))?;
    Ok(archs)
}

/// The kernels for `sizes` compiled for `target`, loaded into `ctx`. Machine code comes from the
/// cache where it holds it whole, else is compiled (and cached); an entry the driver refuses is
/// compiled again, with a warning. PTX is compiled at every start (the driver's own cache keeps
/// what it compiles from it).
pub(super) fn load_kernels(ctx: &Arc<CudaContext>, sizes: KernelSizes, target: Target) -> Result<Arc<CudaModule>> {
    let arch = target.arch();
    if let Target::Ptx(..) = target {
        return ctx
            .load_module(compile(sizes, &arch)?)
            .map_err(|e| anyhow!("loading the kernels compiled for {arch}: {e:?}"));
    }
    let options = nvrtc_options(sizes, &arch);
    let dir = cache_dir();
    let cached = dir.as_ref().map(|d| d.join(cache_name(&options)));
    if let Some(bytes) = cached.as_ref().and_then(|path| std::fs::read(path).ok()) {
        let path = cached.as_ref().unwrap();
        if is_whole_cubin(&bytes) {
            use cudarc::driver::sys::CUresult;
            match ctx.load_module(Ptx::from_binary(bytes)) {
                Ok(module) => return Ok(module),
                // The entry itself is at fault: machine code for another GPU, or not machine
                // code at all. Any other error (out of memory, a broken context) is the device's.
                Err(
                    e @ cudarc::driver::DriverError(
                        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU
                        | CUresult::CUDA_ERROR_INVALID_IMAGE
                        | CUresult::CUDA_ERROR_INVALID_PTX
                        | CUresult::CUDA_ERROR_INVALID_SOURCE,
                    ),
                ) => eprintln!(
                    "warning: kernel cache entry {} did not load ({e:?}); compiling the kernels again",
                    path.display()
                ),
                Err(e) => {
                    return Err(anyhow!(
                        "loading the kernels from the cache ({}): {e:?}",
                        path.display()
                    ))
                }
            }
        } else {
            eprintln!(
                "warning: kernel cache entry {} is not a whole cubin; compiling the kernels again",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
    }
    let cubin = compile_cubin_with(&options)?;
    if let Some(dir) = &dir {
        // A cache that cannot be written only costs the next start-up a compile.
        let _ = store(dir, &options, &cubin);
    }
    ctx.load_module(Ptx::from_binary(cubin))
        .map_err(|e| anyhow!("loading the kernels compiled for {arch}: {e:?}"))
}

/// What `precompile` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Precompiled {
    /// Shapes compiled now.
    pub compiled: usize,
    /// Shapes the cache already held for the current source.
    pub cached: usize,
    /// Records with other option names than this build's (written by another version of
    /// mdrun): skipped, since start-up would never ask for their shapes.
    pub foreign: usize,
}

/// Compiles into the cache folder `cache`, for the current kernel source, every launch shape
/// that a record in `records` names (the `.options` files of another cache), `jobs` at a time.
pub fn precompile(records: &Path, cache: &Path, jobs: usize) -> Result<Precompiled> {
    // The option names this build writes (their values are the shape): a record with others was
    // written by another version of mdrun, and start-up would never ask for its shape.
    let names = |options: &[String]| -> Vec<String> {
        let mut names: Vec<String> = options
            .iter()
            .map(|o| o.split('=').next().unwrap_or(o).to_string())
            .filter(|name| name != "-DKERNEL_CHECKS")
            .collect();
        names.sort();
        names
    };
    let known = names(&nvrtc_options(KernelSizes::for_system(128, 20, 64, 1), "sm_90"));
    let mut shapes = Vec::new();
    let mut foreign = 0;
    let unreadable = || format!("{}: cannot read the folder", records.display());
    for entry in std::fs::read_dir(records).with_context(unreadable)? {
        let path = entry.with_context(unreadable)?.path();
        if path.extension().is_none_or(|e| e != "options") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_HEADER) {
            return Err(anyhow!("{}: not an mdrun kernel cache record", path.display()));
        }
        let options: Vec<String> = lines.filter(|l| !l.is_empty()).map(String::from).collect();
        if options.iter().filter(|o| o.starts_with("--gpu-architecture=")).count() != 1
            || !options.iter().any(|o| o.starts_with("--gpu-architecture=sm_"))
        {
            return Err(anyhow!(
                "{}: the record names no single sm_XY architecture",
                path.display()
            ));
        }
        if names(&options) != known {
            foreign += 1;
        } else if !shapes.iter().any(|(known, _)| *known == options) {
            shapes.push((options, path));
        }
    }
    let (cached, missing): (Vec<_>, Vec<_>) = shapes
        .into_iter()
        .partition(|(options, _)| holds_whole_cubin(&cache.join(cache_name(options))));
    let next = AtomicUsize::new(0);
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, missing.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((options, record)) = missing.get(i) else { break };
                let stored = compile_cubin_with(options)
                    .with_context(|| format!("{}", record.display()))
                    .and_then(|cubin| {
                        store(cache, options, &cubin).with_context(|| format!("{}: cannot write", cache.display()))
                    });
                if let Err(e) = stored {
                    failure.lock().unwrap().get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(Precompiled {
        compiled: missing.len(),
        cached: cached.len(),
        foreign,
    })
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn machine_code_for_a_gpu_nvrtc_knows_and_ptx_for_the_newest_older_one_otherwise() {
        // NVRTC 13.0's list, and an older NVRTC's (12.4) that stops at Hopper.
        let cuda13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121];
        let cuda12 = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90];
        assert_eq!(Target::choose((9, 0), &cuda13), Some(Target::Machine(9, 0)));
        assert_eq!(Target::choose((8, 6), &cuda12), Some(Target::Machine(8, 6)));
        // A Blackwell GPU with the older NVRTC: Hopper's PTX, which the driver compiles forward.
        assert_eq!(Target::choose((12, 0), &cuda12), Some(Target::Ptx(9, 0)));
        assert_eq!(Target::choose((12, 0), &cuda12).unwrap().capability(), (9, 0));
        // A GPU newer than every listed architecture, and one older than all of them.
        assert_eq!(Target::choose((13, 0), &cuda13), Some(Target::Ptx(12, 1)));
        assert_eq!(Target::choose((7, 0), &cuda13), None);
    }
}
