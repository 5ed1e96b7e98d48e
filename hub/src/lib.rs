//! The Hugging Face Hub both ways, through the `hf-hub` crate: fetch a run
//! (`config.json` + `model.safetensors`) into the shared Hub cache, and publish a run's
//! files in one commit.
//!
//! The endpoint is `HF_ENDPOINT` (default huggingface.co), the token `HF_TOKEN` or the
//! `huggingface-cli login` file, the cache `HF_HUB_CACHE` / `HF_HOME` — the same layout as
//! Python's huggingface_hub, so both share downloads. Every downloaded file whose ETag is a
//! SHA-256 (the Hub's LFS files) is verified against it, so a corrupt or truncated blob is
//! never loaded.

pub mod card;

use hf_hub::repository::{AddSource, CommitOperation};
use hf_hub::{HFClientBuilder, HFClientSync, HFError, RepoTypeModel};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use et_runfiles::{CONFIG_FILE, WEIGHTS_FILE};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("'{0}' is not a Hub repository: expected owner/name or owner/name@revision")]
    BadRepoId(String),
    #[error("cannot reach the Hub at {endpoint}: {reason} (check the network or HF_ENDPOINT; with --offline only the local cache is used)")]
    Unreachable { endpoint: String, reason: String },
    #[error("Hub repository {repo} does not exist (or is private: set HF_TOKEN)")]
    RepoNotFound { repo: String },
    #[error("revision '{revision}' does not exist in Hub repository {repo}")]
    RevisionNotFound { repo: String, revision: String },
    #[error("Hub repository {repo} has no file '{file}': is it an et-train run (config.json + model.safetensors)?")]
    FileMissing { repo: String, file: String },
    #[error("{file} of {repo} is not in the local Hub cache ({cache}): run once without --offline")]
    NotCached { repo: String, file: String, cache: String },
    #[error("Hub repository {repo} was not found or refused access: {reason} (check the name; for a private or gated repository set HF_TOKEN)")]
    Auth { repo: String, reason: String },
    #[error("download of {file} from {repo} is corrupt: {reason}; it was removed from the cache, try again")]
    Corrupt { repo: String, file: String, reason: String },
    #[error("cannot upload to {repo}: {reason}")]
    Upload { repo: String, reason: String },
    #[error("Hub request for {repo} failed: {reason}")]
    Other { repo: String, reason: String },
}

pub type Result<T> = std::result::Result<T, HubError>;

/// `owner/name[@revision]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
    pub revision: Option<String>,
}

impl RepoRef {
    pub fn id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}/{}@{r}", self.owner, self.name),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

impl FromStr for RepoRef {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || HubError::BadRepoId(s.to_string());
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let (owner, name) = id.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.');
        if !ok(owner) || !ok(name) {
            return Err(bad());
        }
        Ok(RepoRef { owner: owner.into(), name: name.into(), revision })
    }
}

/// What `--init-from X` means: an existing local path or a weights file name, else a Hub
/// repository.
pub fn is_hub_reference(arg: &str) -> bool {
    let file_like = [".safetensors", ".pth", ".pt", ".bin"].iter().any(|e| arg.ends_with(e));
    !file_like && !Path::new(arg).exists() && arg.parse::<RepoRef>().is_ok()
}

pub struct Hub {
    client: HFClientSync,
    endpoint: String,
    cache_dir: PathBuf,
}

impl Hub {
    /// A client configured from the environment (endpoint, token, cache).
    pub fn from_env() -> Result<Self> {
        let fail = |e: HFError| HubError::Other { repo: String::new(), reason: one_line(&e.to_string()) };
        let inner = HFClientBuilder::new().retry_max_attempts(2).build().map_err(fail)?;
        let (endpoint, cache_dir) = (inner.endpoint().to_string(), inner.cache_dir().to_path_buf());
        let client = HFClientSync::from_inner(inner).map_err(fail)?;
        Ok(Hub { client, endpoint, cache_dir })
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone()
    }

    /// Failures any request can have (network, access); `Err` hands back the others.
    fn common_err(&self, id: &str, e: HFError) -> std::result::Result<HubError, HFError> {
        match e {
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } => Ok(HubError::Auth { repo: id.to_string(), reason: one_line(&e.to_string()) }),
            HFError::Request { ref source, .. } if source.is_connect() || source.is_timeout() => {
                Ok(HubError::Unreachable { endpoint: self.endpoint.clone(), reason: one_line(&root_cause(source)) })
            }
            other => Err(other),
        }
    }

    fn map_err(&self, repo: &RepoRef, file: &str, e: HFError) -> HubError {
        let id = repo.id();
        match self.common_err(&id, e) {
            Ok(common) => common,
            Err(HFError::RepoNotFound { .. }) => HubError::RepoNotFound { repo: id },
            Err(HFError::RevisionNotFound { revision, .. }) => HubError::RevisionNotFound { repo: id, revision },
            Err(HFError::EntryNotFound { .. }) => HubError::FileMissing { repo: id, file: file.into() },
            Err(HFError::LocalEntryNotFound { .. }) => HubError::NotCached { repo: id, file: file.into(), cache: self.cache_dir().display().to_string() },
            // A body cut short or garbled in transit.
            Err(HFError::Request { ref source, .. }) => HubError::Corrupt { repo: id, file: file.into(), reason: one_line(&root_cause(source)) },
            Err(other) => HubError::Other { repo: id, reason: one_line(&other.to_string()) },
        }
    }

    /// Downloads (or, with `offline`, finds in the cache) a run's `config.json` and
    /// `model.safetensors`; returns the snapshot directory holding both.
    pub fn download_run(&self, repo: &RepoRef, offline: bool) -> Result<PathBuf> {
        let mut dir = None;
        for file in [CONFIG_FILE, WEIGHTS_FILE] {
            let path = self.download(repo, file, offline)?;
            dir = path.parent().map(Path::to_path_buf);
        }
        dir.ok_or_else(|| HubError::Other { repo: repo.id(), reason: "empty snapshot path".into() })
    }

    /// One file of a repository, verified.
    pub fn download(&self, repo: &RepoRef, file: &str, offline: bool) -> Result<PathBuf> {
        let r = self.client.model(repo.owner.clone(), repo.name.clone());
        let path = r
            .download_file()
            .filename(file)
            .maybe_revision(repo.revision.clone())
            .local_files_only(offline)
            .send()
            .map_err(|e| self.map_err(repo, file, e))?;
        verify_blob(&path).map_err(|reason| {
            // A bad blob would be served from the cache forever: remove it and its link.
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            HubError::Corrupt { repo: repo.id(), file: file.into(), reason }
        })?;
        Ok(path)
    }

    /// Uploads `files` (local path, path in the repository) in one commit, creating the
    /// repository if needed. Returns the commit's URL or id.
    pub fn upload(&self, repo: &RepoRef, files: &[(PathBuf, String)], message: &str) -> Result<String> {
        let id = repo.id();
        let fail = |e: HFError| self.common_err(&id, e).unwrap_or_else(|other| HubError::Upload { repo: id.clone(), reason: one_line(&other.to_string()) });
        for (local, _) in files {
            if !local.is_file() {
                return Err(HubError::Upload { repo: id.clone(), reason: format!("{} does not exist", local.display()) });
            }
        }
        self.client.create_repository().repo_id(&id).repo_type(RepoTypeModel).exist_ok(true).send().map_err(fail)?;
        let ops = files.iter().map(|(local, remote)| CommitOperation::Add { path_in_repo: remote.clone(), source: AddSource::File(local.clone()) }).collect();
        let info = self
            .client
            .model(repo.owner.clone(), repo.name.clone())
            .create_commit()
            .operations(ops)
            .commit_message(message)
            .maybe_revision(repo.revision.clone())
            .send()
            .map_err(fail)?;
        Ok(info.commit_url.or(info.commit_oid).unwrap_or_else(|| format!("{}/{id}", self.endpoint)))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a cached file against its blob name when that is a SHA-256 (LFS ETag).
fn verify_blob(path: &Path) -> std::result::Result<(), String> {
    let blob = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut f = std::fs::File::open(&blob).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !got.eq_ignore_ascii_case(etag) {
        let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
        return Err(format!("its SHA-256 is {got} ({size} bytes), the Hub announced {etag}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_references_parse_and_reject_nonsense() {
        let r: RepoRef = "timm/convnext_atto.d2_in1k@main".parse().unwrap();
        assert_eq!((r.owner.as_str(), r.name.as_str(), r.revision.as_deref()), ("timm", "convnext_atto.d2_in1k", Some("main")));
        assert_eq!(r.to_string(), "timm/convnext_atto.d2_in1k@main");
        assert_eq!("a/b".parse::<RepoRef>().unwrap().revision, None);
        for bad in ["a", "a/b/c", "/b", "a/", "a/b@", "../x", "a b/c", "./model.safetensors"] {
            assert!(bad.parse::<RepoRef>().is_err(), "{bad}");
        }
        assert!(!is_hub_reference("Cargo.toml"));
        assert!(!is_hub_reference("runs/model.safetensors"), "a missing file is a missing file");
        assert!(is_hub_reference("me/atto-cifar@v1"));
    }
}
