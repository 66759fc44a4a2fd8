use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

use mdrun::forcefield::cpu::evaluate;
use mdrun::input::Device;
use mdrun::model::{PainnConfig, PainnModel};
use mdrun::neighbors::brute_force_pairs;
use mdrun::simulation::{check_structure, resolve_device, run, Prepared};
use mdrun::system::System;

/// Molecular dynamics with a PaiNN machine-learned force field (Å, fs, eV, amu, K).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Input file (TOML) of the run; see README.md for the keys.
    input: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Runs the simulation an input file describes (the same as `mdrun INPUT`).
    Run { input: PathBuf },
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
    /// +cell-list, +fused, +cuda-graph), with reports (bench.json, bench.md, SVG plots) in --out.
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
        #[arg(long, default_value = "models/painn-random-hcno-f128.safetensors")]
        model: PathBuf,
        /// Comma-separated configurations, or `all`: cpu, gpu-naive, +cell-list, +fused, +cuda-graph.
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

fn main_result() -> Result<ExitCode> {
    let cli = Cli::parse();
    let input = match (cli.command, cli.input) {
        (Some(Command::Run { input }), _) | (None, Some(input)) => input,
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
        (None, None) => {
            return Err(anyhow!(
                "no input file given (usage: mdrun INPUT.toml, or mdrun --help)"
            ))
        }
    };
    let prepared = Prepared::from_input_file(&input)?;
    let report = run(prepared)?;
    match report.failure {
        Some(why) => {
            eprintln!("mdrun: run stopped: {why}");
            Ok(ExitCode::from(3))
        }
        None => Ok(ExitCode::SUCCESS),
    }
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
