//! Chat templates packed by olmoc and rendered by olmort against transformers: every
//! case of tests/fixtures/chat/cases.json (made by tools/make_chat_fixture.py) renders to
//! transformers' string and encodes to its sanitized ids, and template errors carry the
//! template's own message.

use std::path::Path;

use olmo_e2e::{chat_cases, describe, fixtures, run, Scratch};
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::text::chat_template::{ChatTemplate, Message, Tools};
use olmort::text::tokenizer::Tokenizer;
use olmort::Model;

fn pack(model: &str, scratch: &Scratch) -> std::path::PathBuf {
    let out = scratch.path(&format!("{model}.bin"));
    olmo_e2e::pack(&fixtures().join("chat").join(model), &out);
    out
}

fn open(path: &Path) -> MappedFile {
    MappedFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn packed_templates_render_and_encode_as_transformers() {
    let cases = chat_cases::<Message>();
    let tools = Tools::parse(&cases.tools_json).unwrap();
    let scratch = Scratch::new("chat-templates");
    let (mut rendered, mut refused, mut sanitized) = (0, 0, 0);
    for model in ["olmo2", "chatml", "olmo3_tools", "olmo3_think"] {
        let map = open(&pack(model, &scratch));
        let blob = Blob::parse(map.bytes()).unwrap();
        let m = Model::new(&blob).unwrap();
        let tokenizer = Tokenizer::new(m.vocab.expect("packed with vocab.txt"));
        for case in cases.cases.iter().filter(|c| c.model == model) {
            let what = format!("{model}/{}/{} (generation prompt {})", case.template, case.conversation, case.add_generation_prompt);
            let template = ChatTemplate::from_chat_info(blob.manifest.chat.as_ref(), Some(&case.template)).unwrap();
            let messages = &cases.conversations[&case.conversation];
            let tools = case.tools.then_some(&tools);
            let text = template.render(messages, tools, case.add_generation_prompt);
            let ids = template.encode(&tokenizer, messages, tools, case.add_generation_prompt);
            match (&case.text, &case.error) {
                (Some(want), None) => {
                    assert_eq!(&text.unwrap(), want, "{what}");
                    let ids = ids.unwrap();
                    assert_eq!(Some(&ids), case.ids.as_ref(), "{what}");
                    // The sanitized ids decode to the rendered text, markers removed.
                    let bytes = tokenizer.decode(&ids);
                    assert_eq!(String::from_utf8(bytes).unwrap(), want.replace(['\u{F0000}', '\u{F0001}'], ""), "{what}");
                    if case.unsanitized_ids != case.ids {
                        sanitized += 1;
                    }
                    rendered += 1;
                }
                (None, Some(message)) => {
                    let e = text.unwrap_err().to_string();
                    assert!(e.contains(message) && e.contains(&format!("{:?}", case.template)), "{what}: {e}");
                    assert_eq!(ids.unwrap_err().to_string(), e);
                    refused += 1;
                }
                _ => panic!("{what}: a case has a text or an error"),
            }
        }
    }
    // Every case ran: the four template styles (OLMo-3's with tools, calls and their
    // results; a thinking model's), errors, and the spellings that stay text (in call
    // arguments too).
    assert_eq!((rendered, refused, sanitized), (98, 4, 26));
}

#[test]
fn inspect_shows_templates_special_tokens_and_eos_ids() {
    let scratch = Scratch::new("chat-inspect");
    let blob = pack("chatml", &scratch);
    let o = run("olmoc", &["inspect", blob.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for line in [
        "eos 100265,100257",
        "chat template \"default\": ",
        "chat template \"tool_use\": ",
        "  bos_token = \"<|endoftext|>\"",
        "  eos_token = \"<|im_end|>\"",
        "  pad_token = \"<|pad|>\"",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(!text.contains("unk_token"), "{text}");
    let blob = pack("olmo2", &scratch);
    let o = run("olmoc", &["inspect", blob.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("eos 100257 ") && text.contains("  unk_token = \"<|endoftext|>\""), "{text}");
}

#[test]
fn a_blob_without_a_template_says_so() {
    let scratch = Scratch::new("chat-none");
    let out = scratch.path("tiny.bin");
    olmo_e2e::pack(&fixtures().join("tiny"), &out);
    let map = open(&out);
    let blob = Blob::parse(map.bytes()).unwrap();
    let e = ChatTemplate::from_chat_info(blob.manifest.chat.as_ref(), None).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
    let blob_path = pack("chatml", &scratch);
    let map = open(&blob_path);
    let blob = Blob::parse(map.bytes()).unwrap();
    let e = ChatTemplate::from_chat_info(blob.manifest.chat.as_ref(), Some("rag")).unwrap_err().to_string();
    assert_eq!(e, "no chat template named \"rag\" in this model (it has \"default\", \"tool_use\")");
}
