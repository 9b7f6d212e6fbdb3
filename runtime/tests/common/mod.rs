//! What the server tests share: packed fixtures, a server on a real socket, a raw HTTP
//! client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, DType};
use olmort::generation::session::ChatFormat;
use olmort::server::http::{App, HttpConfig};
use olmort::server::scheduler::SchedulerConfig;
use olmort::server::{serve, ServeOptions};
use olmort::{KvDtype, Model};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

/// A fixture packed into the temp folder (f32), removed when dropped.
pub struct Packed(pub PathBuf);

impl Packed {
    pub fn new(name: &str) -> Packed {
        let out = std::env::temp_dir().join(format!(
            "olmort-server-{}-{}-{:?}.bin",
            std::process::id(),
            name.replace('/', "-"),
            std::thread::current().id()
        ));
        olmoc::pack(&fixture(name), &out, &olmoc::PackOptions { dtype: DType::F32, ..Default::default() }).expect("pack fixture");
        Packed(out)
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn options(slots: usize, context: usize, chunk: usize, queue: usize) -> ServeOptions {
    ServeOptions {
        scheduler: SchedulerConfig { slots, context, prefill_chunk: chunk, queue },
        http: HttpConfig::new("test-model".into(), context),
        kv: KvDtype::F32,
    }
}

/// Serves the fixture `name` on a free local port with `options` while `f` runs with its
/// address; then stops the server.
pub fn with_server(name: &str, options: ServeOptions, f: impl FnOnce(SocketAddr, &App) + Send) {
    let packed = Packed::new(name);
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let chat = ChatFormat::for_model(&model, blob.manifest.chat.as_ref(), None).ok();
    let own = if chat.is_none() { model.vocab.map(olmort::text::tokenizer::Tokenizer::new) } else { None };
    let tokenizer = chat.as_ref().map(|c| c.tokenizer()).or(own.as_ref());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve(&model, chat.as_ref(), tokenizer, &options, &listener, |app| {
        // Stop the server even when a check fails, then fail.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(addr, app)));
        app.stop(addr);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .unwrap();
}

/// An answer: status, head, body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

/// Sends raw bytes and reads the whole answer (the server closes each connection).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_answer(&out)
}

pub fn parse_answer(out: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    raw(addr, &request_bytes("GET", path, &[], ""))
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Answer {
    raw(addr, &request_bytes("POST", path, &[("Content-Type", "application/json")], body))
}

/// A metric's value from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let m = get(addr, "/metrics");
    m.body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {}", m.body))
}
