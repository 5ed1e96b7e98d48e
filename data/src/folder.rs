//! torchvision's `ImageFolder` layout: `root/<class>/**/<image>`.
//!
//! Labels are indices into the sorted class list, so the class order and the sample
//! order must match torchvision exactly for checkpoints and label files to be
//! interchangeable with the Python reference.

use crate::DataError;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively.
pub const IMG_EXTENSIONS: [&str; 9] = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Whether a file name has an image extension (`str.lower().endswith(IMG_EXTENSIONS)`).
pub fn is_image_file(name: &std::ffi::OsStr) -> bool {
    let lower = name.to_string_lossy().to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// Sub-directories (following symlinks, as `os.scandir(...).is_dir()`) and other
/// entries of `dir`.
fn list_dir(dir: &Path) -> Result<(Vec<OsString>, Vec<OsString>), DataError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        // `metadata` follows symlinks; a broken link counts as a file, like Python.
        let is_dir = std::fs::metadata(entry.path()).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            dirs.push(entry.file_name());
        } else {
            files.push(entry.file_name());
        }
    }
    Ok((dirs, files))
}

/// `os.walk(top, followlinks=True)`, collecting every directory and its files.
/// Symlink cycles, which would make Python recurse until the path is too long, are
/// visited once.
fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<(PathBuf, Vec<OsString>)>) -> Result<(), DataError> {
    let canonical = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let (dirs, files) = list_dir(dir)?;
    out.push((dir.to_path_buf(), files));
    for d in dirs {
        walk(&dir.join(d), seen, out)?;
    }
    Ok(())
}

/// The images of one class in torchvision's order: `sorted(os.walk(...))` orders
/// directories by their path string (so a folder's own files come before those of
/// its sub-folders), then `sorted(fnames)` within each.
fn class_images(class_dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut dirs = Vec::new();
    walk(class_dir, &mut HashSet::new(), &mut dirs)?;
    dirs.sort_by(|a, b| a.0.as_os_str().as_encoded_bytes().cmp(b.0.as_os_str().as_encoded_bytes()));
    let mut paths = Vec::new();
    for (dir, mut files) in dirs {
        files.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        paths.extend(files.into_iter().filter(|f| is_image_file(f)).map(|f| dir.join(f)));
    }
    Ok(paths)
}

impl ImageFolder {
    /// Scans `root` like `torchvision.datasets.ImageFolder(root)`. As torchvision, a
    /// class folder without images is an error rather than a silently unused label.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::MissingDir(root.to_path_buf()));
        }
        let (dirs, _) = list_dir(root)?;
        let mut classes = dirs
            .into_iter()
            .map(|d| {
                d.into_string().map_err(|d| {
                    DataError::Invalid(format!(
                        "class folder name {:?} in {} is not valid UTF-8: rename it",
                        d,
                        root.display()
                    ))
                })
            })
            .collect::<Result<Vec<String>, _>>()?;
        // Python's `sorted()` on str compares code points, i.e. UTF-8 bytes.
        classes.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        if classes.is_empty() {
            return Err(DataError::NoClasses(root.to_path_buf()));
        }
        let mut samples = Vec::new();
        let mut empty = None;
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let images = class_images(&dir)?;
            if images.is_empty() && empty.is_none() {
                empty = Some(dir);
            }
            samples.extend(images.into_iter().map(|path| Sample { path, label }));
        }
        if samples.is_empty() {
            return Err(DataError::NoImages(root.to_path_buf()));
        }
        if let Some(dir) = empty {
            return Err(DataError::EmptyClass(dir));
        }
        Ok(ImageFolder { root: root.to_path_buf(), classes, samples })
    }

    /// Opens `root` and requires its classes to be exactly `classes` (e.g. a
    /// validation folder must use the training folder's labels).
    pub fn with_classes(root: &Path, classes: &[String]) -> Result<Self, DataError> {
        let folder = Self::open(root)?;
        if folder.classes != classes {
            let missing: Vec<&String> = classes.iter().filter(|c| !folder.classes.contains(c)).take(5).collect();
            let extra: Vec<&String> = folder.classes.iter().filter(|c| !classes.contains(c)).take(5).collect();
            return Err(DataError::Invalid(format!(
                "{} has {} classes but {} were expected (missing e.g. {:?}, unexpected e.g. {:?}): \
                 train and val folders must have the same class sub-folders",
                root.display(),
                folder.classes.len(),
                classes.len(),
                missing,
                extra
            )));
        }
        Ok(folder)
    }

    /// `data/split` when it is a directory (the `DIR/train`, `DIR/val` layout),
    /// otherwise `data` itself.
    pub fn split_root(data: &Path, split: &str) -> PathBuf {
        let candidate = data.join(split);
        if candidate.is_dir() {
            candidate
        } else {
            data.to_path_buf()
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("et-data-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn rel(f: &ImageFolder) -> Vec<(String, usize)> {
        f.samples
            .iter()
            .map(|s| (s.path.strip_prefix(&f.root).unwrap().to_string_lossy().into_owned(), s.label))
            .collect()
    }

    #[test]
    fn torchvision_order_and_labels() {
        let root = tempdir("order");
        for f in [
            "b/z.jpg", "b/a/y.JPEG", "b/a-b/x.png", "b/notes.txt", "B/1.Png", "a/c.webp", "a/b.bmp", "a/sub/a.jpg",
            "a/Z.jpg", "é/1.jpg", "b/a/c/w.jpg",
        ] {
            touch(&root, f);
        }
        let f = ImageFolder::open(&root).unwrap();
        assert_eq!(f.classes, vec!["B", "a", "b", "é"]);
        let want = [
            ("B/1.Png", 0),
            ("a/Z.jpg", 1),
            ("a/b.bmp", 1),
            ("a/c.webp", 1),
            ("a/sub/a.jpg", 1),
            // Directories sort as strings: "b" < "b/a" < "b/a-b" < "b/a/c" ('-' < '/').
            ("b/z.jpg", 2),
            ("b/a/y.JPEG", 2),
            ("b/a-b/x.png", 2),
            ("b/a/c/w.jpg", 2),
            ("é/1.jpg", 3),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
        assert_eq!(rel(&f), want);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn errors_name_the_folder() {
        let root = tempdir("errors");
        let missing = root.join("nope");
        assert!(matches!(ImageFolder::open(&missing), Err(DataError::MissingDir(p)) if p == missing));
        assert!(matches!(ImageFolder::open(&root), Err(DataError::NoClasses(p)) if p == root));
        touch(&root, "cat/readme.txt");
        assert!(matches!(ImageFolder::open(&root), Err(DataError::NoImages(p)) if p == root));
        touch(&root, "dog/1.jpg");
        assert!(matches!(ImageFolder::open(&root), Err(DataError::EmptyClass(p)) if p == root.join("cat")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn splits_and_class_matching() {
        let root = tempdir("splits");
        touch(&root, "train/cat/1.jpg");
        touch(&root, "train/dog/1.jpg");
        touch(&root, "val/cat/2.jpg");
        touch(&root, "val/dog/2.jpg");
        touch(&root, "other/cat/3.jpg");
        assert_eq!(ImageFolder::split_root(&root, "train"), root.join("train"));
        assert_eq!(ImageFolder::split_root(&root.join("train"), "train"), root.join("train"));
        let train = ImageFolder::open(&ImageFolder::split_root(&root, "train")).unwrap();
        let val = ImageFolder::with_classes(&root.join("val"), &train.classes).unwrap();
        assert_eq!(val.samples[1].label, 1);
        match ImageFolder::with_classes(&root.join("other"), &train.classes) {
            Err(DataError::Invalid(msg)) => assert!(msg.contains("other") && msg.contains("dog"), "{msg}"),
            r => panic!("expected a class mismatch, got {r:?}"),
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
