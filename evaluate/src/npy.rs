//! Reading and writing NumPy `.npy` files of little-endian float32 (format 1.0/2.0, C order):
//! the exchange format of `et-eval predict`.

use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &Path, why: &str) -> String {
    format!("{}: not a float32 .npy file ({why}); save with numpy.save(path, x.astype(numpy.float32))", path.display())
}

/// Shape and data of a float32 array.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "no NUMPY header"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(path, &format!("format version {v}"))),
    };
    let header = bytes.get(start..start + len).ok_or_else(|| bad(path, "truncated header"))?;
    let header = String::from_utf8_lossy(header);
    if !header.contains("'descr': '<f4'") {
        return Err(bad(path, &format!("dtype is not '<f4' in {}", header.trim())));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad(path, "Fortran order"));
    }
    let shape_text = header.split("'shape':").nth(1).and_then(|s| s.split('(').nth(1)).and_then(|s| s.split(')').next()).ok_or_else(|| bad(path, "no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(path, "bad shape")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + len..];
    let n: usize = shape.iter().product();
    if data.len() != 4 * n {
        return Err(bad(path, &format!("{} data bytes for shape {shape:?}", data.len())));
    }
    Ok((shape, data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

/// Writes a float32 array (format 1.0).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), String> {
    let dims = match shape.len() {
        1 => format!("{},", shape[0]),
        _ => shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Pad so that the data starts at a multiple of 64 bytes, ending the header with '\n'.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1u8, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    et_runfiles::write(path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = std::env::temp_dir().join(format!("et-npy-{}.npy", std::process::id()));
        write_f32(&p, &[2, 3], &[1.0, -2.0, 3.5, 0.0, 5.0, 6.25]).unwrap();
        let (shape, data) = read_f32(&p).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.25]);
        std::fs::write(&p, b"not npy").unwrap();
        assert!(read_f32(&p).unwrap_err().contains("not a float32 .npy"));
        std::fs::remove_file(&p).ok();
    }
}
