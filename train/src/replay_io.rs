//! The ET++ replay buffer in a checkpoint (a mid-stage resume needs its exact contents):
//! one safetensors file with every chunk's images and labels concatenated, the chunk
//! lengths and the sample shape.

use crate::TrainError;
use candle_core::{Device, Tensor};
use et_data::replay::{Chunk, ReplayBuffer};
use std::collections::HashMap;
use std::path::Path;

/// The buffer's tensors, as the checkpoint file holds them.
fn tensors(buf: &ReplayBuffer) -> Result<HashMap<String, Tensor>, TrainError> {
    let dev = Device::Cpu;
    let images: Vec<f32> = buf.chunks().flat_map(|c| c.images.iter().copied()).collect();
    let labels: Vec<u32> = buf.chunks().flat_map(|c| c.labels.iter().map(|&l| l as u32)).collect();
    let lens: Vec<u32> = buf.chunks().map(|c| c.len() as u32).collect();
    let chw: Vec<u32> = buf.sample_shape().map_or(vec![0, 0, 0], |s| s.iter().map(|&v| v as u32).collect());
    let mut t = HashMap::new();
    let n_img = images.len();
    t.insert("images".to_string(), Tensor::from_vec(images, n_img, &dev)?);
    let n = labels.len();
    t.insert("labels".to_string(), Tensor::from_vec(labels, n, &dev)?);
    let n = lens.len();
    t.insert("chunk_lengths".to_string(), Tensor::from_vec(lens, n, &dev)?);
    t.insert("sample_shape".to_string(), Tensor::from_vec(chw, 3, &dev)?);
    Ok(t)
}

pub fn save(buf: &ReplayBuffer, path: &Path) -> Result<(), TrainError> {
    Ok(et_models::params::save_tensors(&tensors(buf)?, path)?)
}

/// The buffer as the bytes of its checkpoint file (to send it to another rank).
pub fn to_bytes(buf: &ReplayBuffer) -> Result<Vec<u8>, TrainError> {
    safetensors::serialize(tensors(buf)?.iter(), None).map_err(|e| TrainError::Internal(format!("replay buffer: {e}")))
}

pub fn load(path: &Path, size_batches: usize, split: usize) -> Result<ReplayBuffer, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::Config(format!("cannot read the replay buffer {}: {e}", path.display())))?;
    from_bytes(&bytes, size_batches, split, &path.display().to_string())
}

/// A buffer from the bytes of its checkpoint file (`what` names them in errors).
pub fn from_bytes(bytes: &[u8], size_batches: usize, split: usize, what: &str) -> Result<ReplayBuffer, TrainError> {
    let bad = |e: String| TrainError::Config(format!("cannot read the replay buffer {what}: {e}"));
    let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| t.get(k).ok_or_else(|| bad(format!("no '{k}' tensor")));
    let images: Vec<f32> = get("images")?.to_vec1()?;
    let labels: Vec<u32> = get("labels")?.to_vec1()?;
    let lens: Vec<u32> = get("chunk_lengths")?.to_vec1()?;
    let s: Vec<u32> = get("sample_shape")?.to_vec1()?;
    let chw = (s.iter().all(|&v| v > 0) && s.len() == 3).then(|| [s[0] as usize, s[1] as usize, s[2] as usize]);
    let per = chw.map_or(0, |c| c.iter().product::<usize>());
    let (mut at, mut chunks) = (0usize, Vec::new());
    for &l in &lens {
        let l = l as usize;
        if (at + l) * per > images.len() || at + l > labels.len() {
            return Err(bad("chunk lengths exceed the data".into()));
        }
        chunks.push(Chunk { images: images[at * per..(at + l) * per].to_vec(), labels: labels[at..at + l].iter().map(|&v| v as usize).collect() });
        at += l;
    }
    ReplayBuffer::from_chunks(size_batches, split, chw, chunks).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_data::Rng;

    #[test]
    fn round_trip() {
        let mut b = ReplayBuffer::new(2, 3);
        let images: Vec<f32> = (0..5 * 12).map(|v| v as f32).collect();
        b.push(&images, [5, 3, 2, 2], &[0, 1, 2, 3, 4]).unwrap();
        let path = std::env::temp_dir().join(format!("et-replay-{}.safetensors", std::process::id()));
        save(&b, &path).unwrap();
        let c = load(&path, 2, 3).unwrap();
        assert_eq!(b.chunks().cloned().collect::<Vec<_>>(), c.chunks().cloned().collect::<Vec<_>>());
        let d = from_bytes(&to_bytes(&b).unwrap(), 2, 3, "bytes").unwrap();
        assert_eq!(b.chunks().cloned().collect::<Vec<_>>(), d.chunks().cloned().collect::<Vec<_>>());
        assert_eq!(c.sample_shape(), Some([3, 2, 2]));
        let (mut r1, mut r2) = (Rng::new(1), Rng::new(1));
        assert_eq!(b.sample(4, &mut r1), c.sample(4, &mut r2));
        std::fs::remove_file(&path).ok();
    }
}
