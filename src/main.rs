use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

use mdrun::forcefield::cpu::evaluate;
use mdrun::input::Device;
use mdrun::model::{PainnConfig, PainnModel};
use mdrun::neighbors::brute_force_pairs;
use mdrun::simulation::{check_structure, resolve_device, run_with, Prepared, RunControl};
use mdrun::system::System;

/// Molecular dynamics with a PaiNN machine-learned force field (Å, fs, eV, amu, K).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Input file (TOML) of the run; see README.md for the keys.
    input: Option<PathBuf>,
    /// Continue from this restart file (written by `[output.restart]`); outputs are appended.
    #[arg(long)]
    restart: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Runs the simulation an input file describes (the same as `mdrun INPUT`).
    Run {
        input: PathBuf,
        /// Continue from this restart file; outputs are appended.
        #[arg(long)]
        restart: Option<PathBuf>,
    },
    /// Single point: energy (eV) and forces (eV/Å) of a structure, as JSON on stdout.
    Eval {
        /// Structure file, any format chemfiles reads.
        structure: PathBuf,
        /// Model file (mdrun-painn safetensors).
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
        /// chemfiles format name, when the extension does not tell.
        #[arg(long)]
        format: Option<String>,
    },
    /// The benchmark suite: every system under the ablation configurations (cpu, gpu-naive,
    /// +cell-list, +fused, +cuda-graph, +one-cluster), with reports (bench.json, bench.md, SVG plots) in --out.
    /// Exits 1 when --compare finds a row slower than the threshold.
    Bench {
        /// Structure files; `FILE@N` replicates a periodic system N×N×N. Default: the shipped
        /// set of --sizes.
        systems: Vec<String>,
        /// Default set: `small` (benzene, alanine dipeptide, water clusters of 17 and 33
        /// molecules, the 192-atom water box) or `all` (those and the water box ×2³, ×4³, ×8³).
        #[arg(long, value_enum, default_value = "all")]
        sizes: SizesArg,
        /// Folder of the default systems.
        #[arg(long, default_value = "systems")]
        systems_dir: PathBuf,
        /// Model. The trained one by default: a force call costs the same with any weights, but an
        /// MD step does not — random weights compress the liquid (more neighbors per atom).
        #[arg(long, default_value = "models/painn-hcno-f128.safetensors")]
        model: PathBuf,
        /// Comma-separated configurations, or `all`: cpu, gpu-naive, +cell-list, +fused, +cuda-graph, +one-cluster.
        #[arg(long, default_value = "all")]
        configs: String,
        /// Largest system timed by the `cpu` configuration.
        #[arg(long, default_value_t = 250)]
        cpu_max_atoms: usize,
        /// Largest system the f64 reference (accuracy columns) is computed for.
        #[arg(long, default_value_t = 2000)]
        reference_max_atoms: usize,
        /// Timestep (fs) of the timed velocity-Verlet run (and of ns/day).
        #[arg(long, default_value_t = 0.5)]
        timestep: f64,
        /// Verlet skin (Å).
        #[arg(long, default_value_t = 1.0)]
        skin: f64,
        /// Wall-clock budget of one measurement (s); at least --min-samples are taken.
        #[arg(long, default_value_t = 3.0)]
        budget: f64,
        #[arg(long, default_value_t = 5)]
        min_samples: usize,
        #[arg(long, default_value_t = 50)]
        max_samples: usize,
        /// Report folder: bench.json, bench.md, latency.svg, force_latency.svg, speedup.svg.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write bench.json here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Report from this bench.json instead of running (with --compare, --baseline, --out).
        /// Repeat it to merge the rows of several runs (e.g. sizes run in separate commands).
        #[arg(long)]
        results: Vec<PathBuf>,
        /// An earlier bench.json: prints the change per row; exit 1 if any median slowed by more
        /// than --threshold percent.
        #[arg(long)]
        compare: Option<PathBuf>,
        #[arg(long, default_value_t = 5.0)]
        threshold: f64,
        /// The PyTorch baseline's JSON (tools/baseline/torch_painn.py): speed-up per size.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Configuration the speed-up plot divides by.
        #[arg(long, default_value = "gpu-naive")]
        speedup_over: String,
        /// Only the cpu configuration (same as --configs cpu).
        #[arg(long)]
        no_gpu: bool,
    },
    /// Runs a validation campaign (NVE drift, NVT temperature, GPU vs CPU forces) described by a
    /// TOML file (inputs/validate.toml); writes report.md, report.json and SVG plots. Exits 4
    /// when a threshold fails.
    Validate {
        campaign: PathBuf,
        /// Output directory (default: validate-output/ beside the campaign file's name).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only these systems (repeat, or comma separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[arg(long, value_enum, default_value = "both")]
        device: ValidateDevice,
        /// Directory of tools/distill/trajectory_error.py JSON files, one `<system>.json` each.
        #[arg(long)]
        teacher_dir: Option<PathBuf>,
    },
    /// Compiles the GPU kernels without a GPU into the kernel cache, so that a later start on
    /// the GPU loads them compiled: for the launch shapes another cache recorded (--records: its
    /// `.options` files, a GPU machine's cache, say, after the kernels changed), and for the runs
    /// of input files (--input, with the GPU's --arch and --sms). Needs the NVRTC library.
    Precompile {
        /// Folder holding the records (`*.options`).
        #[arg(long)]
        records: Option<PathBuf>,
        /// Input files (TOML) of runs the GPU will make.
        #[arg(long)]
        input: Vec<PathBuf>,
        /// The GPU's architecture for --input, e.g. sm_90 (H100, H200).
        #[arg(long)]
        arch: Option<String>,
        /// The GPU's multiprocessors for --input (132 on the H100 SXM and the H200).
        #[arg(long)]
        sms: Option<usize>,
        /// Kernel cache to fill (default: MDRUN_KERNEL_CACHE, else ~/.cache/mdrun/kernels).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Compiles at a time (default: the CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Writes a PaiNN model with random weights (untrained: for tests and benchmarks only).
    RandomModel {
        out: PathBuf,
        #[arg(long, default_value_t = 128)]
        features: usize,
        #[arg(long, default_value_t = 3)]
        interactions: usize,
        #[arg(long, default_value_t = 20)]
        rbf: usize,
        /// Cutoff in Å.
        #[arg(long, default_value_t = 5.0)]
        cutoff: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Atomic numbers the model accepts, comma separated.
        #[arg(long, default_value = "1,6,7,8")]
        elements: String,
        /// Scale of the summed atomwise output (a small value keeps random forces gentle).
        #[arg(long, default_value_t = 1.0)]
        energy_scale: f64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SizesArg {
    Small,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ValidateDevice {
    Cpu,
    Cuda,
    Both,
}

/// Exit status of a validation campaign in which a threshold failed.
const EXIT_THRESHOLD_FAILED: u8 = 4;

fn validate(
    campaign: PathBuf,
    out: Option<PathBuf>,
    only: Vec<String>,
    device: ValidateDevice,
    teacher_dir: Option<PathBuf>,
) -> Result<ExitCode> {
    use mdrun::validate::campaign::{Campaign, DeviceName};
    let spec = Campaign::read(&campaign)?;
    for name in &only {
        if spec.system(name).is_none() {
            return Err(anyhow!("--only: the campaign has no system named `{name}`"));
        }
    }
    let devices = match device {
        ValidateDevice::Cpu => vec![DeviceName::Cpu],
        ValidateDevice::Cuda => vec![DeviceName::Cuda],
        ValidateDevice::Both => vec![DeviceName::Cpu, DeviceName::Cuda],
    };
    let out = out.unwrap_or_else(|| {
        let stem = campaign
            .file_stem()
            .map_or("validate".into(), |s| s.to_string_lossy().to_string());
        PathBuf::from("validate-output").join(stem)
    });
    let options = mdrun::validate::Options {
        out: out.clone(),
        only,
        devices,
        teacher_dir,
    };
    let result = mdrun::validate::run_campaign(&spec, &options)?;
    println!(
        "validate: {} runs; report {} (and report.json, plots); {}",
        result.runs.len(),
        out.join("report.md").display(),
        if result.passed {
            "every check passed"
        } else {
            "a check FAILED"
        }
    );
    Ok(if result.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_THRESHOLD_FAILED)
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

fn eval(structure: PathBuf, model_path: PathBuf, device: DeviceArg, format: Option<String>) -> Result<()> {
    let model = PainnModel::load(&model_path)?;
    let device = match device {
        DeviceArg::Cuda => Device::Cuda,
        DeviceArg::Auto => Device::Auto,
        DeviceArg::Cpu => Device::Cpu,
    };
    let use_gpu = resolve_device(device, &model).map_err(|e| anyhow!("--device: {e}"))?;
    let system = System::read(&structure, format.as_deref()).map_err(|e| anyhow!(e))?;
    check_structure(&system, &model, &model_path, &structure.display().to_string())?;
    let (energy, forces) = if use_gpu {
        mdrun::gpu::md::evaluate(&model, &system)?
    } else {
        let pairs = brute_force_pairs(&system.positions, system.cell.as_ref(), model.cutoff());
        let result = evaluate(&model, &system.numbers, &pairs);
        (result.energy, result.forces)
    };
    let json = serde_json::json!({
        "structure": structure.display().to_string(),
        "model": model_path.display().to_string(),
        "device": if use_gpu { "cuda (f32)" } else { "cpu (f64)" },
        "n_atoms": system.len(),
        "energy_ev": energy,
        "forces_ev_per_angstrom": forces,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Exit status of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;

/// A flag set by the first SIGINT/SIGTERM: the run stops at the end of the current step, writes
/// its restart file and closes its outputs. A second signal exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(signal, i32::from(EXIT_INTERRUPTED), Arc::clone(&stop))
            .context("installing the signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handlers")?;
    }
    Ok(stop)
}

fn main_result() -> Result<ExitCode> {
    let cli = Cli::parse();
    let (input, restart) = match (cli.command, cli.input) {
        (Some(Command::Run { input, restart }), _) => (input, restart),
        (None, Some(input)) => (input, cli.restart),
        (
            Some(Command::Eval {
                structure,
                model,
                device,
                format,
            }),
            _,
        ) => {
            eval(structure, model, device, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        (
            Some(Command::RandomModel {
                out,
                features,
                interactions,
                rbf,
                cutoff,
                seed,
                elements,
                energy_scale,
            }),
            _,
        ) => {
            let elements = elements
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<u8>()
                        .with_context(|| format!("--elements: `{s}` is not an atomic number"))
                })
                .collect::<Result<Vec<u8>>>()?;
            let config = PainnConfig {
                n_atom_basis: features,
                n_interactions: interactions,
                n_rbf: rbf,
                cutoff,
                shared_filters: false,
                elements,
            };
            let mut model = PainnModel::random(config, seed);
            model.energy_scale = energy_scale;
            model.save(&out, true)?;
            eprintln!("wrote {} (random, untrained)", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        (
            Some(Command::Bench {
                systems,
                sizes,
                systems_dir,
                model,
                configs,
                cpu_max_atoms,
                reference_max_atoms,
                timestep,
                skin,
                budget,
                min_samples,
                max_samples,
                out,
                json,
                results,
                compare,
                threshold,
                baseline,
                speedup_over,
                no_gpu,
            }),
            _,
        ) => {
            let configs = if no_gpu {
                vec![mdrun::bench::Config::Cpu]
            } else {
                mdrun::bench::parse_configs(&configs).context("--configs")?
            };
            let command = mdrun::bench::command::BenchCommand {
                systems,
                all_sizes: matches!(sizes, SizesArg::All),
                systems_dir,
                model,
                options: mdrun::bench::BenchOptions {
                    configs,
                    timestep_fs: timestep,
                    skin,
                    cpu_max_atoms,
                    reference_max_atoms,
                    budget_s: budget,
                    min_samples,
                    max_samples,
                    ..Default::default()
                },
                out,
                json,
                results,
                compare,
                threshold_percent: threshold,
                baseline,
                speedup_base: speedup_over,
            };
            let regressed = mdrun::bench::command::execute(&command)?;
            return Ok(if regressed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        (
            Some(Command::Validate {
                campaign,
                out,
                only,
                device,
                teacher_dir,
            }),
            _,
        ) => return validate(campaign, out, only, device, teacher_dir),
        (
            Some(Command::Precompile {
                records,
                input,
                arch,
                sms,
                cache,
                jobs,
            }),
            _,
        ) => {
            precompile(records, input, arch, sms, cache, jobs)?;
            return Ok(ExitCode::SUCCESS);
        }
        (None, None) => {
            return Err(anyhow!(
                "no input file given (usage: mdrun INPUT.toml, or mdrun --help)"
            ))
        }
    };
    let prepared = Prepared::from_input_file(&input)?;
    let stop = stop_on_signals()?;
    let report = run_with(
        prepared,
        RunControl {
            restart,
            stop: Some(stop),
            quiet: false,
        },
    )?;
    if report.interrupted {
        eprintln!("mdrun: interrupted by a signal; outputs flushed, restart file written if configured");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    match report.failure {
        Some(why) => {
            eprintln!("mdrun: run stopped: {why}");
            Ok(ExitCode::from(3))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn precompile(
    records: Option<PathBuf>,
    inputs: Vec<PathBuf>,
    arch: Option<String>,
    sms: Option<usize>,
    cache: Option<PathBuf>,
    jobs: Option<usize>,
) -> Result<()> {
    use mdrun::gpu::compile;
    let cache = cache
        .or_else(compile::cache_dir)
        .ok_or_else(|| anyhow!("no kernel cache folder: give --cache (or set MDRUN_KERNEL_CACHE or HOME)"))?;
    if records.is_none() && inputs.is_empty() {
        return Err(anyhow!("nothing to compile: give --records DIR or --input FILE"));
    }
    if let Some(records) = records {
        let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let done = compile::precompile(&records, &cache, jobs)?;
        eprintln!(
            "mdrun: {} launch shapes compiled, {} already cached, in {}",
            done.compiled,
            done.cached,
            cache.display()
        );
        if done.foreign > 0 {
            eprintln!(
                "mdrun: warning: {} records in {} name other kernel options than this mdrun's (another version wrote them): skipped",
                done.foreign,
                records.display()
            );
        }
    }
    if inputs.is_empty() {
        return Ok(());
    }
    let (Some(arch), Some(sms)) = (arch, sms) else {
        return Err(anyhow!(
            "--input needs the GPU's --arch (e.g. sm_90) and --sms (e.g. 132)"
        ));
    };
    let cc = arch
        .strip_prefix("sm_")
        .filter(|digits| digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()))
        .map(|digits| digits.split_at(digits.len() - 1))
        .and_then(|(major, minor)| Some((major.parse::<i32>().ok()?, minor.parse::<i32>().ok()?)))
        .ok_or_else(|| anyhow!("--arch {arch}: not an sm_XY architecture (e.g. sm_90)"))?;
    for path in inputs {
        let input = mdrun::input::Input::read(&path)?;
        let system_path = input.resolve(&input.system.file);
        let system = System::read(&system_path, input.system.format.as_deref())
            .map_err(|e| anyhow!("{}: system.file: {e}", path.display()))?;
        let model = PainnModel::load(&input.resolve(&input.model.file))?;
        let sizes =
            mdrun::gpu::forces::kernel_sizes(&model, system.len()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let (target, sizes) = compile::device_shape(sizes, cc, sms)?;
        if let compile::Target::Ptx(..) = target {
            return Err(anyhow!(
                "--arch {arch}: this NVRTC does not know it (start-up there compiles PTX for {}, which is not cached)",
                target.arch()
            ));
        }
        let cubin = compile::compile_into(&cache, sizes, &target.arch())?;
        eprintln!("mdrun: {}: kernels in {}", path.display(), cubin.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = main_result();
    for warning in mdrun::system::take_chemfiles_warnings() {
        eprintln!("chemfiles warning: {warning}");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mdrun: error: {}", mdrun::system::one_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}
