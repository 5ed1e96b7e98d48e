//! Prints the activation estimates of a model at a size: `cargo run --release -p et-models
//! --example activations -- MODEL SIZE BATCH` (to compare with a measured peak RSS).

use et_models::registry::{activations, model_config, ModelOptions};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (name, size, batch): (&str, usize, u64) = (&a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let cfg = model_config(name, &ModelOptions::default()).unwrap();
    let act = activations(&cfg, size, size).unwrap();
    let params = cfg.approx_params();
    println!(
        "{name} @ {size}: largest {:.1} M, total {:.1} M elements/image; eval {:.0} MiB/image; train batch {batch}: {:.0} MiB activations + {:.0} MiB weights and optimiser",
        act.largest as f64 / 1e6,
        act.total as f64 / 1e6,
        act.eval_bytes(size, size) as f64 / 1048576.0,
        (act.train_bytes() * batch) as f64 / 1048576.0,
        params * 4.0 * 4.0 / 1048576.0
    );
}
