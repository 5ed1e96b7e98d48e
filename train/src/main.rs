// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again. mimalloc keeps them (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser};
use et_dist::Collective;
use et_train::config::{TrainConfig, TrainLayer};
use et_train::dist_sync::broadcast_json;
use et_train::trainer::{Event, Trainer};
use et_train::{checkpoint, dry_run, presets};
use std::sync::Arc;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Train a vision backbone with the EfficientTrain++ curriculum: early stages see only the
/// low-frequency content of each image (Fourier-domain cropping to a smaller input) and weak
/// RandAugment; both grow stage by stage. With no arguments it trains ConvNeXt-atto on the
/// CIFAR-10 subset bundled in assets/cifar10-mini.
///
/// Settings resolve as defaults < --preset < the command line; --dry-run shows the result.
#[derive(Parser, Debug)]
#[command(name = "et-train", version)]
struct Cli {
    #[command(flatten)]
    settings: TrainLayer,
    /// Start from the official ImageNet recipe of a model (convnext_*, resnet*, deit_*,
    /// swin_*, CSWin tiny and small): optimiser, lr 4e-3 at an effective batch of 4096
    /// scaled linearly, warm-up, drop path scaled by the budget, EMA, clipping,
    /// Mixup/CutMix, random erasing; it also names the model. Flags given win.
    #[arg(long, value_name = "MODEL", help_heading = "Run")]
    preset: Option<String>,
    /// Continue the run whose directory (or checkpoint directory) is DIR with its saved
    /// settings; only --threads, --log-every and --device may be given with it.
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    resume: Option<PathBuf>,
    /// With --init-from OWNER/NAME: use the local Hub cache only, no network.
    #[arg(long, help_heading = "Model")]
    offline: bool,
    /// Print the resolved settings, the stage plan (and layer-decay groups) and exit: nothing
    /// is trained or written.
    #[arg(long, help_heading = "Run")]
    dry_run: bool,
    /// With --dry-run: print one JSON object (settings, stages, layer_decay).
    #[arg(long, requires = "dry_run", help_heading = "Run")]
    json: bool,
    /// Accepted for older command lines: skipping unreadable images is the default.
    #[arg(long, hide = true)]
    skip_corrupt: bool,
}

/// `--help` shows each setting's default, taken from the one definition of the settings.
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for (id, default) in TrainLayer::help_defaults() {
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {default}]"))
        });
    }
    cmd
}

fn main() -> ExitCode {
    // A file-size limit (a quota) then makes a write fail with an error we report, instead of
    // SIGXFSZ killing the process mid-checkpoint.
    // SAFETY: sets a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Joins the job when an MPI launcher started this process (a world of one otherwise).
    let comm = match et_dist::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("et-train: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli, comm.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if comm.world() > 1 => {
            // The other ranks would wait for this one in their next collective: end the job.
            eprintln!("et-train: rank {} of {}: error: {e:#}", comm.rank(), comm.world());
            comm.abort(2)
        }
        Err(e) => {
            eprintln!("et-train: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Pins the compute pools (rayon, and candle's own) to `n` threads; nothing has started
/// threads yet.
fn pin_threads(n: usize) -> Result<()> {
    et_kernels::cpu::configure(Some(n)).map_err(|e| anyhow::anyhow!("cannot set up {n} compute threads: {e}"))
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The settings of a resumed run: the checkpoint's, with the few that may change.
fn resumed(cli: &Cli, dir: &std::path::Path) -> Result<(TrainConfig, PathBuf, checkpoint::TrainState)> {
    let mut rest = cli.settings.clone();
    let mut allowed = TrainLayer::default();
    allowed.data.threads = rest.data.threads.take();
    allowed.run.log_every = rest.run.log_every.take();
    allowed.run.device = rest.run.device.take();
    let mut extra: Vec<String> = rest.given().iter().map(|f| format!("--{}", f.replace('_', "-"))).collect();
    extra.extend(cli.preset.as_ref().map(|_| "--preset".to_string()));
    if !extra.is_empty() {
        anyhow::bail!("--resume continues with the run's saved settings: drop {}", extra.join(", "));
    }
    let found = checkpoint::locate(dir)?;
    for d in &found.damaged {
        eprintln!("et-train: passing over a damaged checkpoint: {d}");
    }
    let (ckpt, state) = (found.dir, found.state);
    let mut cfg = state.config.clone();
    allowed.apply_to(&mut cfg);
    if let Some(run_dir) = checkpoint::run_dir_of(&ckpt) {
        cfg.run.out = run_dir;
    }
    Ok((cfg, ckpt, state))
}

fn run(cli: Cli, comm: Arc<dyn Collective>) -> Result<()> {
    if let Some(dir) = &cli.resume {
        // Rank 0 reads the checkpoint's state; every rank continues from it.
        let mine = if comm.is_root() { Some(resumed(&cli, dir)?) } else { None };
        let (cfg, ckpt, state): (TrainConfig, PathBuf, checkpoint::TrainState) = broadcast_json(comm.as_ref(), mine.as_ref())?;
        if cfg.run.deterministic {
            pin_threads(state.compute_threads)?;
        }
        return train_and_report(comm, &cfg, Some((ckpt, state)));
    }
    let default_data = TrainConfig::default().data.data;
    if cli.settings.data.data.is_none() && !default_data.exists() {
        anyhow::bail!("the bundled dataset {} is not in the current directory: run from the repository root or pass --data DIR", default_data.display());
    }
    let preset = cli.preset.as_deref().map(presets::preset).transpose().map_err(anyhow::Error::msg)?;
    let mut cfg = presets::resolve(&cli.settings, preset.as_ref());
    let preset_layer = preset.as_ref().map(|p| p.layer(&cli.settings));
    if cli.dry_run {
        if !comm.is_root() {
            return Ok(());
        }
        let plan = dry_run::dry_run(&cfg, preset_layer.as_ref(), &cli.settings)?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", plan.to_text());
        }
        return Ok(());
    }
    if let Some(hub_ref) = cfg.model.init_from.as_ref().and_then(|p| p.to_str()).filter(|s| et_hub::is_hub_reference(s)) {
        let repo: et_hub::RepoRef = hub_ref.parse()?;
        let dir = et_hub::Hub::from_env()?.download_run(&repo, cli.offline)?;
        println!("init-from {repo}: {}", dir.display());
        cfg.model.init_from = Some(dir.join(et_hub::WEIGHTS_FILE));
    } else if cli.offline {
        anyhow::bail!("--offline applies to --init-from OWNER/NAME (a Hub repository)");
    }
    if let (Some(p), Some(layer), true) = (&preset, &preset_layer, comm.is_root()) {
        println!("preset {} ({}):", p.model, p.recipe.source);
        let v = serde_json::to_value(&cfg)?;
        let given = cli.settings.given();
        for k in layer.given() {
            let mark = if given.contains(&k) { "  (given)" } else { "" };
            println!("  {k:<22} {}{mark}", v[k]);
        }
    }
    if cfg.run.deterministic {
        pin_threads(cfg.run.compute_threads.unwrap_or_else(all_cores))?;
    }
    train_and_report(comm, &cfg, None)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn train_and_report(comm: Arc<dyn Collective>, cfg: &TrainConfig, resume: Option<(PathBuf, checkpoint::TrainState)>) -> Result<()> {
    let root = comm.is_root();
    let rank = (comm.world() > 1).then_some(comm.rank());
    let mut printer = Printer { cfg, tty: std::io::stderr().is_terminal(), bar_open: false, rank };
    if root && comm.world() > 1 {
        println!("data-parallel over {}", comm.describe());
    }
    let resume_ref = resume.as_ref().map(|(d, s)| (d.as_path(), s.clone()));
    let s = Trainer::new(comm, cfg, resume_ref, &mut |e| printer.event(e))?.run()?;
    if !root {
        return Ok(());
    }
    println!(
        "done in {} ({} steps{}): val top-1 {}, top-5 {}{}",
        hms(s.seconds),
        s.steps,
        if s.skipped > 0 { format!(", {} unreadable images skipped", s.skipped) } else { String::new() },
        pct(s.val_top1),
        pct(s.val_top5),
        s.ema_top1.map_or(String::new(), |t| format!(", EMA top-1 {}", pct(Some(t))))
    );
    println!("wall time per stage:");
    for (i, (r, t)) in s.stages.iter().enumerate() {
        println!("  stage {:>2} ({r:>3} px): {}", i + 1, hms(*t));
    }
    println!("wrote {}/{{model.safetensors, config.json, metrics.jsonl, training.png, checkpoints/}}", cfg.run.out.display());
    Ok(())
}

/// Prints the trainer's events: a one-line progress bar on a terminal, plain lines otherwise.
/// In a job of several ranks, rank 0 reports the run and the others only what they skipped.
struct Printer<'a> {
    cfg: &'a TrainConfig,
    tty: bool,
    bar_open: bool,
    /// This process's rank in a job of several.
    rank: Option<usize>,
}

impl Printer<'_> {
    fn close_bar(&mut self) {
        if self.bar_open {
            eprintln!();
            self.bar_open = false;
        }
    }

    fn event(&mut self, e: &Event) {
        if let (Some(r), false) = (self.rank, matches!(e, Event::Skipped { .. })) {
            if r != 0 {
                return;
            }
        }
        match e {
            Event::Plan { plan, train_images, val_images, classes, params, drop_path } => {
                let (s, c) = (&plan.schedule, self.cfg);
                println!(
                    "{} on {train_images} train / {val_images} val images, {classes} classes, {:.2} M parameters; schedule {} ({} stages, budget {} base epochs at {} px, {} steps); drop path {drop_path:.3}; {} {}",
                    c.model.model,
                    *params as f64 / 1e6,
                    s.name,
                    s.stages.len(),
                    s.budget,
                    s.base_resolution,
                    plan.total_steps,
                    c.run.device,
                    c.run.precision
                );
                for (i, (st, p)) in s.stages.iter().zip(&plan.stages).enumerate() {
                    let replay = st.replay.map_or(String::new(), |r| format!(", replay x{} (buffer {} batches)", r.times, r.size));
                    let low_pass = st.low_pass(s.base_resolution, c.data.low_freq).map_or(String::new(), |m| format!(" (low-pass: {m})"));
                    println!("  stage {:>2}: {:>3} px{low_pass}, RandAugment m{}, {:.2} epochs, {} steps x {} micro-batches{replay}", i + 1, st.resolution, st.magnitude, st.epochs, p.steps, p.accumulation);
                }
            }
            Event::Resumed { from, step, stage, stage_step } => println!("resumed from {} at step {step} (stage {}, step {stage_step} of the stage)", from.display(), stage + 1),
            Event::Step { stage, stages, resolution, magnitude, step, steps, loss, lr, img_per_s, eta_s, progress } => {
                let line = format!(
                    "stage {}/{stages} | {resolution} px m{magnitude} | step {step}/{steps} ({:.1}%) | loss {loss:.4} | lr {lr:.2e} | {img_per_s:.1} img/s | ETA {}",
                    stage + 1,
                    100.0 * progress,
                    hms(*eta_s)
                );
                if self.tty {
                    eprint!("\r\x1b[2K{line}");
                    self.bar_open = true;
                } else {
                    println!("{line}");
                }
            }
            Event::StageEnd { stage, resolution, seconds, val_top1, val_top5, ema_top1, mean_loss, skipped } => {
                self.close_bar();
                println!(
                    "== stage {} done ({resolution} px, {seconds:.1} s): train loss {mean_loss:.4}, val top-1 {}, top-5 {}{}{}",
                    stage + 1,
                    pct(*val_top1),
                    pct(*val_top5),
                    ema_top1.map_or(String::new(), |t| format!(", EMA top-1 {}", pct(Some(t)))),
                    if *skipped > 0 { format!(", {skipped} unreadable images skipped") } else { String::new() }
                )
            }
            Event::Checkpoint { .. } => {}
            Event::Skipped { path, reason } => {
                self.close_bar();
                let rank = self.rank.map_or(String::new(), |r| format!("rank {r}: "));
                eprintln!("et-train: {rank}skipped {}: {reason}", path.display())
            }
            Event::Data { note } => println!("data: {note}"),
            Event::Initialised { from, loaded, reinitialised } => println!(
                "initialised {loaded} tensors from {}{}",
                from.display(),
                if reinitialised.is_empty() { String::new() } else { format!(" (re-initialised for the new classes: {})", reinitialised.join(", ")) }
            ),
        }
    }
}

fn hms(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
