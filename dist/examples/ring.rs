//! `mpirun -np N target/release/examples/ring`: every rank sums, broadcasts and gathers once
//! and prints what it got (a check that the MPI build and launch work).

fn main() {
    let c = match et_dist::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ring: {e}");
            std::process::exit(2);
        }
    };
    let mut v = vec![c.rank() as f32 + 1.0; 3];
    c.sum_f32(&mut v).expect("sum");
    let mut msg = if c.is_root() { b"from root".to_vec() } else { Vec::new() };
    c.broadcast(&mut msg, 0).expect("broadcast");
    let all = et_dist::all_gather_bytes(c.as_ref(), format!("rank {}", c.rank()).as_bytes()).expect("gather");
    println!("rank {}/{} (local {}): sum {:?}, {:?}, {} pieces; {}", c.rank(), c.world(), c.local_rank(), v, String::from_utf8_lossy(&msg), all.len(), c.describe());
}
