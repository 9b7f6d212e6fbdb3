//! Helpers for the end-to-end tests: the built binaries, scratch folders, fixtures and
//! their reference outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use serde::Deserialize;

/// The committed fixtures folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The workspace's target profile folder, where cargo puts `olmoc` and `olmort`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

static BUILD: Once = Once::new();

/// Path of a workspace binary, building the binaries first if this test run did not
/// (e.g. `cargo test -p olmo-e2e` alone).
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    BUILD.call_once(|| {
        if !profile_dir().join("olmoc").exists() || !profile_dir().join("olmort").exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = profile_dir().ends_with("release");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "olmoc", "-p", "olmort"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building olmoc and olmort failed");
        }
    });
    path
}

/// Runs a workspace binary with arguments and extra environment.
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// A scratch folder removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("olmo-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch folder");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `reference.json` as written by `tools/make_fixture.py`.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub steps: usize,
    pub input_tokens: Vec<u32>,
    pub argmax: Vec<u32>,
    pub top5: Vec<Vec<u32>>,
}

pub fn reference(fixture: &str) -> Reference {
    let path = fixtures().join(fixture).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 2-D f32 `.npy` file as (rows, cols, values).
pub fn read_npy_2d(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).expect("npy header");
    let shape = npy.shape().to_vec();
    assert_eq!(shape.len(), 2, "{}: shape {shape:?}", path.display());
    let values = npy.into_vec::<f32>().expect("f32 npy data");
    (shape[0] as usize, shape[1] as usize, values)
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Packs the checkpoint folder `dir` into `out` with `olmoc pack`, which must succeed.
pub fn pack(dir: &Path, out: &Path) {
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap()], &[]);
    assert!(result.status.success(), "olmoc pack {}: {}", dir.display(), describe(&result));
}

/// `tests/fixtures/chat/cases.json` (made by `tools/make_chat_fixture.py`), with the
/// conversations' messages as `M`.
#[derive(Debug, Deserialize)]
pub struct ChatCases<M> {
    pub conversations: std::collections::BTreeMap<String, Vec<M>>,
    /// The tools as JSON text, keys in their order.
    pub tools_json: String,
    pub cases: Vec<ChatCase>,
}

/// One rendering by transformers: a text with its ids, or a template error.
#[derive(Debug, Deserialize)]
pub struct ChatCase {
    pub model: String,
    pub template: String,
    pub conversation: String,
    pub tools: bool,
    pub add_generation_prompt: bool,
    pub text: Option<String>,
    /// `apply_chat_template(..., sanitize_control_tokens=True)`.
    pub ids: Option<Vec<u32>>,
    pub unsanitized_ids: Option<Vec<u32>>,
    pub error: Option<String>,
}

pub fn chat_cases<M: serde::de::DeserializeOwned>() -> ChatCases<M> {
    let path = fixtures().join("chat/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
