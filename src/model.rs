//! PaiNN weights: the `mdrun-painn` safetensors format (see `docs/model-format.md`).

use std::collections::HashMap;
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use rand::{RngExt, SeedableRng};
use safetensors::{Dtype, SafeTensors};

/// Rows of the embedding table: elements 0..99, as in schnetpack.
pub const MAX_ELEMENTS: usize = 100;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ModelError {
    pub path: String,
    pub reason: String,
}

/// y = W·x + b, with W stored [out, in] (torch layout) and x a column per atom or pair.
#[derive(Debug, Clone)]
pub struct Dense {
    pub weight: DMatrix<f64>,
    /// Wᵀ, kept so that backward products run through gemm like forward ones.
    pub weight_t: DMatrix<f64>,
    pub bias: Option<DVector<f64>>,
}

impl Dense {
    pub fn new(weight: DMatrix<f64>, bias: Option<DVector<f64>>) -> Dense {
        Dense {
            weight_t: weight.transpose(),
            weight,
            bias,
        }
    }

    /// y = W·x + b for a column per atom or pair.
    pub fn forward(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        let mut y = &self.weight * x;
        if let Some(b) = &self.bias {
            for mut column in y.column_iter_mut() {
                column += b;
            }
        }
        y
    }

    /// `forward` into an existing matrix of the right shape.
    pub fn forward_into(&self, x: &DMatrix<f64>, y: &mut DMatrix<f64>) {
        y.gemm(1.0, &self.weight, x, 0.0);
        if let Some(b) = &self.bias {
            for mut column in y.column_iter_mut() {
                column += b;
            }
        }
    }

    /// ∂L/∂x = Wᵀ·∂L/∂y.
    pub fn backward(&self, grad_y: &DMatrix<f64>) -> DMatrix<f64> {
        &self.weight_t * grad_y
    }

    pub fn n_in(&self) -> usize {
        self.weight.ncols()
    }
    pub fn n_out(&self) -> usize {
        self.weight.nrows()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RadialBasis {
    /// φ_k(d) = exp(−0.5 (d − μ_k)² / w_k²)
    Gaussian { offsets: Vec<f64>, widths: Vec<f64> },
    /// φ_k(d) = sin(f_k d) / d
    Bessel { freqs: Vec<f64> },
}

impl RadialBasis {
    pub fn len(&self) -> usize {
        match self {
            RadialBasis::Gaussian { offsets, .. } => offsets.len(),
            RadialBasis::Bessel { freqs } => freqs.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Interaction {
    /// interatomic_context_net.0: F → F, SiLU.
    pub context1: Dense,
    /// interatomic_context_net.1: F → 3F.
    pub context2: Dense,
}

#[derive(Debug, Clone)]
pub struct Mixing {
    /// intraatomic_context_net.0: 2F → F, SiLU.
    pub context1: Dense,
    /// intraatomic_context_net.1: F → 3F.
    pub context2: Dense,
    /// mu_channel_mix: F → 2F, no bias.
    pub channel_mix: Dense,
}

/// Architecture numbers of a PaiNN model.
#[derive(Debug, Clone, PartialEq)]
pub struct PainnConfig {
    pub n_atom_basis: usize,
    pub n_interactions: usize,
    pub n_rbf: usize,
    pub cutoff: f64,
    pub shared_filters: bool,
    pub elements: Vec<u8>,
}

/// A PaiNN energy model in f64, ready for the CPU reference and for upload to the GPU.
#[derive(Debug, Clone)]
pub struct PainnModel {
    pub config: PainnConfig,
    pub radial_basis: RadialBasis,
    pub epsilon: f64,
    pub trained: bool,
    pub description: String,
    /// Column Z is the embedding of element Z: [F, 100].
    pub embedding: DMatrix<f64>,
    /// Dense(K → T·3F), or Dense(K → 3F) with shared filters.
    pub filter: Dense,
    pub interactions: Vec<Interaction>,
    pub mixings: Vec<Mixing>,
    /// Atomwise head: Dense(F → H, SiLU), Dense(H → 1).
    pub readout1: Dense,
    pub readout2: Dense,
    pub energy_scale: f64,
    pub mean_per_atom: f64,
    /// Reference energy per element (eV), indexed by Z.
    pub atomref: Vec<f64>,
}

/// Raw tensors: name → (shape, values as f64).
type Tensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

/// Tensors in file order: (name, shape, values).
type NamedTensors = Vec<(String, Vec<usize>, Vec<f64>)>;

impl PainnModel {
    pub fn cutoff(&self) -> f64 {
        self.config.cutoff
    }

    pub fn knows_element(&self, z: u8) -> bool {
        self.config.elements.contains(&z)
    }

    /// Filter rows of interaction `t` (offset into the filter network's output).
    pub fn filter_offset(&self, t: usize) -> usize {
        if self.config.shared_filters {
            0
        } else {
            3 * self.config.n_atom_basis * t
        }
    }

    pub fn load(path: &Path) -> Result<PainnModel, ModelError> {
        let err = |reason: String| ModelError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the model file: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e:?}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e:?}")))?;
        let mut tensors = Tensors::new();
        for (name, view) in file.tensors() {
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => {
                    return Err(err(format!(
                        "tensor `{name}` has dtype {other:?}; only F32 and F64 are supported"
                    )))
                }
            };
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(err(format!(
                    "tensor `{name}` holds a non-finite value at flat index {bad}"
                )));
            }
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Self::from_parts(&metadata, tensors).map_err(err)
    }

    fn from_parts(meta: &HashMap<String, String>, mut tensors: Tensors) -> Result<PainnModel, String> {
        let get = |key: &str| meta.get(key).ok_or_else(|| format!("metadata key `{key}` is missing"));
        let parse_usize = |key: &str| -> Result<usize, String> {
            get(key)?
                .trim()
                .parse::<usize>()
                .map_err(|e| format!("metadata `{key}`: {e}"))
        };
        let parse_bool = |key: &str, default: bool| -> Result<bool, String> {
            match meta.get(key).map(|s| s.trim().to_ascii_lowercase()) {
                None => Ok(default),
                Some(s) if s == "true" => Ok(true),
                Some(s) if s == "false" => Ok(false),
                Some(s) => Err(format!("metadata `{key}` must be `true` or `false`, not `{s}`")),
            }
        };
        if get("format")? != "mdrun-painn" {
            return Err(format!(
                "metadata `format` is `{}`, expected `mdrun-painn`",
                get("format")?
            ));
        }
        if get("format_version")?.trim() != "1" {
            return Err(format!(
                "metadata `format_version` is `{}`; this mdrun reads version 1",
                get("format_version")?
            ));
        }
        if get("energy_unit")? != "eV" {
            return Err(format!(
                "metadata `energy_unit` is `{}`; mdrun needs eV",
                get("energy_unit")?
            ));
        }
        if get("length_unit")? != "Angstrom" {
            return Err(format!(
                "metadata `length_unit` is `{}`; mdrun needs Angstrom",
                get("length_unit")?
            ));
        }
        let f = parse_usize("n_atom_basis")?;
        let t_count = parse_usize("n_interactions")?;
        let k = parse_usize("n_rbf")?;
        if f == 0 || t_count == 0 || k == 0 {
            return Err("n_atom_basis, n_interactions and n_rbf must all be positive".into());
        }
        let cutoff: f64 = get("cutoff")?
            .trim()
            .parse()
            .map_err(|e| format!("metadata `cutoff`: {e}"))?;
        if !(cutoff.is_finite() && cutoff > 0.0) {
            return Err(format!(
                "metadata `cutoff` must be a positive length in Å, got {cutoff}"
            ));
        }
        let epsilon: f64 = match meta.get("epsilon") {
            Some(s) => s.trim().parse().map_err(|e| format!("metadata `epsilon`: {e}"))?,
            None => 1e-8,
        };
        let shared_filters = parse_bool("shared_filters", false)?;
        let trained = parse_bool("trained", false)?;
        let mut elements = Vec::new();
        for item in get("elements")?.split(',') {
            let z: u8 = item
                .trim()
                .parse()
                .map_err(|_| format!("metadata `elements`: `{item}` is not an atomic number"))?;
            if z == 0 || usize::from(z) >= MAX_ELEMENTS {
                return Err(format!("metadata `elements`: atomic number {z} is outside 1..99"));
            }
            elements.push(z);
        }
        elements.sort_unstable();
        elements.dedup();

        let sizes = format!("F={f}, T={t_count}, K={k}, shared_filters={shared_filters}");
        let take = |tensors: &mut Tensors, name: &str, shape: &[usize]| -> Result<Vec<f64>, String> {
            let (found, values) = tensors
                .remove(name)
                .ok_or_else(|| format!("tensor `{name}` is missing"))?;
            if found != shape {
                return Err(format!(
                    "tensor `{name}` has shape {found:?}, expected {shape:?} ({sizes})"
                ));
            }
            Ok(values)
        };
        let radial_kind = meta.get("radial_basis").map(String::as_str).unwrap_or("gaussian");
        let radial_basis = match radial_kind {
            "gaussian" => RadialBasis::Gaussian {
                offsets: take(&mut tensors, "representation.radial_basis.offsets", &[k])?,
                widths: take(&mut tensors, "representation.radial_basis.widths", &[k])?,
            },
            "bessel" => RadialBasis::Bessel {
                freqs: take(&mut tensors, "representation.radial_basis.freqs", &[k])?,
            },
            other => {
                return Err(format!(
                    "metadata `radial_basis` is `{other}`; expected `gaussian` or `bessel`"
                ))
            }
        };
        if let RadialBasis::Gaussian { widths, .. } = &radial_basis {
            if widths.contains(&0.0) {
                return Err("tensor `representation.radial_basis.widths` holds a zero width".into());
            }
        }
        let embedding = DMatrix::from_column_slice(
            f,
            MAX_ELEMENTS,
            &take(&mut tensors, "representation.embedding.weight", &[MAX_ELEMENTS, f])?,
        );
        let filter_out = if shared_filters { 3 * f } else { t_count * 3 * f };
        let dense =
            |tensors: &mut Tensors, name: &str, n_out: usize, n_in: usize, bias: bool| -> Result<Dense, String> {
                let w = take(tensors, &format!("{name}.weight"), &[n_out, n_in])?;
                let b = if bias {
                    Some(DVector::from_vec(take(tensors, &format!("{name}.bias"), &[n_out])?))
                } else {
                    None
                };
                Ok(Dense::new(DMatrix::from_row_slice(n_out, n_in, &w), b))
            };
        let filter = dense(&mut tensors, "representation.filter_net", filter_out, k, true)?;
        let mut interactions = Vec::new();
        let mut mixings = Vec::new();
        for t in 0..t_count {
            let p = format!("representation.interactions.{t}.interatomic_context_net");
            interactions.push(Interaction {
                context1: dense(&mut tensors, &format!("{p}.0"), f, f, true)?,
                context2: dense(&mut tensors, &format!("{p}.1"), 3 * f, f, true)?,
            });
            let p = format!("representation.mixing.{t}");
            mixings.push(Mixing {
                context1: dense(&mut tensors, &format!("{p}.intraatomic_context_net.0"), f, 2 * f, true)?,
                context2: dense(&mut tensors, &format!("{p}.intraatomic_context_net.1"), 3 * f, f, true)?,
                channel_mix: dense(&mut tensors, &format!("{p}.mu_channel_mix"), 2 * f, f, false)?,
            });
        }
        let hidden = tensors
            .get("output_modules.0.outnet.0.weight")
            .map(|(shape, _)| shape[0])
            .ok_or("tensor `output_modules.0.outnet.0.weight` is missing")?;
        let readout1 = dense(&mut tensors, "output_modules.0.outnet.0", hidden, f, true)?;
        let readout2 = dense(&mut tensors, "output_modules.0.outnet.1", 1, hidden, true)?;
        let optional_scalar = |tensors: &mut Tensors, name: &str, default: f64| -> Result<f64, String> {
            if tensors.contains_key(name) {
                Ok(take(tensors, name, &[1])?[0])
            } else {
                Ok(default)
            }
        };
        let energy_scale = optional_scalar(&mut tensors, "energy.scale", 1.0)?;
        let mean_per_atom = optional_scalar(&mut tensors, "energy.mean_per_atom", 0.0)?;
        let atomref = if tensors.contains_key("energy.atomref") {
            take(&mut tensors, "energy.atomref", &[MAX_ELEMENTS])?
        } else {
            vec![0.0; MAX_ELEMENTS]
        };
        if let Some(name) = tensors.keys().min() {
            return Err(format!("tensor `{name}` is not part of the mdrun-painn format"));
        }
        Ok(PainnModel {
            config: PainnConfig {
                n_atom_basis: f,
                n_interactions: t_count,
                n_rbf: k,
                cutoff,
                shared_filters,
                elements,
            },
            radial_basis,
            epsilon,
            trained,
            description: meta.get("description").cloned().unwrap_or_default(),
            embedding,
            filter,
            interactions,
            mixings,
            readout1,
            readout2,
            energy_scale,
            mean_per_atom,
            atomref,
        })
    }

    /// Tensors and metadata in the file layout (the inverse of `load`).
    fn to_parts(&self) -> (HashMap<String, String>, NamedTensors) {
        let c = &self.config;
        let mut meta = HashMap::new();
        meta.insert("format".into(), "mdrun-painn".into());
        meta.insert("format_version".into(), "1".into());
        meta.insert("n_atom_basis".into(), c.n_atom_basis.to_string());
        meta.insert("n_interactions".into(), c.n_interactions.to_string());
        meta.insert("n_rbf".into(), c.n_rbf.to_string());
        meta.insert("cutoff".into(), format!("{:?}", c.cutoff));
        meta.insert("shared_filters".into(), c.shared_filters.to_string());
        let elements: Vec<String> = c.elements.iter().map(u8::to_string).collect();
        meta.insert("elements".into(), elements.join(","));
        meta.insert("energy_unit".into(), "eV".into());
        meta.insert("length_unit".into(), "Angstrom".into());
        meta.insert("epsilon".into(), format!("{:?}", self.epsilon));
        meta.insert("trained".into(), self.trained.to_string());
        meta.insert("description".into(), self.description.clone());
        let mut out = Vec::new();
        let mut dense = |name: &str, d: &Dense| {
            out.push((
                format!("{name}.weight"),
                vec![d.n_out(), d.n_in()],
                d.weight.transpose().as_slice().to_vec(),
            ));
            if let Some(b) = &d.bias {
                out.push((format!("{name}.bias"), vec![b.len()], b.as_slice().to_vec()));
            }
        };
        dense("representation.filter_net", &self.filter);
        for (t, (i, m)) in self.interactions.iter().zip(&self.mixings).enumerate() {
            dense(
                &format!("representation.interactions.{t}.interatomic_context_net.0"),
                &i.context1,
            );
            dense(
                &format!("representation.interactions.{t}.interatomic_context_net.1"),
                &i.context2,
            );
            dense(
                &format!("representation.mixing.{t}.intraatomic_context_net.0"),
                &m.context1,
            );
            dense(
                &format!("representation.mixing.{t}.intraatomic_context_net.1"),
                &m.context2,
            );
            dense(&format!("representation.mixing.{t}.mu_channel_mix"), &m.channel_mix);
        }
        dense("output_modules.0.outnet.0", &self.readout1);
        dense("output_modules.0.outnet.1", &self.readout2);
        out.push((
            "representation.embedding.weight".into(),
            vec![MAX_ELEMENTS, c.n_atom_basis],
            self.embedding.as_slice().to_vec(),
        ));
        match &self.radial_basis {
            RadialBasis::Gaussian { offsets, widths } => {
                meta.insert("radial_basis".into(), "gaussian".into());
                out.push((
                    "representation.radial_basis.offsets".into(),
                    vec![offsets.len()],
                    offsets.clone(),
                ));
                out.push((
                    "representation.radial_basis.widths".into(),
                    vec![widths.len()],
                    widths.clone(),
                ));
            }
            RadialBasis::Bessel { freqs } => {
                meta.insert("radial_basis".into(), "bessel".into());
                out.push((
                    "representation.radial_basis.freqs".into(),
                    vec![freqs.len()],
                    freqs.clone(),
                ));
            }
        }
        out.push(("energy.scale".into(), vec![1], vec![self.energy_scale]));
        out.push(("energy.mean_per_atom".into(), vec![1], vec![self.mean_per_atom]));
        out.push(("energy.atomref".into(), vec![MAX_ELEMENTS], self.atomref.clone()));
        (meta, out)
    }

    /// Writes the model; `single_precision` stores F32 (as trained models are), else F64.
    pub fn save(&self, path: &Path, single_precision: bool) -> Result<(), ModelError> {
        let err = |reason: String| ModelError {
            path: path.display().to_string(),
            reason,
        };
        let (meta, tensors) = self.to_parts();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, values)| {
                let data = if single_precision {
                    values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect()
                } else {
                    values.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                (name, shape, data)
            })
            .collect();
        let dtype = if single_precision { Dtype::F32 } else { Dtype::F64 };
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                Ok((
                    name.clone(),
                    safetensors::tensor::TensorView::new(dtype, shape.clone(), data)?,
                ))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| err(format!("{e:?}")))?;
        let buffer = safetensors::serialize(views, Some(meta)).map_err(|e| err(format!("{e:?}")))?;
        std::fs::write(path, buffer).map_err(|e| err(format!("cannot write: {e}")))
    }

    /// A model with weights drawn at random (torch's default Linear initialisation,
    /// U(−1/√in, 1/√in), biases too), Gaussian basis as schnetpack builds it, for tests and
    /// benchmarks. Marked `trained = false`; never a substitute for a fitted model.
    pub fn random(config: PainnConfig, seed: u64) -> PainnModel {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let f = config.n_atom_basis;
        let k = config.n_rbf;
        let t = config.n_interactions;
        let mut uniform =
            |rows: usize, cols: usize, bound: f64| DMatrix::from_fn(rows, cols, |_, _| rng.random_range(-bound..bound));
        let mut dense = |n_out: usize, n_in: usize, bias: bool| {
            let bound = 1.0 / (n_in as f64).sqrt();
            let weight = uniform(n_out, n_in, bound);
            let bias = bias.then(|| DVector::from_column_slice(uniform(n_out, 1, bound).as_slice()));
            Dense::new(weight, bias)
        };
        let filter_out = if config.shared_filters { 3 * f } else { t * 3 * f };
        let filter = dense(filter_out, k, true);
        let interactions = (0..t)
            .map(|_| Interaction {
                context1: dense(f, f, true),
                context2: dense(3 * f, f, true),
            })
            .collect();
        let mixings = (0..t)
            .map(|_| Mixing {
                context1: dense(f, 2 * f, true),
                context2: dense(3 * f, f, true),
                channel_mix: dense(2 * f, f, false),
            })
            .collect();
        let readout1 = dense(f / 2, f, true);
        let readout2 = dense(1, f / 2, true);
        // schnetpack: nn.Embedding default init, N(0, 1).
        let normal = rand_distr::StandardNormal;
        let embedding = DMatrix::from_fn(f, MAX_ELEMENTS, |_, _| rng.sample::<f64, _>(normal));
        // GaussianRBF(n_rbf, cutoff): offsets = linspace(0, c, K) in float32, widths = |μ1 − μ0|.
        let offsets: Vec<f64> = (0..k)
            .map(|i| {
                if k > 1 {
                    (config.cutoff * i as f64 / (k - 1) as f64) as f32 as f64
                } else {
                    0.0
                }
            })
            .collect();
        let width = if k > 1 {
            (offsets[1] - offsets[0]).abs()
        } else {
            config.cutoff
        };
        PainnModel {
            radial_basis: RadialBasis::Gaussian {
                offsets,
                widths: vec![width; k],
            },
            epsilon: 1e-8,
            trained: false,
            description: format!("random weights (seed {seed}); untrained, for tests and benchmarks only"),
            embedding,
            filter,
            interactions,
            mixings,
            readout1,
            readout2,
            energy_scale: 1.0,
            mean_per_atom: 0.0,
            atomref: vec![0.0; MAX_ELEMENTS],
            config,
        }
    }
}
