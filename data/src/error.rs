use std::path::PathBuf;

/// Every error names the file or value at fault and says what to do about it,
/// so the binaries can print it as one line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data directory {0} does not exist: pass --data DIR pointing at an ImageFolder (DIR/<class>/<image> or DIR/train + DIR/val) or at WebDataset shards (DIR/*.tar, DIR/train/*.tar + DIR/val/*.tar, or a pattern DIR/train-{{000000..000009}}.tar)")]
    MissingDir(PathBuf),
    #[error("{0} has no class folders: expected one sub-folder per class containing images")]
    NoClasses(PathBuf),
    #[error("{0} has class folders but no images (.jpg, .jpeg, .png, ...): add images or point --data elsewhere")]
    NoImages(PathBuf),
    #[error("class folder {0} contains no images (.jpg, .jpeg, .png, ...): add images or remove the folder")]
    EmptyClass(PathBuf),
    #[error("cannot decode image {path}: {reason} (remove or replace the file)")]
    Decode { path: PathBuf, reason: String },
    #[error("sample {path} cannot be used: {reason}")]
    Member { path: PathBuf, reason: String },
    #[error("shard {path}: {reason}: re-create it (et-pack) or remove it")]
    Shard { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid augmentation policy '{0}': expected e.g. 'rand-m9-mstd0.5-inc1'")]
    BadPolicy(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}
