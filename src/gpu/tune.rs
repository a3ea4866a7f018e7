//! Convolution kernels chosen by measurement on the adapter at hand.
//!
//! For one convolution geometry (spec and input shape), [`measure_conv`] times each candidate
//! kernel [`GpuConv2d::candidates`] lists (direct, workgroup-tiled with and without a split
//! reduction, register-blocked; bounded by geometry): one warm-up run, then [`TUNE_RUNS`]
//! timed runs (GPU timestamp queries where the adapter has them, else the host clock around a
//! submission and its wait), keeping the median. A candidate whose warm-up takes more than
//! [`PRUNE_FACTOR`] times the best warm-up so far is not run again. The fastest wins.
//!
//! Choices are kept per adapter in a JSON file in the cache directory
//! ([`crate::GpuOptions::cache_dir`], named after [`crate::Gpu::cache_key`]); plans read them
//! as they are built ([`Tuning`]). An unreadable, corrupt or stale file (another adapter,
//! driver or version of this crate) is ignored, and rewritten when choices are next recorded.
//! Without the `fs` feature the choices are kept in memory only, for the `Gpu`'s life.

use std::collections::BTreeMap;
#[cfg(feature = "fs")]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
#[cfg(feature = "fs")]
use crate::gpu::cache::cache_file;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::ops::{ConvChoice, GpuConv2d};
use crate::gpu::precision::Precision;
use crate::gpu::shader::Kernel;
use crate::spec::{Conv2d, Shape};

/// Timed runs per candidate after its warm-up (the median counts).
pub const TUNE_RUNS: usize = 3;
/// A candidate whose warm-up run takes more than this many times the best warm-up so far is
/// not timed further.
pub const PRUNE_FACTOR: f64 = 3.0;
/// The `format` field of the choice file.
#[cfg(feature = "fs")]
const FORMAT: &str = "dilated-conv-choices-1";

/// How a plan chooses its convolution kernels (unless [`crate::PlanOptions::algorithm`]
/// forces one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tuning {
    /// The choices measured earlier on this adapter where recorded, else the heuristic of
    /// [`GpuConv2d::kernel_for`]. Measures nothing, so plans build quickly and
    /// deterministically.
    #[default]
    Cached,
    /// Recorded choices, and the geometries without one measured and recorded.
    On,
    /// Every geometry measured again and recorded.
    Retune,
    /// The heuristic only; recorded choices are ignored.
    Off,
}

impl Tuning {
    /// Parses `cached`, `on`, `retune` or `off`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cached" => Tuning::Cached,
            "on" => Tuning::On,
            "retune" => Tuning::Retune,
            "off" => Tuning::Off,
            _ => return None,
        })
    }
}

/// Where a layer's kernel choice came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceSource {
    /// Forced by [`crate::PlanOptions::algorithm`].
    Forced,
    /// Measured while the plan was built.
    Measured,
    /// Read from the choices recorded for this adapter.
    Cached,
    /// The heuristic of [`GpuConv2d::kernel_for`] (nothing recorded, or tuning off).
    Heuristic,
}

/// One candidate's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateTime {
    /// The choice timed.
    pub choice: ConvChoice,
    /// The kernel it runs (the first dispatch's).
    pub kernel: Kernel,
    /// Its time: the median of the timed runs, or the warm-up's when pruned.
    pub time: Duration,
    /// Runs timed after the warm-up (0 when pruned after it).
    pub runs: usize,
    /// Whether the times come from GPU timestamp queries (else from the host clock).
    pub from_timestamps: bool,
    /// Why the candidate could not run on this device (a driver that rejects its shader, say):
    /// it is then never chosen, and `time` means nothing. `None` for a candidate that ran.
    pub error: Option<String>,
}

/// The kernel choice of one convolution layer of a plan, and how it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTuning {
    /// The layer's name.
    pub layer: String,
    /// The layer's geometry as the choice file keys it ([`geometry_key`]).
    pub geometry: String,
    /// The layer's multiply-adds times 2.
    pub flops: u64,
    /// The choice the plan runs.
    pub choice: ConvChoice,
    /// The kernel that choice runs.
    pub kernel: Kernel,
    /// Where the choice came from.
    pub source: ChoiceSource,
    /// The candidates' times when measured now (empty otherwise; a geometry repeated in the
    /// network is measured once, at its first layer).
    pub candidates: Vec<CandidateTime>,
}

/// The key of a convolution geometry in the choice file: batch, input channels and size,
/// output channels, kernel, dilation, stride and padding, `nosplit` when the plan may not
/// split reductions (plans within a memory budget), and `f16` for f16 storage (f32 keys carry
/// no precision, as before f16 existed).
pub fn geometry_key(spec: &Conv2d, input: Shape, split: bool, precision: Precision) -> String {
    let p = spec.padding;
    format!(
        "n{} c{}x{}x{} o{} k{}x{} d{}x{} s{}x{} p{},{},{},{}{}{}",
        input.n,
        input.c,
        input.h,
        input.w,
        spec.out_channels,
        spec.kernel.0,
        spec.kernel.1,
        spec.dilation.0,
        spec.dilation.1,
        spec.stride.0,
        spec.stride.1,
        p.top,
        p.bottom,
        p.left,
        p.right,
        if split { "" } else { " nosplit" },
        match precision {
            Precision::F32 => "",
            Precision::F16 => " f16",
        }
    )
}

/// Times every candidate of `conv` ([`GpuConv2d::candidates`]) on the buffers of `io` (their
/// contents are overwritten), fastest first. `split`: whether split reductions may be
/// candidates. A split candidate uses `io.scratch` when large enough, else a buffer of its own.
pub fn measure_conv(
    gpu: &Gpu,
    conv: &GpuConv2d,
    io: &Io<'_>,
    split: bool,
) -> Result<Vec<CandidateTime>> {
    let mut times: Vec<CandidateTime> = Vec::new();
    let mut best_warm = f64::INFINITY;
    let candidates = conv.candidates(gpu, io.input_shape, split)?;
    for (i, &choice) in candidates.iter().enumerate() {
        match measure_candidate(gpu, conv, io, choice, best_warm) {
            Ok(t) => {
                if t.runs > 0 {
                    best_warm = best_warm.min(t.time.as_secs_f64());
                }
                times.push(t);
            }
            // The first candidate (the heuristic's choice) must run. Another that fails on
            // this device is left out, unless the device itself is gone.
            Err(e) if i > 0 && !gpu.is_lost() => {
                log::warn!("kernel candidate {choice} failed and is left out: {e}");
                times.push(CandidateTime {
                    choice,
                    kernel: conv.kernel_as(choice.algorithm, io.output_shape),
                    time: Duration::MAX,
                    runs: 0,
                    from_timestamps: false,
                    error: Some(e.to_string()),
                });
            }
            Err(e) => return Err(e),
        }
    }
    rank_candidates(&mut times);
    Ok(times)
}

/// Orders measured candidates as the tuner ranks them: timed ones fastest first, then those
/// pruned after their warm-up, then those that failed.
pub(crate) fn rank_candidates(times: &mut [CandidateTime]) {
    times.sort_by_key(|t| (t.error.is_some(), t.runs == 0, t.time));
}

/// One candidate's warm-up run and, unless it took more than [`PRUNE_FACTOR`] times
/// `best_warm` seconds, its timed runs.
fn measure_candidate(
    gpu: &Gpu,
    conv: &GpuConv2d,
    io: &Io<'_>,
    choice: ConvChoice,
    best_warm: f64,
) -> Result<CandidateTime> {
    let dispatches = conv.prepare_as(gpu, io, choice)?;
    let kernel = dispatches
        .first()
        .map(|d| d.kernel())
        .ok_or_else(|| Error::Internal("a convolution recorded no dispatch".into()))?;
    let start = Instant::now();
    gpu.run(&dispatches)?;
    let warm = start.elapsed();
    if warm.as_secs_f64() > PRUNE_FACTOR * best_warm {
        return Ok(CandidateTime {
            choice,
            kernel,
            time: warm,
            runs: 0,
            from_timestamps: false,
            error: None,
        });
    }
    let (mut runs, from_timestamps) = time_dispatches(gpu, &dispatches, TUNE_RUNS)?;
    runs.sort();
    Ok(CandidateTime {
        choice,
        kernel,
        time: runs[runs.len() / 2],
        runs: runs.len(),
        from_timestamps,
        error: None,
    })
}

/// [`measure_conv`] on buffers of its own for inputs of `input` (zeros), without a shared
/// scratch buffer.
pub fn measure_conv_alone(
    gpu: &Gpu,
    conv: &GpuConv2d,
    input: Shape,
    split: bool,
) -> Result<Vec<CandidateTime>> {
    let x = gpu.empty_as(input, conv.precision())?;
    let y = gpu.empty_as(conv.output_shape(input)?, conv.precision())?;
    measure_conv(gpu, conv, &Io::tensors(&x, &y), split)
}

/// `runs` timings of the dispatches: GPU timestamps around one compute pass each (all in one
/// submission) where the device has them, else the host clock around each submission (and its
/// wait); the flag tells which.
pub fn time_dispatches(
    gpu: &Gpu,
    dispatches: &[Dispatch],
    runs: usize,
) -> Result<(Vec<Duration>, bool)> {
    let runs = runs.max(1);
    if !gpu.has_timestamps() {
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            gpu.run(dispatches)?;
            out.push(start.elapsed());
        }
        return Ok((out, false));
    }
    let count = 2 * runs as u32;
    let queries = gpu.scoped("timestamp queries", 0, || {
        gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("tuning timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        })
    })?;
    let bytes = count as u64 * 8;
    let resolved = gpu.create_buffer(
        "tuning timestamps",
        bytes,
        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
    )?;
    let staging = gpu.create_buffer(
        "tuning timestamp read-back",
        bytes,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    let commands = gpu.scoped("recording timed runs", 0, || {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for i in 0..runs as u32 {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("tuning"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                }),
            });
            gpu.record(&mut pass, dispatches);
        }
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
        encoder.finish()
    })?;
    gpu.submit_and_wait(commands)?;
    let raw = crate::gpu::context::block_on(gpu.read_mapped_async(&staging, bytes))?;
    let ticks: &[u64] = bytemuck::cast_slice(&raw);
    let period = gpu.queue.get_timestamp_period() as f64;
    let out = ticks
        .chunks_exact(2)
        .map(|t| Duration::from_nanos((t[1].saturating_sub(t[0]) as f64 * period) as u64))
        .collect();
    Ok((out, true))
}

/// A recorded choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Recorded {
    pub choice: ConvChoice,
    /// The winner's measured time in milliseconds (kept in the file, for reading).
    #[cfg_attr(not(feature = "fs"), allow(dead_code))]
    pub ms: f64,
}

/// The choices recorded for one adapter, by geometry.
#[derive(Debug, Default)]
pub(crate) struct TuneTable {
    entries: BTreeMap<String, Recorded>,
}

#[cfg(feature = "fs")]
impl TuneTable {
    /// The table in `text`, if it is a choice file for `key`.
    fn parse(text: &str, key: &str) -> std::result::Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err("not a choice file of this format".into());
        }
        if v.get("key").and_then(|k| k.as_str()) != Some(key) {
            return Err("made for another adapter, driver or version".into());
        }
        let entries = v
            .get("choices")
            .and_then(|c| c.as_object())
            .ok_or("no choices")?;
        let mut table = Self::default();
        for (geometry, e) in entries {
            let choice = e
                .get("choice")
                .and_then(|c| c.as_str())
                .and_then(ConvChoice::from_name)
                .ok_or_else(|| format!("{geometry}: no valid choice"))?;
            let ms = e.get("ms").and_then(|m| m.as_f64()).unwrap_or(f64::NAN);
            table
                .entries
                .insert(geometry.clone(), Recorded { choice, ms });
        }
        Ok(table)
    }

    fn to_json(&self, key: &str) -> String {
        let choices: serde_json::Map<String, serde_json::Value> = self
            .entries
            .iter()
            .map(|(g, r)| {
                let ms = if r.ms.is_finite() {
                    serde_json::json!(r.ms)
                } else {
                    serde_json::Value::Null
                };
                (
                    g.clone(),
                    serde_json::json!({ "choice": r.choice.name(), "ms": ms }),
                )
            })
            .collect();
        let v = serde_json::json!({ "format": FORMAT, "key": key, "choices": choices });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

impl Gpu {
    /// The file the convolution kernel choices of this adapter are kept in (see
    /// [`crate::gpu::tune`]), when a cache directory is set.
    #[cfg(feature = "fs")]
    pub fn tuning_file(&self) -> Option<PathBuf> {
        self.cache_dir()
            .map(|d| cache_file(d, "conv-choices", self.cache_key(), "json"))
    }

    /// Runs `f` on the table of recorded choices, read from the file on first use.
    fn with_table<T>(&self, f: impl FnOnce(&mut TuneTable) -> T) -> Result<T> {
        let mut guard = self
            .tuning
            .lock()
            .map_err(|_| Error::Internal("the kernel choice table is poisoned".into()))?;
        let table = guard.get_or_insert_with(|| self.read_table());
        Ok(f(table))
    }

    /// The recorded choices: none without the `fs` feature.
    #[cfg(not(feature = "fs"))]
    fn read_table(&self) -> TuneTable {
        TuneTable::default()
    }

    /// The recorded choices in [`Gpu::tuning_file`], if any.
    #[cfg(feature = "fs")]
    fn read_table(&self) -> TuneTable {
        let Some(path) = self.tuning_file() else {
            return TuneTable::default();
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("kernel choices {}: {e}; ignoring them", path.display());
                }
                return TuneTable::default();
            }
        };
        TuneTable::parse(&text, self.cache_key()).unwrap_or_else(|why| {
            log::info!(
                "kernel choices {}: {why}; ignoring the file, it is rewritten when choices are next recorded",
                path.display()
            );
            TuneTable::default()
        })
    }

    /// The choice recorded for a geometry ([`geometry_key`]).
    pub fn recorded_choice(&self, geometry: &str) -> Result<Option<ConvChoice>> {
        self.with_table(|t| t.entries.get(geometry).map(|r| r.choice))
    }

    /// Records a choice for a geometry, and writes the file (atomically) when a cache
    /// directory is set (with the `fs` feature).
    pub fn record_choice(&self, geometry: &str, choice: ConvChoice, time: Duration) -> Result<()> {
        let record = |t: &mut TuneTable| {
            t.entries.insert(
                geometry.to_string(),
                Recorded {
                    choice,
                    ms: time.as_secs_f64() * 1e3,
                },
            );
        };
        #[cfg(not(feature = "fs"))]
        return self.with_table(record);
        #[cfg(feature = "fs")]
        self.write_table(self.with_table(|t| {
            record(t);
            t.to_json(self.cache_key())
        })?)
    }

    /// Writes the table's JSON `text` to [`Gpu::tuning_file`] when there is one.
    #[cfg(feature = "fs")]
    fn write_table(&self, text: String) -> Result<()> {
        let Some(path) = self.tuning_file() else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        crate::io::write_file(&path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "fs")]
    use crate::gpu::ConvAlgorithm;

    /// Timed candidates rank fastest first, then those pruned after their warm-up, then
    /// those that failed, so a failed candidate is never chosen while any other ran.
    #[test]
    fn failed_candidates_rank_last() {
        let c = |name: &str, ms: u64, runs: usize, error: Option<&str>| CandidateTime {
            choice: ConvChoice::from_name(name).unwrap(),
            kernel: Kernel::ConvTiled,
            time: if error.is_some() {
                Duration::MAX
            } else {
                Duration::from_millis(ms)
            },
            runs,
            from_timestamps: false,
            error: error.map(str::to_string),
        };
        let mut times = vec![
            c("coop", 0, 0, Some("rejected by the driver")),
            c("direct", 90, 0, None),
            c("tiled", 30, 5, None),
            c("auto", 20, 5, None),
            c("blocked", 5, 0, None),
        ];
        rank_candidates(&mut times);
        let order: Vec<String> = times.iter().map(|t| t.choice.name()).collect();
        assert_eq!(order, ["auto", "tiled", "blocked", "direct", "coop"]);
    }

    #[test]
    #[cfg(feature = "fs")]
    fn the_table_round_trips_and_rejects_other_keys_and_garbage() {
        let mut t = TuneTable::default();
        let names = [
            "auto",
            "direct",
            "tiled",
            "tiled-nosplit",
            "blocked",
            "blocked-64",
            "blocked-packed",
            "tiled-split4",
            "tiled-64-4x4-k16-split2",
            "tiled-64-4x4-k16",
            "tiled-64-8x8-k8-nosplit",
            "tiled-32-4x4-k8",
            "coop",
            "coop-nosplit",
            "coop-split3",
        ];
        for (i, name) in names.iter().enumerate() {
            let choice = ConvChoice::from_name(name).unwrap();
            assert_eq!(choice.name(), *name);
            t.entries.insert(
                format!("g{i}"),
                Recorded {
                    choice,
                    ms: i as f64,
                },
            );
        }
        let text = t.to_json("adapter A");
        let back = TuneTable::parse(&text, "adapter A").unwrap();
        assert_eq!(back.entries, t.entries);
        assert!(TuneTable::parse(&text, "adapter B").is_err());
        assert!(TuneTable::parse("{not json", "adapter A").is_err());
        assert!(TuneTable::parse(&text.replace("tiled", "fast"), "adapter A").is_err());
        assert_eq!(
            ConvChoice::from_name("tiled-split4"),
            Some(ConvChoice {
                slices: 4,
                ..ConvChoice::new(ConvAlgorithm::Tiled, true)
            })
        );
        for bad in [
            "tiled-nosplit-split4",
            "tiled-split0",
            "tiled-split",
            "direct-split2",
        ] {
            assert_eq!(ConvChoice::from_name(bad), None, "{bad}");
        }
        assert_eq!(
            ConvChoice::from_name("tiled-nosplit"),
            Some(ConvChoice::new(ConvAlgorithm::Tiled, false))
        );
        assert_eq!(
            ConvChoice::from_name("tiled-64-8x8-k8-nosplit"),
            Some(ConvChoice::new(
                ConvAlgorithm::TiledVariant(crate::gpu::TiledVariant::T64x8),
                false
            ))
        );
        assert_eq!(ConvChoice::from_name("tiled-64-8x8-k9"), None);
    }

    #[test]
    fn geometry_keys_tell_layers_apart() {
        let a = Conv2d::new(8, 16, 3).dilation(2).pad(2);
        let b = Conv2d::new(8, 16, 3).dilation(4).pad(4);
        let s = Shape::new(1, 8, 20, 20);
        let key = |spec: &Conv2d, split| geometry_key(spec, s, split, Precision::F32);
        assert_ne!(key(&a, true), key(&b, true));
        assert_ne!(key(&a, true), key(&a, false));
        assert_eq!(key(&a, true), key(&a.with_relu(true), true));
        assert_eq!(key(&a, true), "n1 c8x20x20 o16 k3x3 d2x2 s1x1 p2,2,2,2");
        assert_eq!(
            geometry_key(&a, s, true, Precision::F16),
            format!("{} f16", key(&a, true))
        );
    }
}
