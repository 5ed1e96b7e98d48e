// Same allocator as the training binary: measure what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use candle_core::DType;
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
    /// RandAugment(POLICY), CHW f32, normalise) of every image of an ImageFolder with the
    /// et-data loader (each batch handed back for reuse once read, unless --no-recycle);
    /// prints per-epoch times, then `img/s: X` (median over epochs) as the
    /// last line. Compare with bench/torchvision_data.py.
    Data {
        /// ImageFolder: DIR/<class>/* (or DIR/train/<class>/*).
        #[arg(long, value_name = "DIR")]
        data: std::path::PathBuf,
        /// Output size of RandomResizedCrop.
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
        /// After the transform, anti-aliased down-sample (Lanczos) to B×B: ET++'s fast
        /// low-pass in place of the exact Fourier crop.
        #[arg(long, value_name = "B")]
        lowres: Option<usize>,
        /// Decode JPEG crops at least twice --size at a reduced DCT scale (1/2, 1/4, 1/8).
        #[arg(long)]
        reduced_dct: bool,
        /// Drop each batch instead of handing its buffer back to the loader (as a
        /// consumer that keeps the buffer does: et-train on the CPU moves it into the
        /// input tensor), so every batch is written into fresh, zeroed memory.
        #[arg(long)]
        no_recycle: bool,
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
        et_train::dist_sync::average_grads(comm.as_ref(), &mut grads, 1.0, 8)?;
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
        Cmd::Data { data, size, aa, threads, epochs, batch, lowres, reduced_dct, no_recycle } => data_bench(&data, size, &aa, threads, epochs, batch, lowres, reduced_dct, no_recycle)?,
        Cmd::DecodeCheck { data, size, dump } => fidelity::decode_check(&data, size, dump.as_deref())?,
        Cmd::DecodeSpeed { data, passes } => decode_speed::decode_speed(&data, passes)?,
        Cmd::AllReduce { model, rounds } => all_reduce(&model, rounds)?,
        Cmd::Casts { model, classes, device, precision, reps } => casts::casts(&model, classes, &device.open()?, precision, reps)?,
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn data_bench(dir: &std::path::Path, size: usize, aa: &str, threads: usize, epochs: usize, batch: usize, lowres: Option<usize>, reduced_dct: bool, no_recycle: bool) -> Result<()> {
    use et_data::folder::{ImageFolder, Sample};
    use et_data::loader::{Loader, LoaderConfig};
    use et_data::randaugment::RandAugment;
    use et_data::resample::{resize_f32_planar, Filter};
    use et_data::transform::{random_hflip, to_chw_normalized, to_chw_normalized_into, RandomResizedCrop};
    use et_data::Rng;
    use std::sync::Arc;

    // The allocator settings et-train runs with (freed buffers stay in the process).
    et_kernels::cpu::configure(None).context("configuring the runtime")?;
    let set = ImageFolder::open(&ImageFolder::split_root(dir, "train"))?;
    anyhow::ensure!(!set.samples.is_empty(), "no images in {}", dir.display());
    let crop = RandomResizedCrop::new(size as u32);
    let ra = RandAugment::parse(aa)?;
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let out = lowres.unwrap_or(size);
    anyhow::ensure!(out > 0 && out <= size, "--lowres must be between 1 and --size");
    let transform = Arc::new(move |s: &Sample, rng: &mut Rng, slot: &mut [f32]| {
        let img = crop.decode_apply(&s.path, rng, reduced_dct)?;
        let img = random_hflip(img, 0.5, rng);
        let img = ra.apply(&img, rng);
        if out < size {
            slot.copy_from_slice(&resize_f32_planar(&to_chw_normalized(&img, &mean, &std), 3, size, size, out, out, Filter::Lanczos));
            Ok(())
        } else {
            to_chw_normalized_into(&img, &mean, &std, slot)
        }
    });
    let n = set.samples.len();
    let loader = Loader::new(
        Arc::new(set.samples),
        LoaderConfig { batch_size: batch.max(1), shuffle: true, drop_last: false, seed: 0, threads: threads.max(1), prefetch: 2, skip_corrupt: true, shard: Default::default() },
    );
    println!(
        "{n} images from {}, size {size}{}{}, {aa}, {} loader threads, batch {batch}{}",
        dir.display(),
        if reduced_dct { " (reduced-DCT decode)" } else { "" },
        lowres.map_or(String::new(), |b| format!(" then Lanczos to {b}")),
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
