//! Plots runs' training curves (loss, validation top-1, learning rate vs compute progress)
//! into one PNG: `et-plot --out curves.png RUN_DIR...` (each RUN_DIR has a metrics.jsonl).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "et-plot", version)]
struct Args {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Run directories (their metrics.jsonl), named in the legend by their folder name.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let curves: Result<Vec<_>, _> = a
        .runs
        .iter()
        .map(|d| et_train::plot::read_metrics(&d.join(et_runfiles::METRICS_FILE), &d.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned())))
        .collect();
    match curves.and_then(|c| et_train::plot::write_png(&c, &a.out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-plot: error: {e}");
            ExitCode::from(2)
        }
    }
}
