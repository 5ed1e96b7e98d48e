//! The training loop: stages of the curriculum, optimiser steps made of one or more
//! micro-batches (gradient accumulation to a fixed effective batch), EMA, validation and a
//! checkpoint at the end of every stage (and every `save_every_steps`), `metrics.jsonl`
//! throughout. A run resumed from a checkpoint continues exactly (see `checkpoint.rs`).

use crate::checkpoint::{self, TrainState, EMA_FILE, OPTIMIZER_FILE, REPLAY_FILE};
use crate::ema::Ema;
use crate::layer_decay::layer_scales;
use crate::loss::{smoothed_targets, soft_cross_entropy};
use crate::lr::CosineSchedule;
use crate::optim::{Grads, OptimConfig, Optimizer};
use crate::pipeline::{policy, TrainTransform};
use crate::run_io::{check_space, check_writable, Metrics};
use crate::schedule::{Family, Schedule};
use crate::setup::{self, Setup};
use crate::TrainError;
use candle_core::{Device, Tensor};
use et_data::folder::Sample;
use et_data::loader::{Batch, BatchIter, Loader, LoaderConfig};
use et_data::mixup;
use et_data::randaugment::RandAugment;
use et_data::replay::ReplayBuffer;
use et_data::transform::RandomResizedCrop;
use et_data::Rng;
use et_models::run_config::WEIGHTS_FILE;
use et_kernels::CandleOps;
use et_models::ParamStore;
pub use crate::config::{validate, TrainConfig};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What the loop reports to its caller (the CLI prints these).
#[derive(Debug)]
pub enum Event<'a> {
    Plan { schedule: &'a Schedule, train_images: usize, val_images: usize, classes: usize, params: usize, steps: usize, stage_steps: &'a [usize], accum: &'a [usize], drop_path: f64 },
    Resumed { from: &'a Path, step: usize, stage: usize, stage_step: usize },
    Step { stage: usize, stages: usize, resolution: usize, magnitude: f64, step: usize, steps: usize, loss: f64, lr: f64, img_per_s: f64, eta_s: f64, progress: f64 },
    StageEnd { stage: usize, resolution: usize, seconds: f64, val_top1: Option<f64>, val_top5: Option<f64>, ema_top1: Option<f64>, mean_loss: f64, skipped: usize },
    Checkpoint { dir: &'a Path, step: usize },
    Skipped { path: &'a Path, reason: &'a str },
    Initialised { from: &'a Path, loaded: usize, reinitialised: &'a [String] },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub seconds: f64,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub ema_top1: Option<f64>,
    pub steps: usize,
    pub skipped: usize,
    /// (resolution, wall seconds) of each stage.
    pub stages: Vec<(usize, f64)>,
}

/// Reads micro-batches across epoch boundaries, tracking the loader position.
struct Stream<'a, F> {
    loader: &'a Loader,
    transform: Arc<F>,
    chw: [usize; 3],
    iter: Option<BatchIter>,
}

impl<F> Stream<'_, F>
where
    F: Fn(&Sample, &mut Rng, &mut [f32]) -> Result<(), et_data::DataError> + Send + Sync + 'static,
{
    fn next(&mut self, st: &mut TrainState) -> Result<Batch, TrainError> {
        loop {
            let iter = self.iter.get_or_insert_with(|| self.loader.epoch_from(st.epoch, st.next_batch, self.chw, self.transform.clone()));
            match iter.next() {
                Some(b) => {
                    st.next_batch += 1;
                    return Ok(b?);
                }
                None => {
                    st.epoch += 1;
                    st.next_batch = 0;
                    self.iter = None;
                }
            }
        }
    }
}

/// Trains from scratch (`resume = None`) or continues the checkpoint `resume` (whose
/// `config` must be `cfg`'s, apart from threads / logging).
pub fn train(cfg: &TrainConfig, resume: Option<(&Path, TrainState)>, on_event: &mut dyn FnMut(&Event)) -> Result<Summary, TrainError> {
    let started = Instant::now();
    validate(cfg)?;
    let s: Setup = setup::prepare(cfg)?;
    let device = s.device.clone();
    let compute_dtype = cfg.precision.dtype();
    let (schedule, n_train, classes) = (&s.schedule, s.train_set.samples.len(), s.classes);
    let effective = cfg.effective_batch.unwrap_or(cfg.batch_size);
    let mut micro = Vec::new();
    let mut accum = Vec::new();
    for (i, st) in schedule.stages.iter().enumerate() {
        let m = st.batch_size.unwrap_or(cfg.batch_size);
        if !effective.is_multiple_of(m) {
            return Err(TrainError::Config(format!("the effective batch {effective} is not a multiple of stage {}'s batch size {m}: change --effective-batch or the batch sizes", i + 1)));
        }
        let fresh = m / st.replay.map_or(1, |r| r.times.max(1));
        if fresh == 0 || n_train < fresh {
            return Err(TrainError::Config(format!("stage {}: {n_train} training images cannot fill a batch of {} fresh images: lower --batch-size", i + 1, fresh.max(1))));
        }
        micro.push(m);
        accum.push(effective / m);
    }
    let stage_steps: Vec<usize> = schedule.stages.iter().map(|st| ((st.epochs * n_train as f64 / effective as f64).round() as usize).max(1)).collect();
    let total_steps: usize = stage_steps.iter().sum();
    check_writable(&cfg.out)?;
    // Final weights + one checkpoint (weights, EMA, two moments), with a margin for the
    // overlap while a new checkpoint replaces the old one.
    let param_bytes = s.params.all().iter().map(|(_, v)| v.elem_count() as u64 * 4).sum::<u64>();
    let copies = 2 + 2 + u64::from(cfg.ema_decay.is_some()) * 2;
    check_space(&cfg.out, param_bytes * copies + param_bytes / 2 + (16 << 20))?;
    s.run_config.save(&cfg.out.join(et_models::run_config::CONFIG_FILE))?;

    let params = s.params.clone();
    let model = &s.model;
    let lr_scales = cfg.layer_decay.map(|d| layer_scales(&params.trainable().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), Family::of_model(&cfg.model), d));
    let scale_of = |n: &str| lr_scales.as_ref().map_or(1.0, |m| m.get(n).copied().unwrap_or(1.0));
    let mut opt = Optimizer::new(params.trainable(), OptimConfig { kind: cfg.optimizer, ..Default::default() }, &scale_of);
    let lr_schedule = CosineSchedule { lr: cfg.lr, min_lr: cfg.min_lr, warmup_lr: cfg.min_lr.min(cfg.lr), warmup: (cfg.warmup_epochs / cfg.epochs).clamp(0.0, 1.0) };
    let wd_schedule = CosineSchedule { lr: cfg.weight_decay, min_lr: cfg.weight_decay_end.unwrap_or(cfg.weight_decay), warmup_lr: cfg.weight_decay, warmup: 0.0 };

    let compute_threads = rayon::current_num_threads();
    let metrics_path = cfg.out.join("metrics.jsonl");
    let resume_dir: Option<PathBuf> = resume.as_ref().map(|(d, _)| d.to_path_buf());
    let (mut st, mut metrics) = match resume {
        None => {
            if let Some(path) = &cfg.init_from {
                let report = params.load(path, s.model_cfg.head_names())?;
                on_event(&Event::Initialised { from: path, loaded: report.loaded, reinitialised: &report.reinitialised });
            }
            (TrainState::fresh(cfg.clone(), schedule.clone(), compute_threads), Metrics::open(&metrics_path, None)?)
        }
        Some((dir, state)) => {
            params.load(&dir.join(WEIGHTS_FILE), &[])?;
            let moments = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), &Device::Cpu)
                .map_err(|e| TrainError::Config(format!("cannot read {}: {e}", dir.join(OPTIMIZER_FILE).display())))?;
            opt.load_state(&moments, state.step as u64)?;
            on_event(&Event::Resumed { from: dir, step: state.step, stage: state.stage, stage_step: state.stage_step });
            let m = Metrics::open(&metrics_path, Some(state.metrics_len))?;
            (state, m)
        }
    };
    // The average starts from the weights training starts from (after --init-from), or
    // is the checkpoint's.
    let ema = match (cfg.ema_decay, &s.ema_params, &s.ema_model) {
        (Some(d), Some(store), Some(m)) => {
            let e = Ema::new(&params, store.clone(), d)?;
            if let Some(dir) = &resume_dir {
                store.load(&dir.join(EMA_FILE), &[])?;
            }
            Some((e, m))
        }
        _ => None,
    };
    on_event(&Event::Plan {
        schedule,
        train_images: n_train,
        val_images: s.val_set.as_ref().map_or(0, |v| v.samples.len()),
        classes,
        params: params.num_trainable(),
        steps: total_steps,
        stage_steps: &stage_steps,
        accum: &accum,
        drop_path: s.drop_path,
    });
    if st.step == 0 && st.stage == 0 {
        metrics.log(json!({"event": "plan", "schedule": schedule, "train_images": n_train, "classes": classes, "params": params.num_trainable(), "steps": total_steps, "stage_steps": &stage_steps, "batch_size": cfg.batch_size, "effective_batch": effective, "lr": cfg.lr, "seed": cfg.seed, "mixup": cfg.mixup, "cutmix": cfg.cutmix, "config": cfg}))?;
    } else {
        metrics.log(json!({"event": "resume", "step": st.step, "stage": st.stage}))?;
    }
    let elapsed_before = st.elapsed_s;
    let pause_at: Option<usize> = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok());
    let mut last_ckpt: Option<PathBuf> = None;

    for si in st.stage..schedule.stages.len() {
        let stage = &schedule.stages[si];
        let stage_start = Instant::now();
        let stage_elapsed_before = st.stage_elapsed_s;
        let r = stage.resolution;
        let replay_times = stage.replay.map_or(1, |rp| rp.times.max(1));
        let fresh = micro[si] / replay_times;
        let loader = Loader::new(
            Arc::new(s.train_set.samples.clone()),
            LoaderConfig { batch_size: fresh, shuffle: true, drop_last: true, seed: cfg.seed, threads: cfg.threads.max(1), prefetch: 2, skip_corrupt: !cfg.strict_data },
        );
        let mut buffer = match stage.replay {
            Some(rp) if rp.times > 1 => Some(ReplayBuffer::new(rp.size, rp.split)),
            _ => None,
        };
        // A checkpoint taken mid-stage holds the stage's replay buffer.
        if let (Some(buf), Some(dir), true) = (&mut buffer, &resume_dir, st.stage_step > 0) {
            *buf = crate::replay_io::load(&dir.join(REPLAY_FILE), buf.capacity() / buf.split(), buf.split())?;
        }
        let mut crop = RandomResizedCrop::new(s.base as u32);
        crop.scale = (cfg.crop_min_scale, 1.0);
        let tf = TrainTransform { base: s.base, resolution: r, crop, hflip: 0.5, randaugment: Some(RandAugment::parse(&policy(stage.magnitude))?), mean: s.mean, std: s.std, erasing: cfg.erasing };
        // Exact crop-aware decode: rows below the crop are never decoded.
        let transform = Arc::new(move |smp: &Sample, rng: &mut Rng, out: &mut [f32]| tf.apply_path_into(&smp.path, rng, false, out));
        let mut stream = Stream { loader: &loader, transform, chw: [3, r, r], iter: None };
        let compute_per_image = (r as f64 / s.base as f64).powi(2) / (n_train as f64 * cfg.epochs);
        let mut window = (Instant::now(), 0usize);
        let mut recent: Vec<f64> = Vec::new();
        let mut stage_skipped = 0usize;
        while st.stage_step < stage_steps[si] {
            let mut grads: Option<Grads> = None;
            let mut step_loss = 0.0;
            let mut step_images = 0usize;
            for k in 0..accum[si] {
                // A batch whose every image was unreadable is skipped whole.
                let mut batch = loop {
                    let b = stream.next(&mut st)?;
                    for (path, reason) in &b.skipped {
                        st.skipped += 1;
                        stage_skipped += 1;
                        on_event(&Event::Skipped { path, reason });
                    }
                    if !b.labels.is_empty() {
                        break b;
                    }
                };
                let key = |stream_id: u64| if k == 0 { Rng::from_keys(&[cfg.seed, st.step as u64, stream_id]) } else { Rng::from_keys(&[cfg.seed, st.step as u64, stream_id, k as u64]) };
                let (mut images, labels, shape) = match &mut buffer {
                    Some(buf) => buf.step_batch(&batch.images, batch.shape, &batch.labels, replay_times, &mut key(0x7270))?,
                    None => (std::mem::take(&mut batch.images), batch.labels.clone(), batch.shape),
                };
                let n = labels.len();
                let targets = if s.mix.enabled() {
                    let soft = mixup::apply(&s.mix, &mut images, shape, &labels, &mut key(0x6d78));
                    Tensor::from_vec(soft, (n, classes), &device)?
                } else {
                    smoothed_targets(&labels, classes, cfg.label_smoothing, &device)?
                };
                let x = Tensor::from_vec(images, shape.as_slice(), &device)?.to_dtype(compute_dtype)?;
                let ops = CandleOps::training(key(0x6470).next_u64(), &device, x.dtype());
                let cast = s.cast_model(cfg.precision)?;
                let logits = ops.loss_input(&cast.as_ref().unwrap_or(model).forward(&ops, &x)?)?;
                // The loss is reduced in f32 whatever the compute precision.
                let loss = soft_cross_entropy(&logits.to_dtype(candle_core::DType::F32)?, &targets)?;
                let loss_v = loss.to_scalar::<f32>()? as f64;
                if !loss_v.is_finite() {
                    metrics.log(json!({"event": "error", "step": st.step, "stage": si, "loss": loss_v.to_string()}))?;
                    let last = last_ckpt.clone().or_else(|| checkpoint::locate(&cfg.out).ok());
                    return Err(TrainError::NonFinite { step: st.step, stage: si, loss: loss_v, last_checkpoint: last });
                }
                let (g, missing) = Grads::accumulate(grads.take(), &opt.params, &ops.backward(&loss)?, 1.0 / accum[si] as f32)?;
                if !missing.is_empty() {
                    return Err(TrainError::Internal(format!("no gradient reached {}", missing.join(", "))));
                }
                grads = Some(g);
                params.apply_buffer_updates(ops.take_buffer_updates())?;
                step_loss += loss_v / accum[si] as f64;
                step_images += n;
            }
            let mut grads = grads.expect("at least one micro-batch");
            if let Some(max) = cfg.clip_grad {
                grads.clip_norm(max);
            }
            let progress = st.progress();
            let lr = lr_schedule.at(progress);
            opt.step(&grads, lr, wd_schedule.at(progress))?;
            if let Some((e, _)) = &ema {
                e.update()?;
            }
            st.set_progress(progress + step_images as f64 * compute_per_image);
            st.step += 1;
            st.stage_step += 1;
            st.stage_images += step_images;
            st.add_stage_loss(step_loss);
            window.1 += step_images;
            recent.push(step_loss);
            let stage_done = st.stage_step == stage_steps[si];
            if st.step % cfg.log_every.max(1) == 0 || stage_done {
                let img_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                let mean_loss = recent.iter().sum::<f64>() / recent.len() as f64;
                let elapsed = elapsed_before + started.elapsed().as_secs_f64();
                let p = st.progress();
                let eta_s = if p > 0.0 { elapsed * (1.0 - p.min(1.0)) / p } else { 0.0 };
                on_event(&Event::Step { stage: si, stages: schedule.stages.len(), resolution: r, magnitude: stage.magnitude, step: st.step, steps: total_steps, loss: mean_loss, lr, img_per_s, eta_s, progress: p });
                metrics.log(json!({"event": "step", "step": st.step, "stage": si, "resolution": r, "loss": mean_loss, "lr": lr, "progress": p, "img_per_s": img_per_s, "time_s": elapsed}))?;
                window = (Instant::now(), 0);
                recent.clear();
            }
            if cfg.save_every_steps > 0 && st.step % cfg.save_every_steps == 0 && !stage_done {
                st.stage_elapsed_s = stage_elapsed_before + stage_start.elapsed().as_secs_f64();
                st.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                let dir = save_checkpoint(cfg, &mut st, &mut metrics, &params, &opt, ema.as_ref().map(|e| &e.0), buffer.as_ref())?;
                on_event(&Event::Checkpoint { dir: &dir, step: st.step });
                last_ckpt = Some(dir);
            }
            if pause_at == Some(st.step) {
                test_pause(&cfg.out, st.step);
            }
        }
        let val_start = Instant::now();
        let (val_top1, val_top5) = match &s.val_set {
            Some(val) => {
                let (t1, t5, sk) = setup::evaluate(val, &s, model, cfg)?;
                st.skipped += sk;
                stage_skipped += sk;
                (Some(t1), Some(t5))
            }
            None => (None, None),
        };
        let ema_top1 = match (&s.val_set, &ema) {
            (Some(val), Some((_, ema_model))) => Some(setup::evaluate(val, &s, ema_model, cfg)?.0),
            _ => None,
        };
        (st.val_top1, st.val_top5, st.ema_top1) = (val_top1, val_top5, ema_top1);
        let val_seconds = val_start.elapsed().as_secs_f64();
        params.save(&cfg.out.join(WEIGHTS_FILE))?;
        if let Some((e, _)) = &ema {
            e.store.save(&cfg.out.join(EMA_FILE))?;
        }
        let seconds = stage_elapsed_before + stage_start.elapsed().as_secs_f64();
        let mean_loss = st.stage_loss_sum() / st.stage_step.max(1) as f64;
        on_event(&Event::StageEnd { stage: si, resolution: r, seconds, val_top1, val_top5, ema_top1, mean_loss, skipped: stage_skipped });
        metrics.log(json!({"event": "stage_end", "stage": si, "resolution": r, "magnitude": stage.magnitude, "seconds": seconds, "val_seconds": val_seconds, "val_top1": val_top1, "val_top5": val_top5, "ema_top1": ema_top1, "train_loss": mean_loss, "progress": st.progress(), "skipped": stage_skipped, "step": st.step}))?;
        let curves = crate::plot::read_metrics(&metrics_path, &schedule.name)?;
        crate::plot::write_png(&[curves], &cfg.out.join("training.png"))?;
        // The next stage starts a fresh epoch (as the loader's position is per stage).
        if st.next_batch > 0 {
            st.epoch += 1;
            st.next_batch = 0;
        }
        st.stage_seconds.push(seconds);
        st.stage = si + 1;
        st.stage_step = 0;
        st.stage_images = 0;
        st.stage_loss_sum_bits = 0f64.to_bits();
        st.stage_elapsed_s = 0.0;
        st.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let dir = save_checkpoint(cfg, &mut st, &mut metrics, &params, &opt, ema.as_ref().map(|e| &e.0), None)?;
        on_event(&Event::Checkpoint { dir: &dir, step: st.step });
        last_ckpt = Some(dir);
    }
    let seconds = elapsed_before + started.elapsed().as_secs_f64();
    let stages: Vec<(usize, f64)> = schedule.stages.iter().map(|x| x.resolution).zip(st.stage_seconds.iter().copied()).collect();
    let summary = Summary { seconds, val_top1: st.val_top1, val_top5: st.val_top5, ema_top1: st.ema_top1, steps: st.step, skipped: st.skipped, stages };
    metrics.log(json!({"event": "done", "seconds": seconds, "val_top1": summary.val_top1, "val_top5": summary.val_top5, "ema_top1": summary.ema_top1, "steps": st.step, "skipped": st.skipped, "stage_seconds": &st.stage_seconds}))?;
    Ok(summary)
}

/// Test hook: after this optimiser step the process announces itself in the run directory
/// and waits forever, so a test can SIGKILL it at a known point mid-stage.
pub const PAUSE_ENV: &str = "ET_TRAIN_TEST_PAUSE_AT_STEP";

fn test_pause(out: &Path, step: usize) -> ! {
    let _ = std::fs::write(out.join(format!(".paused-at-step-{step}")), b"");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn save_checkpoint(cfg: &TrainConfig, st: &mut TrainState, metrics: &mut Metrics, params: &ParamStore, opt: &Optimizer, ema: Option<&Ema>, replay: Option<&ReplayBuffer>) -> Result<PathBuf, TrainError> {
    st.metrics_len = metrics.position()?;
    let write = |dir: &Path| -> Result<(), TrainError> {
        params.save(&dir.join(WEIGHTS_FILE))?;
        et_models::params::save_tensors(&opt.state_tensors()?, &dir.join(OPTIMIZER_FILE))?;
        if let Some(e) = ema {
            e.store.save(&dir.join(EMA_FILE))?;
        }
        if let Some(buf) = replay {
            crate::replay_io::save(buf, &dir.join(REPLAY_FILE))?;
        }
        Ok(())
    };
    checkpoint::save(&cfg.out, st, &write)
}
