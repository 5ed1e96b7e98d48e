//! The training loop: the stages of the curriculum, optimiser steps made of one or more
//! micro-batches (gradient accumulation to a fixed effective batch), the EMA, validation
//! and a checkpoint at every stage end (and every `save_every_steps`), `metrics.jsonl`
//! throughout. A run resumed from a checkpoint continues exactly (`checkpoint.rs`).
//!
//! In a data-parallel job every rank runs this loop on its share of each batch; the ranks
//! meet in the collectives of `dist_sync.rs`, and rank 0 alone writes files.

mod input;
mod stage_end;

use crate::checkpoint::{self, TrainState, EMA_FILE, OPTIMIZER_FILE};
use crate::config::{validate, TrainConfig};
use crate::dist_sync::{average_grads, broadcast_optimizer, broadcast_vars, check_same_settings, DeviceSum, GpuComm};
use crate::ema::Ema;
use crate::layer_decay::layer_scales;
use crate::optim::{OptimConfig, Optimizer};
use crate::pipeline::{policy, TrainTransform};
use crate::plan::Plan;
use crate::run_io::{check_space, check_writable, Metrics};
use crate::schedule::{Schedule, Stage};
use crate::setup::{model_plan, Data, Network};
use crate::step::{EmaNet, Learner};
use crate::upload::Uploader;
use crate::TrainError;
use candle_core::{Device, Tensor};
use input::{Ahead, SampleTransform, Stream};
use et_data::evaluation::Preprocess;
use et_data::loader::{Item, Loader, LoaderConfig, Shard};
use et_data::mixup::MixupConfig;
use et_data::randaugment::RandAugment;
use et_data::replay::ReplayBuffer;
use et_data::resample::Filter;
use et_data::transform::RandomResizedCrop;
use et_data::Rng;
use et_dist::Collective;
use et_kernels::device::DeviceSpec;
use et_models::RunConfig;
use et_runfiles::{CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What the loop reports to its caller (the CLI prints these).
#[derive(Debug)]
pub enum Event<'a> {
    Plan { plan: &'a Plan, train_images: usize, val_images: usize, classes: usize, params: usize, drop_path: f64 },
    Resumed { from: &'a Path, step: usize, stage: usize, stage_step: usize },
    Step { stage: usize, stages: usize, resolution: usize, magnitude: f64, step: usize, steps: usize, loss: f64, lr: f64, img_per_s: f64, eta_s: f64, progress: f64 },
    StageEnd { stage: usize, resolution: usize, seconds: f64, val_top1: Option<f64>, val_top5: Option<f64>, ema_top1: Option<f64>, mean_loss: f64, skipped: usize },
    Checkpoint { dir: &'a Path, step: usize },
    Skipped { path: &'a Path, reason: &'a str },
    Initialised { from: &'a Path, loaded: usize, reinitialised: &'a [String] },
    /// A note on the data: shards indexed by reading them, empty shards.
    Data { note: &'a str },
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

/// Trains from scratch (`resume = None`) or continues the checkpoint `resume` (whose
/// `config` must be `cfg`'s, apart from threads, logging and device), as one process.
pub fn train(cfg: &TrainConfig, resume: Option<(&Path, TrainState)>, on_event: &mut dyn FnMut(&Event)) -> Result<Summary, TrainError> {
    Trainer::new(Arc::new(et_dist::Solo), cfg, resume, on_event)?.run()
}

/// A stage in progress.
struct StageRun {
    index: usize,
    stream: Stream,
    replay: Option<ReplayBuffer>,
    started: Instant,
    elapsed_before: f64,
    /// Compute progress per image of this stage's resolution.
    compute_per_image: f64,
    window: (Instant, usize),
    recent: Vec<f64>,
    skipped: usize,
    /// What the loader produced, as logged: the last batch's shape (N, C, H, W) and the
    /// RandAugment magnitude of the transform it ran.
    input: Vec<usize>,
    magnitude: f64,
    /// The next micro-batch, prepared during the current one.
    ahead: Option<Ahead>,
    /// Losses of steps not yet read from the device, in order.
    unread: Vec<StepLosses>,
}

/// The micro-batch losses of one step, still on the device.
struct StepLosses {
    step: usize,
    losses: Vec<Tensor>,
}

pub struct Trainer<'e> {
    comm: Arc<dyn Collective>,
    cfg: TrainConfig,
    data: Data,
    plan: Plan,
    learner: Learner,
    mix: MixupConfig,
    pre: Preprocess,
    state: TrainState,
    metrics: Metrics,
    on_event: &'e mut dyn FnMut(&Event),
    started: Instant,
    elapsed_before: f64,
    resume_dir: Option<PathBuf>,
    last_checkpoint: Option<PathBuf>,
    uploader: Uploader,
    look_ahead: bool,
    /// NCCL between the job's GPUs, where it has them.
    gpu: Option<GpuComm>,
}

impl<'e> Trainer<'e> {
    /// Checks everything cheap first (settings, data, plan, output directory), builds the
    /// model, and initialises it (`--init-from`) or restores the checkpoint. In a job of
    /// several ranks (`comm`), `resume`'s state is every rank's; only rank 0 reads files.
    pub fn new(comm: Arc<dyn Collective>, cfg: &TrainConfig, resume: Option<(&Path, TrainState)>, on_event: &'e mut dyn FnMut(&Event)) -> Result<Self, TrainError> {
        let started = Instant::now();
        validate(cfg)?;
        check_same_settings(comm.as_ref(), cfg)?;
        let (root, world) = (comm.is_root(), comm.world());
        let data = Data::open(cfg, &mut |note: &str| on_event(&Event::Data { note }))?;
        if data.train.len() < cfg.optim.batch_size {
            return Err(TrainError::Config(format!("the training set has {} images, fewer than --batch-size {}: lower --batch-size", data.train.len(), cfg.optim.batch_size)));
        }
        let family = et_models::registry::family(&cfg.model.model)?;
        let schedule = Schedule::resolve(&cfg.schedule.schedule, family.etpp_resolutions(), data.base, cfg.schedule.epochs).map_err(TrainError::Config)?;
        let mp = model_plan(cfg, &data, &schedule)?;
        let plan = Plan::new(cfg, &schedule, data.train.len(), world)?;
        if cfg.run.device == DeviceSpec::Cpu && et_kernels::cpu::memory_check_enabled() {
            crate::setup::check_memory(cfg, &mp, &plan, world, et_kernels::cpu::available_memory())?;
        }
        let out = &cfg.run.out;
        // Each rank of a job takes the GPU of its place on its machine.
        let spec = match cfg.run.device {
            DeviceSpec::Cuda(_) if world > 1 => DeviceSpec::Cuda(comm.local_rank()),
            d => d,
        };
        let device = spec.open().map_err(|e| TrainError::Config(e.to_string()))?;
        let net = Network::new(mp.family, mp.config.clone(), cfg.run.seed, &device)?;
        if root {
            check_writable(out)?;
            // The final weights and one checkpoint (weights, EMA, two moments), with a margin
            // for the overlap while a new checkpoint replaces the old one.
            let param_bytes = net.params.all().iter().map(|(_, v)| v.elem_count() as u64 * 4).sum::<u64>();
            let copies = 2 + 2 + u64::from(cfg.optim.ema_decay.is_some()) * 2;
            check_space(out, param_bytes * copies + param_bytes / 2 + (16 << 20))?;
            mp.run_config.save(&out.join(CONFIG_FILE))?;
        }
        let learner = build_learner(cfg, net, &device)?;
        let p = mp.family.preprocessing();
        let mix = MixupConfig { mixup_alpha: cfg.data.mixup, cutmix_alpha: cfg.data.cutmix, switch_prob: cfg.data.mixup_switch_prob, prob: cfg.data.mixup_prob, label_smoothing: cfg.optim.label_smoothing, num_classes: data.classes() };
        let pre = Preprocess { mean: p.mean, std: p.std, crop_pct: mp.run_config.crop_pct, filter: Filter::Bicubic };
        let metrics_path = out.join(METRICS_FILE);
        let open_metrics = |keep: Option<u64>| if root { Metrics::open(&metrics_path, keep) } else { Ok(Metrics::discard()) };
        let compute_threads = rayon::current_num_threads();
        let (state, metrics, elapsed_before, resume_dir) = match resume {
            None => (TrainState::fresh(cfg.clone(), schedule, compute_threads), open_metrics(None)?, 0.0, None),
            Some((dir, st)) => {
                let m = open_metrics(Some(st.metrics_len))?;
                let e = st.elapsed_s;
                (st, m, e, Some(dir.to_path_buf()))
            }
        };
        let (look_ahead, uploader) = input::prefetch(&device)?;
        let gpu = GpuComm::open(comm.as_ref(), &device)?;
        let mut t = Trainer { comm, cfg: cfg.clone(), data, plan, learner, mix, pre, state, metrics, on_event, started, elapsed_before, resume_dir, last_checkpoint: None, uploader, look_ahead, gpu };
        t.initialise(mp.run_config, mp.drop_path)?;
        Ok(t)
    }

    /// Weights from `--init-from` or the checkpoint (read on rank 0, then broadcast with
    /// the EMA and the optimiser state), the EMA's start, the plan reported.
    fn initialise(&mut self, run_config: RunConfig, drop_path: f64) -> Result<(), TrainError> {
        let root = self.comm.is_root();
        match self.resume_dir.clone() {
            None => {
                if let (Some(path), true) = (self.cfg.model.init_from.clone(), root) {
                    let report = self.learner.params.load(&path, &run_config.model_config.head_names())?;
                    (self.on_event)(&Event::Initialised { from: &path, loaded: report.loaded, reinitialised: &report.reinitialised });
                }
            }
            Some(dir) => {
                if root {
                    self.learner.params.load(&dir.join(WEIGHTS_FILE), &[])?;
                    let file = dir.join(OPTIMIZER_FILE);
                    let moments = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| TrainError::Config(format!("cannot read {}: {e}", file.display())))?;
                    self.learner.opt.load_state(&moments, self.state.step as u64)?;
                }
                let st = &self.state;
                (self.on_event)(&Event::Resumed { from: &dir, step: st.step, stage: st.stage, stage_step: st.stage_step });
            }
        }
        let comm = self.comm.clone();
        broadcast_vars(comm.as_ref(), &self.learner.params.all())?;
        broadcast_optimizer(comm.as_ref(), &mut self.learner.opt)?;
        // The average starts from the weights training starts from, or is the checkpoint's.
        if let Some(e) = &mut self.learner.ema {
            e.ema.reset_to_live()?;
            if let (Some(dir), true) = (&self.resume_dir, root) {
                e.ema.store.load(&dir.join(EMA_FILE), &[])?;
            }
            broadcast_vars(comm.as_ref(), &e.ema.store.all())?;
        }
        self.report_plan(drop_path)
    }

    fn report_plan(&mut self, drop_path: f64) -> Result<(), TrainError> {
        let val_images = self.data.val.as_ref().map_or(0, |v| v.len());
        let (train_images, classes, params) = (self.data.train.len(), self.data.classes(), self.learner.params.num_trainable());
        (self.on_event)(&Event::Plan { plan: &self.plan, train_images, val_images, classes, params, drop_path });
        let (st, c, p) = (&self.state, &self.cfg, &self.plan);
        if st.step == 0 && st.stage == 0 {
            let stage_steps: Vec<usize> = p.stages.iter().map(|s| s.steps).collect();
            self.metrics.log(json!({"event": "plan", "schedule": &p.schedule, "train_images": train_images, "classes": classes, "params": params, "steps": p.total_steps, "stage_steps": stage_steps, "batch_size": c.optim.batch_size, "effective_batch": p.effective_batch, "lr": c.optim.lr, "seed": c.run.seed, "mixup": c.data.mixup, "cutmix": c.data.cutmix, "config": c}))
        } else {
            self.metrics.log(json!({"event": "resume", "step": st.step, "stage": st.stage}))
        }
    }

    /// Runs the remaining stages and returns the summary.
    pub fn run(mut self) -> Result<Summary, TrainError> {
        for si in self.state.stage..self.plan.schedule.stages.len() {
            let mut stage = self.start_stage(si)?;
            while self.state.stage_step < self.plan.stages[si].steps {
                self.step(&mut stage)?;
            }
            self.end_stage(stage)?;
        }
        self.finish()
    }

    fn stage(&self, si: usize) -> &Stage {
        &self.plan.schedule.stages[si]
    }

    /// The loader, per-image transform and replay buffer of stage `si`.
    fn start_stage(&mut self, si: usize) -> Result<StageRun, TrainError> {
        let (c, st, base) = (&self.cfg, self.stage(si), self.data.base);
        let r = st.resolution;
        let loader = Loader::new(
            self.data.train.clone(),
            LoaderConfig {
                batch_size: self.plan.stages[si].fresh_per_rank,
                shuffle: true,
                drop_last: true,
                seed: c.run.seed,
                threads: c.data.threads.max(1),
                prefetch: 2,
                skip_corrupt: !c.data.strict_data,
                shard: Shard { rank: self.comm.rank(), world: self.comm.world() },
                shuffle_buffer: c.data.shuffle_buffer,
            },
        );
        let mut replay = match st.replay {
            Some(rp) if rp.times > 1 => Some(ReplayBuffer::new(rp.size, rp.split)),
            _ => None,
        };
        // A checkpoint taken mid-stage holds the stage's replay buffers (one per rank).
        if let (Some(buf), Some(dir), true) = (&mut replay, self.resume_dir.clone(), self.state.stage_step > 0) {
            self.restore_replay(buf, &dir)?;
        }
        let mut crop = RandomResizedCrop::new(base as u32);
        crop.scale = (c.data.crop_min_scale, 1.0);
        let ra = RandAugment::parse(&policy(st.magnitude))?;
        let magnitude = ra.magnitude;
        let low_freq = st.low_freq.unwrap_or(c.data.low_freq);
        let tf = TrainTransform { resolution: r, crop, low_freq, hflip: 0.5, randaugment: Some(ra), mean: self.pre.mean, std: self.pre.std, erasing: c.data.erasing };
        // Crop-aware decode: rows below the crop are never decoded; exact in fft mode, at a
        // DCT scale for the stage's resolution in resize mode.
        let transform: Arc<SampleTransform> = Arc::new(move |item: &Item, rng: &mut Rng, out: &mut [f32]| tf.apply_item_into(item, rng, false, out));
        let compute_per_image = (r as f64 / base as f64).powi(2) / (self.data.train.len() as f64 * c.schedule.epochs);
        Ok(StageRun {
            index: si,
            stream: Stream { loader, transform, chw: [3, r, r], iter: None },
            replay,
            started: Instant::now(),
            elapsed_before: self.state.stage_elapsed_s,
            compute_per_image,
            window: (Instant::now(), 0),
            recent: Vec::new(),
            skipped: 0,
            input: Vec::new(),
            magnitude,
            ahead: None,
            unread: Vec::new(),
        })
    }

    /// One optimiser step: the stage's micro-batches, then the update. The step's loss is
    /// read from the device only where it is needed (a log line, a checkpoint, the stage's
    /// end, a collective; every step on the CPU, where reading costs nothing), so that a GPU
    /// is not made to wait every step.
    fn step(&mut self, stage: &mut StageRun) -> Result<(), TrainError> {
        let accum = self.plan.stages[stage.index].accumulation;
        let (step, mut step_images, mut losses) = (self.state.step, 0usize, Vec::with_capacity(accum));
        for k in 0..accum {
            let input = self.take_input(stage, step, k)?;
            stage.input = input.shape;
            let batch = input.pending.wait()?;
            let seed = step_rng(self.cfg.run.seed, step, 0x6470 ^ self.rank_key(), k).next_u64();
            let mb = self.learner.micro_batch(&batch.x, &batch.targets, seed, 1.0 / accum as f32)?;
            losses.push(mb.loss);
            step_images += input.images;
            // The next micro-batch's host work and copy while this one computes.
            if k + 1 < accum && self.look_ahead {
                stage.ahead = Some(self.prepare(stage, step, k + 1)?);
            }
        }
        // Over all ranks: the mean gradient and loss of the global batch (the loss is the
        // global batch's: ranks hold equal shares of it).
        let comm = self.comm.clone();
        let step_loss = if comm.world() > 1 { Some(self.read_losses(stage.index, step, &losses)?) } else { None };
        let grads = self.learner.grads_mut().ok_or_else(|| TrainError::Internal("an optimiser step without a micro-batch".into()))?;
        let gpu_sum = self.gpu.as_ref().map(|g| move |t: &Tensor| g.sum(t));
        let device_sum = gpu_sum.as_ref().map(|f| f as DeviceSum);
        let (step_loss, step_images) = average_grads(comm.as_ref(), device_sum, grads, step_loss.unwrap_or(0.0), step_images)?;
        let progress = self.state.progress();
        let lr = self.plan.lr.at(progress);
        self.learner.update(lr, self.plan.wd.at(progress), self.cfg.optim.clip_grad)?;
        let st = &mut self.state;
        st.set_progress(progress + step_images as f64 * stage.compute_per_image);
        st.step += 1;
        st.stage_step += 1;
        st.stage_images += step_images;
        stage.window.1 += step_images;
        let stage_done = st.stage_step == self.plan.stages[stage.index].steps;
        let log = st.step.is_multiple_of(self.cfg.run.log_every.max(1)) || stage_done;
        let every = self.cfg.run.save_every_steps;
        let save = every > 0 && st.step.is_multiple_of(every) && !stage_done;
        if comm.world() > 1 {
            self.add_step_loss(stage, step_loss);
        } else {
            stage.unread.push(StepLosses { step, losses });
        }
        // A checkpoint must hold the loader position and replay buffer of its own steps.
        if self.look_ahead && !stage_done && !save {
            stage.ahead = Some(self.prepare(stage, self.state.step, 0)?);
        }
        if log || save || stage_done || self.learner.device.is_cpu() {
            self.settle(stage)?;
        }
        if log {
            self.log_step(stage, lr)?;
        }
        if save {
            self.state.stage_elapsed_s = stage.elapsed_before + stage.started.elapsed().as_secs_f64();
            self.checkpoint(stage.replay.as_ref())?;
        }
        Ok(())
    }

    /// The mean loss of a step's micro-batches, read from the device; a non-finite one
    /// stops the run.
    fn read_losses(&mut self, stage: usize, step: usize, losses: &[Tensor]) -> Result<f64, TrainError> {
        let values: Vec<f32> = match losses {
            [] => Vec::new(),
            _ => Tensor::stack(losses, 0)?.to_vec1()?,
        };
        let mut step_loss = 0.0;
        for v in values {
            if !v.is_finite() {
                return Err(self.non_finite(stage, step, v as f64));
            }
            step_loss += v as f64 / losses.len() as f64;
        }
        Ok(step_loss)
    }

    /// Reads the losses of the steps run since the last read, in order, into the stage's
    /// totals.
    fn settle(&mut self, stage: &mut StageRun) -> Result<(), TrainError> {
        for s in std::mem::take(&mut stage.unread) {
            let loss = self.read_losses(stage.index, s.step, &s.losses)?;
            self.add_step_loss(stage, loss);
        }
        Ok(())
    }

    fn add_step_loss(&mut self, stage: &mut StageRun, loss: f64) {
        self.state.add_stage_loss(loss);
        stage.recent.push(loss);
    }

    fn non_finite(&mut self, stage: usize, step: usize, loss: f64) -> TrainError {
        if let Err(e) = self.metrics.log(json!({"event": "error", "step": step, "stage": stage, "loss": loss.to_string()})) {
            return e;
        }
        let last = self.last_checkpoint.clone().or_else(|| checkpoint::locate(&self.cfg.run.out).ok().map(|l| l.dir));
        TrainError::NonFinite { step, stage, loss, last_checkpoint: last }
    }

    /// What random draws of this rank mix into their keys: nothing in a world of one (so
    /// that its runs stay as they were), the rank otherwise (ranks draw independently).
    fn rank_key(&self) -> u64 {
        if self.comm.world() == 1 {
            0
        } else {
            (self.comm.rank() as u64 + 1) << 32
        }
    }

    /// This rank's replay buffer from a mid-stage checkpoint (rank 0 reads every rank's and
    /// broadcasts them). A checkpoint of another world size has other buffers: the stage
    /// goes on with empty ones, as a new stage would.
    fn restore_replay(&self, buf: &mut ReplayBuffer, dir: &Path) -> Result<(), TrainError> {
        let (comm, saved) = (self.comm.clone(), self.state.world);
        if saved != comm.world() {
            return Ok(());
        }
        let (size, split) = (buf.capacity() / buf.split(), buf.split());
        for r in 0..saved {
            let file = dir.join(stage_end::replay_file(r, saved));
            let mut bytes = if comm.is_root() { std::fs::read(&file).map_err(|e| TrainError::Config(format!("cannot read {}: {e}", file.display())))? } else { Vec::new() };
            comm.broadcast(&mut bytes, 0)?;
            if r == comm.rank() {
                *buf = crate::replay_io::from_bytes(&bytes, size, split, &file.display().to_string())?;
            }
        }
        Ok(())
    }

    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    fn log_step(&mut self, stage: &mut StageRun, lr: f64) -> Result<(), TrainError> {
        let img_per_s = stage.window.1 as f64 / stage.window.0.elapsed().as_secs_f64().max(1e-9);
        let loss = stage.recent.iter().sum::<f64>() / stage.recent.len() as f64;
        let (elapsed, p) = (self.elapsed(), self.state.progress());
        let eta_s = if p > 0.0 { elapsed * (1.0 - p.min(1.0)) / p } else { 0.0 };
        let (si, step) = (stage.index, self.state.step);
        let (resolution, magnitude) = (self.stage(si).resolution, self.stage(si).magnitude);
        let (stages, steps) = (self.plan.stages.len(), self.plan.total_steps);
        (self.on_event)(&Event::Step { stage: si, stages, resolution, magnitude, step, steps, loss, lr, img_per_s, eta_s, progress: p });
        self.metrics.log(json!({"event": "step", "step": step, "stage": si, "resolution": resolution, "loss": loss, "lr": lr, "progress": p, "img_per_s": img_per_s, "time_s": elapsed, "input": &stage.input, "randaugment_magnitude": stage.magnitude}))?;
        stage.window = (Instant::now(), 0);
        stage.recent.clear();
        Ok(())
    }

}

/// Every random draw of a step (replay, mixing, drop path) is keyed by (seed, step,
/// stream[, micro-batch k > 0]), so a resumed run draws the same.
fn step_rng(seed: u64, step: usize, stream: u64, k: usize) -> Rng {
    if k == 0 {
        Rng::from_keys(&[seed, step as u64, stream])
    } else {
        Rng::from_keys(&[seed, step as u64, stream, k as u64])
    }
}

/// The optimiser (with layer-wise lr scales) and the EMA twin around the network.
fn build_learner(cfg: &TrainConfig, net: Network, device: &Device) -> Result<Learner, TrainError> {
    let scales = cfg.optim.layer_decay.map(|d| layer_scales(net.family, &net.params.trainable_in_creation_order(), d));
    let scale_of = |n: &str| scales.as_ref().map_or(1.0, |m| m.get(n).copied().unwrap_or(1.0));
    let opt = Optimizer::new(net.params.trainable(), OptimConfig { kind: cfg.optim.optimizer, ..Default::default() }, &scale_of)?;
    let ema = match cfg.optim.ema_decay {
        Some(d) => {
            let twin = Network::new(net.family, net.config.clone(), cfg.run.seed, device)?;
            Some(EmaNet { ema: Ema::new(&net.params, twin.params, d)?, model: twin.model })
        }
        None => None,
    };
    Ok(Learner::new(net.params, net.model, net.config, opt, ema, device.clone(), cfg.run.precision))
}
