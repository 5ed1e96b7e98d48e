//! et-pack: writes WebDataset tar shards from an ImageFolder (see the library).

use anyhow::Result;
use clap::Parser;
use et_pack::{pack, PackOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Write an ImageFolder as WebDataset tar shards (KEY.jpg + KEY.cls, classes.json and an
/// index beside them), which et-train, et-eval and et-bench read with --data OUT. SRC/train
/// and SRC/val become OUT/train/*.tar and OUT/val/*.tar; a folder without them becomes
/// OUT/*.tar. The same input and options always give the same bytes.
#[derive(Parser, Debug)]
#[command(name = "et-pack", version)]
struct Cli {
    /// The ImageFolder: SRC/<class>/<image>, or SRC/train/<class>/<image> (+ SRC/val/...).
    src: PathBuf,
    /// Output directory (must not exist or be empty, unless --force).
    out: PathBuf,
    /// Re-encode images whose shorter side exceeds S: resized so that it is S (antialiased
    /// Lanczos) and written as JPEG; other images are copied byte for byte.
    #[arg(long, value_name = "S")]
    shorter_side: Option<u32>,
    /// JPEG quality of re-encoded images (1-100).
    #[arg(long, value_name = "Q", default_value_t = 90)]
    quality: u8,
    /// Largest shard in MB (10^6 bytes); an image larger than that gets a shard of its own.
    #[arg(long, value_name = "M", default_value_t = 256.0)]
    shard_mb: f64,
    /// Write training images in the folder's (class) order instead of a fixed shuffled
    /// order. A shuffle buffer cannot mix classes that lie in different shards, so keep this
    /// for data that is shuffled already.
    #[arg(long)]
    keep_order: bool,
    /// Replace OUT if it exists and is not empty.
    #[arg(long)]
    force: bool,
    /// Threads reading and re-encoding images [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-pack: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A progress bar on stderr when it is a terminal, redrawn at most ten times a second.
struct Bar {
    tty: bool,
    start: Instant,
    last: Mutex<Option<Instant>>,
}

impl Bar {
    fn show(&self, done: usize, total: usize, bytes: u64) {
        if !self.tty {
            return;
        }
        let Ok(mut last) = self.last.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        eprint!("\r\x1b[2K[{}{}] {done}/{total} images, {:.1} MB, {:.0} img/s", "#".repeat(filled), "-".repeat(width - filled), bytes as f64 / 1e6, done as f64 / secs);
        let _ = std::io::stderr().flush();
    }
}

fn run(cli: &Cli) -> Result<()> {
    anyhow::ensure!(cli.shard_mb.is_finite() && cli.shard_mb > 0.0, "--shard-mb must be positive, got {}", cli.shard_mb);
    anyhow::ensure!(cli.shorter_side != Some(0), "--shorter-side must be at least 1");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cli.threads.unwrap_or(0)).build()?;
    let opts = PackOptions { shorter_side: cli.shorter_side, quality: cli.quality, shard_bytes: (cli.shard_mb * 1e6) as u64, keep_order: cli.keep_order, force: cli.force };
    let bar = Bar { tty: std::io::stderr().is_terminal(), start: Instant::now(), last: Mutex::new(None) };
    let progress = |done: usize, total: usize, bytes: u64| bar.show(done, total, bytes);
    let result = pool.install(|| pack(&cli.src, &cli.out, &opts, &progress));
    if bar.tty {
        eprintln!();
    }
    for s in result? {
        let dir = if s.split.is_empty() { cli.out.clone() } else { cli.out.join(&s.split) };
        println!(
            "{}: {} images in {} shard{} ({:.1} MB){}",
            dir.display(),
            s.images,
            s.shards,
            if s.shards == 1 { "" } else { "s" },
            s.bytes as f64 / 1e6,
            cli.shorter_side.map_or(String::new(), |side| format!(", {} re-encoded to a shorter side of {side}", s.reencoded))
        );
        for (path, why) in &s.unreadable {
            println!("  copied as it is (cannot be decoded, training will skip it): {}: {why}", path.display());
        }
    }
    Ok(())
}
