// Same allocator as the training binary: measure what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use candle_core::DType;
use et_data::stage_crop::LowFreq;
use et_kernels::device::{DeviceSpec, Precision};
use clap::{Parser, Subcommand};
use et_kernels::testing::seeded;
use et_models::registry::{create_model, ModelOptions};
use et_models::ParamStore;
use et_train::loss::smoothed_targets;
use et_train::optim::{OptimConfig, Optimizer};
use et_train::step::Learner;
use std::time::Instant;

/// Benchmarks with a fixed output format; compare with the PyTorch scripts in bench/.
#[derive(Parser)]
#[command(name = "et-bench", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// forward + backward + AdamW step on random data; prints per-step times, then
    /// `img/s: X` (median over the timed steps) as the last line, with peak RSS.
    TrainStep {
        /// Registry model name.
        #[arg(long, default_value = "convnext_atto")]
        model: String,
        /// Input height and width.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Images per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Number of output classes.
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// ConvNeXt stem stride (2 = et-train's small-image stem) [default: timm's 4].
        #[arg(long)]
        stem_stride: Option<usize>,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// f32, or bf16 (f32 master weights and optimiser, bf16 compute, as et-train).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Decode + timm train transform (RandomResizedCrop(size, bicubic), flip,
    /// RandAugment(POLICY), CHW f32, normalise) of every image of an ImageFolder (or of
    /// WebDataset shards, streamed through the shuffle buffer as et-train reads them) with the
    /// et-data loader (each batch handed back for reuse once read, unless --no-recycle);
    /// with --lowres B, et-train's transform of a stage at B (base --size), low-passed as
    /// --low-freq says. Prints per-epoch times, then `img/s: X` (median over epochs) as the
    /// last line. Compare with bench/torchvision_data.py.
    Data {
        /// ImageFolder: DIR/<class>/* (or DIR/train/<class>/*); or shards: DIR/*.tar (or
        /// DIR/train/*.tar) with classes.json, or a pattern DIR/train-{000000..000009}.tar.
        #[arg(long, value_name = "DIR|PATTERN")]
        data: std::path::PathBuf,
        /// Samples held by the shuffle buffer when reading shards.
        #[arg(long, default_value_t = 1000)]
        shuffle_buffer: usize,
        /// Output size of RandomResizedCrop (the base resolution with --lowres).
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// timm RandAugment policy string.
        #[arg(long, default_value = "rand-m9-mstd0.5-inc1")]
        aa: String,
        /// Loader (transform) threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Passes over the data (each timed).
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// A stage's resolution B below --size: the input is brought down to B×B as
        /// et-train does it, by --low-freq.
        #[arg(long, value_name = "B")]
        lowres: Option<usize>,
        /// With --lowres: fft (the exact low-frequency crop after RandAugment at --size) or
        /// resize (RandomResizedCrop straight to B from a DCT-scaled decode).
        #[arg(long, value_name = "fft|resize", default_value = "fft")]
        low_freq: LowFreq,
        /// Smallest area fraction of RandomResizedCrop (timm's recipe: 0.08; et-train's
        /// default: 0.25).
        #[arg(long, default_value_t = 0.08)]
        crop_min_scale: f64,
        /// Decode JPEG crops at least twice --size at a reduced DCT scale (1/2, 1/4, 1/8).
        #[arg(long)]
        reduced_dct: bool,
        /// Drop each batch instead of handing its buffer back to the loader (as a
        /// consumer that keeps the buffer does: et-train on the CPU moves it into the
        /// input tensor), so every batch is written into fresh, zeroed memory.
        #[arg(long)]
        no_recycle: bool,
    },
    /// How far `--low-freq resize` moves a stage's inputs from the exact FFT crop: for the
    /// same crop box of each image, the mean absolute difference, RMS, maximum (8-bit
    /// levels) and PSNR between the two modes' B×B crops (before flip and RandAugment, which
    /// are the same draws in both), and how many crops each DCT scale decoded.
    LowfreqDiff {
        /// ImageFolder: DIR/<class>/* (or DIR/train/<class>/*).
        #[arg(long, value_name = "DIR")]
        data: std::path::PathBuf,
        /// The base resolution.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// The stage's resolution B.
        #[arg(long, value_name = "B")]
        lowres: u32,
        /// Images compared (the first N; 0 = all).
        #[arg(long, default_value_t = 0)]
        images: usize,
        /// Smallest area fraction of RandomResizedCrop (timm's recipe: 0.08; et-train's
        /// default: 0.25).
        #[arg(long, default_value_t = 0.08)]
        crop_min_scale: f64,
        /// Seed of the crop boxes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Threads (the result does not depend on them).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Fidelity of the decoders: full decodes (libjpeg vs the pure-Rust decoder), and
    /// RandomResizedCrop(size) with the reduced-DCT decode vs the exact one (same crop
    /// boxes); prints mean / max absolute differences in 8-bit levels.
    DecodeCheck {
        #[arg(long, value_name = "DIR")]
        data: std::path::PathBuf,
        #[arg(long, default_value_t = 96)]
        size: u32,
        /// Also write each full decode as raw RGB to DIR/<index>.rgb (for comparing with PIL).
        #[arg(long, value_name = "DIR")]
        dump: Option<std::path::PathBuf>,
    },
    /// Data parallelism's per-step exchange: the time to average a model's gradients over
    /// the ranks (flat buckets, as et-train), under `mpirun -np N` with a build of
    /// `--features distributed`; prints per-round times and `ms: X` (median).
    AllReduce {
        #[arg(long, default_value = "convnext_tiny")]
        model: String,
        /// Timed rounds (after one untimed).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Mixed precision's model of casts: the median time of building it anew from casts of
    /// the f32 masters (each micro-batch, formerly), of the casts alone, and of rewriting
    /// the casts of the model built once (each optimiser step, now).
    Casts {
        #[arg(long, default_value = "convnext_tiny")]
        model: String,
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// The compute precision cast to.
        #[arg(long, default_value = "bf16")]
        precision: Precision,
        /// Timed repetitions (after one untimed).
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// Time of libjpeg-turbo decoding every JPEG of an ImageFolder, read into memory
    /// first: all of each image at full and at 1/8 DCT scale (where entropy decoding is
    /// nearly everything), entropy-decoded by et-data's decoder and by libjpeg's.
    DecodeSpeed {
        #[arg(long, value_name = "DIR")]
        data: std::path::PathBuf,
        /// Passes over the images; each image's time is its best pass.
        #[arg(long, default_value_t = 3)]
        passes: usize,
    },
}

mod casts;
mod decode_speed;
mod lowfreq_diff;

fn all_reduce(model: &str, rounds: usize) -> Result<()> {
    let comm = et_dist::init()?;
    let ps = ParamStore::zeros();
    create_model(model, &ModelOptions::default(), ps.var_builder(DType::F32, &candle_core::Device::Cpu))?;
    let sizes: Vec<usize> = ps.trainable().iter().map(|(_, v)| v.elem_count()).collect();
    let floats: usize = sizes.iter().sum();
    let mut grads = et_train::optim::Grads::Host(sizes.iter().map(|&n| vec![1.0f32; n]).collect());
    let mut times = Vec::new();
    for i in 0..=rounds {
        comm.barrier()?;
        let t = Instant::now();
        et_train::dist_sync::average_grads(comm.as_ref(), None, &mut grads, 1.0, 8)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if comm.is_root() {
        println!("{model}: {:.1} M gradients ({:.0} MB) averaged over {}", floats as f64 / 1e6, floats as f64 * 4.0 / 1e6, comm.describe());
        println!("rounds (ms): {}", times.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(", "));
        println!("ms: {:.2}", median(times));
    }
    Ok(())
}
mod fidelity;

/// Peak resident set size of this process in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::TrainStep { model, size, batch, threads, classes, stem_stride, warmup, steps, device, precision } => {
            et_kernels::cpu::configure(threads).context("configuring threads")?;
            et_kernels::device::check_precision(device, precision)?;
            let dev = device.open()?;
            let ps = ParamStore::new(0);
            let opts = ModelOptions { num_classes: classes, drop_path_rate: 0.0, stem_stride, img_size: None };
            let (cfg, net) = create_model(&model, &opts, ps.var_builder(DType::F32, &dev))?;
            cfg.check_input(&model, size, size)?;
            let opt = Optimizer::new(ps.trainable(), OptimConfig::default(), &|_| 1.0)?;
            // et-train's own step: forward, backward and the update of a `Learner`.
            let mut learner = Learner::new(ps.clone(), net, cfg, opt, None, dev.clone(), precision);
            learner.sync_phases = true;
            let x = seeded(&[batch, 3, size, size], 1, &dev, DType::F32)?;
            let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
            let targets = smoothed_targets(&labels, classes, 0.1, &dev)?;
            println!(
                "{model} @ {size}px, batch {batch}, {device} {precision}, {} threads, {:.2} M params",
                rayon::current_num_threads(),
                ps.num_trainable() as f64 / 1e6
            );
            let mut times = Vec::new();
            for i in 0..warmup + steps {
                let t = Instant::now();
                let mb = learner.micro_batch(&x, &targets, i as u64, 1.0)?;
                learner.update(1e-3, 0.05, None)?;
                let total = t.elapsed().as_secs_f64();
                println!(
                    "step {i}{}: forward {:.3} s, backward {:.3} s, optimiser {:.3} s, {:.1} img/s",
                    if i < warmup { " (warm-up)" } else { "" },
                    mb.forward_s,
                    mb.backward_s,
                    total - mb.forward_s - mb.backward_s,
                    batch as f64 / total
                );
                if i >= warmup {
                    times.push(total);
                }
            }
            let rss = peak_rss_mib().map_or("unknown".to_string(), |m| format!("{m:.0} MiB"));
            println!("peak RSS: {rss}");
            println!("img/s: {:.2}", batch as f64 / median(times));
        }
        Cmd::Data { data, shuffle_buffer, size, aa, threads, epochs, batch, lowres, low_freq, crop_min_scale, reduced_dct, no_recycle } => {
            let stage = DataStage { size, lowres: lowres.unwrap_or(size), low_freq, crop_min_scale, reduced_dct };
            data_bench(&data, shuffle_buffer, &stage, &aa, threads, epochs, batch, no_recycle)?
        }
        Cmd::LowfreqDiff { data, size, lowres, images, crop_min_scale, seed, threads } => {
            let mut crop = et_data::transform::RandomResizedCrop::new(size);
            crop.scale = (crop_min_scale, 1.0);
            let report = lowfreq_diff::report(&data, &crop, lowres, images, seed, threads)?;
            println!("{size} -> {lowres} px from {} (crop area {crop_min_scale}..1, seed {seed})", data.display());
            print!("{}", report.to_text());
        }
        Cmd::DecodeCheck { data, size, dump } => fidelity::decode_check(&data, size, dump.as_deref())?,
        Cmd::DecodeSpeed { data, passes } => decode_speed::decode_speed(&data, passes)?,
        Cmd::AllReduce { model, rounds } => all_reduce(&model, rounds)?,
        Cmd::Casts { model, classes, device, precision, reps } => casts::casts(&model, classes, &device.open()?, precision, reps)?,
    }
    Ok(())
}

/// What `et-bench data` transforms each image into.
struct DataStage {
    size: usize,
    lowres: usize,
    low_freq: LowFreq,
    crop_min_scale: f64,
    reduced_dct: bool,
}

#[allow(clippy::too_many_arguments)]
fn data_bench(dir: &std::path::Path, shuffle_buffer: usize, stage: &DataStage, aa: &str, threads: usize, epochs: usize, batch: usize, no_recycle: bool) -> Result<()> {
    use et_data::dataset::Dataset;
    use et_data::loader::{Item, Loader, LoaderConfig};
    use et_data::randaugment::RandAugment;
    use et_data::transform::RandomResizedCrop;
    use et_data::Rng;
    use et_train::pipeline::TrainTransform;
    use std::sync::Arc;

    // The allocator settings et-train runs with (freed buffers stay in the process).
    et_kernels::cpu::configure(None).context("configuring the runtime")?;
    let set = Dataset::open_split(dir, "train", &mut |note: &str| println!("data: {note}"))?;
    anyhow::ensure!(!set.is_empty(), "no images in {}", dir.display());
    anyhow::ensure!(shuffle_buffer > 0, "--shuffle-buffer must be at least 1");
    let &DataStage { size, lowres: out, low_freq, crop_min_scale, reduced_dct } = stage;
    anyhow::ensure!(out > 0 && out <= size, "--lowres must be between 1 and --size");
    anyhow::ensure!(crop_min_scale > 0.0 && crop_min_scale <= 1.0, "--crop-min-scale must be in (0, 1], got {crop_min_scale}");
    let mut crop = RandomResizedCrop::new(size as u32);
    crop.scale = (crop_min_scale, 1.0);
    // et-train's transform of a stage at `out` (at `size`: the plain timm train transform).
    let tf = TrainTransform { resolution: out, crop, low_freq, hflip: 0.5, randaugment: Some(RandAugment::parse(aa)?), mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], erasing: 0.0 };
    let transform = Arc::new(move |s: &Item, rng: &mut Rng, slot: &mut [f32]| tf.apply_item_into(s, rng, reduced_dct, slot));
    let (n, kind) = (set.len(), set.kind());
    let loader = Loader::new(
        Arc::new(set),
        LoaderConfig { batch_size: batch.max(1), shuffle: true, drop_last: false, seed: 0, threads: threads.max(1), prefetch: 2, skip_corrupt: true, shard: Default::default(), shuffle_buffer },
    );
    println!(
        "{n} images from {} ({kind}), size {size}{}, crop area {crop_min_scale}..1{}, {aa}, {} loader threads, batch {batch}{}",
        dir.display(),
        if reduced_dct { " (reduced-DCT decode)" } else { "" },
        if out < size { format!(", stage at {out} px ({low_freq} low-pass)") } else { String::new() },
        threads.max(1),
        if no_recycle { ", batch buffers not recycled" } else { "" }
    );
    let mut rates = Vec::new();
    for epoch in 0..epochs.max(1) {
        let t = Instant::now();
        let (mut images, mut skipped, mut checksum) = (0usize, 0usize, 0f64);
        let mut batches = loader.epoch(epoch as u64, [3, out, out], transform.clone());
        while let Some(b) = batches.next() {
            let b = b?;
            images += b.len();
            skipped += b.skipped.len();
            // Touch the output so nothing can be optimised away.
            checksum += b.images.iter().step_by(997).map(|&v| v as f64).sum::<f64>();
            if !no_recycle {
                batches.recycle(b.images);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let rate = images as f64 / secs;
        println!("epoch {epoch}: {images} images in {secs:.2} s, {rate:.1} img/s{} (checksum {checksum:.1})", if skipped > 0 { format!(", {skipped} skipped") } else { String::new() });
        rates.push(rate);
    }
    println!("img/s: {:.1}", median(rates));
    Ok(())
}
