//! A loopback stand-in for the Hugging Face Hub, served from the test process: the paths
//! `hf-hub` uses to download one file (HEAD/GET `resolve` with ETag and X-Repo-Commit),
//! to create a repository and to commit files inline (preupload + ndjson commit).
//! Faults can be injected per file to test how the tools fail.

#![allow(dead_code)]

use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Serve other bytes than the ETag announces.
    Corrupt,
    /// Announce the full length but close the connection after half of it.
    Truncate,
}

#[derive(Default)]
struct Repo {
    files: HashMap<String, Vec<u8>>,
    commits: usize,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    faults: HashMap<(String, String), Fault>,
    requests: Vec<String>,
}

pub struct StandInHub {
    pub url: String,
    state: Arc<Mutex<State>>,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

impl StandInHub {
    pub fn start() -> StandInHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        });
        StandInHub { url, state }
    }

    pub fn put_file(&self, repo: &str, path: &str, bytes: Vec<u8>) {
        let mut st = self.state.lock().unwrap();
        st.repos.entry(repo.to_string()).or_default().files.insert(path.to_string(), bytes);
    }

    pub fn file(&self, repo: &str, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().repos.get(repo)?.files.get(path).cloned()
    }

    pub fn files(&self, repo: &str) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut v: Vec<String> = st.repos.get(repo).map(|r| r.files.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    pub fn remove_file(&self, repo: &str, path: &str) {
        if let Some(r) = self.state.lock().unwrap().repos.get_mut(repo) {
            r.files.remove(path);
        }
    }

    pub fn fault(&self, repo: &str, path: &str, fault: Fault) {
        self.state.lock().unwrap().faults.insert((repo.to_string(), path.to_string()), fault);
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    // Strip a query string: the stand-in ignores `create_pr` and friends.
    let path = path.split('?').next().unwrap_or("").to_string();
    Ok(Some(Request { method, path, body }))
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], send_body: bool, announced_len: Option<usize>) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n", announced_len.unwrap_or(body.len()));
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    if send_body {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn json(stream: &mut TcpStream, status: &str, v: serde_json::Value) -> std::io::Result<()> {
    respond(stream, status, &[("Content-Type", "application/json".into())], v.to_string().as_bytes(), true, None)
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else { return Ok(()) };
    state.lock().unwrap().requests.push(format!("{} {}", req.method, req.path));
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("HEAD" | "GET", [owner, name, "resolve", _rev, file @ ..]) => {
            let (repo, file) = (format!("{owner}/{name}"), file.join("/"));
            let st = state.lock().unwrap();
            let Some(r) = st.repos.get(&repo) else {
                // The Hub answers 401 for a repository that does not exist (or is private).
                drop(st);
                return respond(&mut stream, "401 Unauthorized", &[("X-Error-Code", "RepoNotFound".into())], b"Repository not found", req.method == "GET", None);
            };
            let commit = format!("{:040x}", 0xabc0 + r.commits);
            let Some(bytes) = r.files.get(&file).cloned() else {
                drop(st);
                return respond(&mut stream, "404 Not Found", &[("X-Error-Code", "EntryNotFound".into()), ("X-Repo-Commit", commit)], b"Entry not found", req.method == "GET", None);
            };
            let fault = st.faults.get(&(repo.clone(), file.clone())).copied();
            drop(st);
            let headers = [("ETag", format!("\"{}\"", sha256_hex(&bytes))), ("X-Repo-Commit", commit)];
            let get = req.method == "GET";
            match fault {
                None => respond(&mut stream, "200 OK", &headers, &bytes, get, None),
                Some(Fault::Corrupt) => {
                    let mut bad = bytes.clone();
                    let mid = bad.len() / 2;
                    bad[mid] ^= 0xff;
                    respond(&mut stream, "200 OK", &headers, &bad, get, None)
                }
                Some(Fault::Truncate) => {
                    if get {
                        respond(&mut stream, "200 OK", &headers, &bytes[..bytes.len() / 2], true, Some(bytes.len()))
                    } else {
                        respond(&mut stream, "200 OK", &headers, &bytes, false, None)
                    }
                }
            }
        }
        ("POST", ["api", "repos", "create"]) => {
            let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let repo = format!("{}/{}", v["organization"].as_str().unwrap_or("me"), v["name"].as_str().unwrap_or(""));
            let mut st = state.lock().unwrap();
            if st.repos.contains_key(&repo) {
                drop(st);
                return json(&mut stream, "409 Conflict", serde_json::json!({"error": "You already created this model repo"}));
            }
            st.repos.insert(repo.clone(), Repo::default());
            drop(st);
            json(&mut stream, "200 OK", serde_json::json!({"url": format!("https://stand-in/{repo}")}))
        }
        ("POST", ["api", "models", owner, name, "preupload", _rev]) => {
            let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let files: Vec<serde_json::Value> = v["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|f| serde_json::json!({"path": f["path"], "uploadMode": "regular", "shouldIgnore": false}))
                .collect();
            let _ = (owner, name);
            json(&mut stream, "200 OK", serde_json::json!({"files": files}))
        }
        ("POST", ["api", "models", owner, name, "commit", _rev]) => {
            let repo = format!("{owner}/{name}");
            let mut st = state.lock().unwrap();
            let Some(r) = st.repos.get_mut(&repo) else {
                drop(st);
                return json(&mut stream, "404 Not Found", serde_json::json!({"error": "Repository not found"}));
            };
            for line in req.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                if v["key"] == "file" {
                    let content = base64::engine::general_purpose::STANDARD.decode(v["value"]["content"].as_str().unwrap_or("")).unwrap_or_default();
                    r.files.insert(v["value"]["path"].as_str().unwrap_or("").to_string(), content);
                }
            }
            r.commits += 1;
            let oid = format!("{:040x}", 0xabc0 + r.commits);
            drop(st);
            json(&mut stream, "200 OK", serde_json::json!({"commitUrl": format!("https://stand-in/{repo}/commit/{oid}"), "commitOid": oid}))
        }
        _ => json(&mut stream, "404 Not Found", serde_json::json!({"error": format!("stand-in Hub does not serve {} {}", req.method, req.path)})),
    }
}
