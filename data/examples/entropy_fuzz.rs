//! Damages the scans of real JPEGs at random and decodes each damaged file with
//! et-data's entropy decoder (`csrc/ethuff.c`) and with libjpeg's, at a random DCT scale
//! and window: both must fail, or both return the same pixels — except where the damage
//! made a marker or a fill byte (0xFF 0xFF, which libjpeg-turbo's fast Huffman path also
//! takes for a marker): meeting one inside an MCU, that path hands the MCU to its slow
//! path without clearing the coefficients it already wrote (jdhuff.c, decode_mcu_fast),
//! and those stale values can differ from ours (which are the slow path's alone). Such
//! cases are counted apart.
//! `cargo run --release -p et-data --example entropy_fuzz -- DIR [TRIALS]`
//! (DIR: a folder of JPEGs, searched recursively; ET_FUZZ_DUMP=DIR keeps differing files).

use et_data::decode::decode_jpeg_window;
use et_data::Rng;
use std::path::{Path, PathBuf};

fn jpegs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            jpegs(&p, out)?;
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg")) {
            out.push(p);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: entropy_fuzz DIR [TRIALS]")?);
    let trials: usize = args.next().map_or(Ok(2000), |t| t.parse())?;
    let mut paths = Vec::new();
    jpegs(&dir, &mut paths)?;
    paths.sort();
    let files: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    if files.is_empty() {
        return Err(format!("no JPEGs under {}", dir.display()).into());
    }
    let mut rng = Rng::from_keys(&[0x6675_7a7a]);
    let (mut same, mut both_failed, mut differ, mut stale) = (0, 0, 0, 0);
    for trial in 0..trials {
        let i = rng.below(files.len());
        let mut bad = files[i].clone();
        let sos = bad.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap_or(0) + 20;
        if sos + 4 >= bad.len() {
            continue;
        }
        for _ in 0..1 + rng.below(8) {
            let at = sos + rng.below(bad.len() - sos - 2);
            bad[at] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 {
            bad.truncate(sos + rng.below(bad.len() - sos));
        }
        let denom = 1 << rng.below(4);
        // The window: all of the image, or its lower part (rows above are skipped).
        let y0 = if rng.below(2) == 0 { 0 } else { 16 + rng.below(64) as u32 };
        // A marker or fill byte the damage made: 0xFF not followed by the stuffed 0x00,
        // before the end-of-image marker.
        let end = bad.len().saturating_sub(2);
        let marker = (sos..end).any(|i| bad[i] == 0xFF && bad[i + 1] != 0x00);
        let decode = |libjpeg| decode_jpeg_window(&bad, denom, [0, y0, u32::MAX, u32::MAX], libjpeg);
        match (decode(false), decode(true)) {
            (Ok(Some((a, _))), Ok(Some((b, _)))) if a == b => same += 1,
            (Ok(Some(_)), Ok(Some(_))) if marker => stale += 1,
            (Err(_), Err(_)) | (Ok(None), Ok(None)) => both_failed += 1,
            // Different pixels, or only one decoder refused the file.
            (a, b) => {
                differ += 1;
                eprintln!("trial {trial}: {} damaged, 1/{denom}, from row {y0}: the decoders differ (errors: {:?} / {:?})", paths[i].display(), a.err(), b.err());
                if let Some(d) = std::env::var_os("ET_FUZZ_DUMP") {
                    std::fs::write(Path::new(&d).join(format!("{trial}.jpg")), &bad)?;
                }
            }
        }
    }
    println!("{trials} damaged files: {same} decoded identically, {both_failed} refused by both, {stale} differ after a marker or fill byte the damage made (libjpeg's stale coefficients), {differ} differ otherwise");
    if differ > 0 {
        return Err("the entropy decoders differ".into());
    }
    Ok(())
}
