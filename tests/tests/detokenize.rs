//! Detokenizing with the real dolma2 vocabulary (the copy in the tiny fixture).

use olmo_e2e::fixtures;
use olmo_format::vocab::Vocab;
use olmort::text::detokenize::{Escaped, Utf8Stream};

fn vocab() -> Vocab {
    let text = std::fs::read_to_string(fixtures().join("tiny").join("vocab.txt")).unwrap();
    Vocab::parse_vocab_txt(&text).unwrap()
}

fn stream(v: &Vocab, ids: &[usize]) -> String {
    let mut s = Utf8Stream::new();
    let mut out = Vec::new();
    for &id in ids {
        s.push(&v.tokens[id], &mut out).unwrap();
    }
    s.finish(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn the_real_vocabulary_decodes_to_bytes() {
    let v = vocab();
    assert_eq!(v.tokens.len(), 100278);
    assert_eq!(v.tokens[28070], b"Four");
    assert_eq!(v.tokens[5573], b" score");
    assert_eq!(v.tokens[198], b"\n");
    assert_eq!(v.tokens[271], b"\n\n");
    assert_eq!(v.tokens[197], b"\t");
    assert_eq!(v.tokens[1], b"\"");
    assert_eq!(v.tokens[53050], " café".as_bytes());
    assert_eq!(v.tokens[15406], "€".as_bytes());
    assert_eq!(v.tokens[100257], b"<|endoftext|>");
    assert!(v.special_ids.contains(&100257) && v.special_ids.contains(&100277));
    assert!(!v.special_ids.contains(&28070));
    // Every one of the 256 byte-level characters decodes: the single-byte tokens 0..256
    // of cl100k cover each byte value exactly once.
    let mut seen = [false; 256];
    for t in &v.tokens[..256] {
        assert_eq!(t.len(), 1);
        seen[t[0] as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn characters_split_across_tokens_join_when_streamed() {
    let v = vocab();
    // "€" as 0xE2 | 0x82 0xAC, and as 0xE2 0x82 | 0xAC.
    assert_eq!(v.tokens[158], [0xE2]);
    assert_eq!(v.tokens[7644], [0x82, 0xAC]);
    assert_eq!(stream(&v, &[28070, 158, 7644]), "Four€");
    assert_eq!(stream(&v, &[16275, 105, 198]), "€\n");
    // "😀" as 0xF0 0x9F 0x98 | 0x80.
    assert_eq!(stream(&v, &[76460, 222]), "😀");
}

#[test]
fn a_token_holding_half_a_character_prints_escaped_in_a_trace() {
    let v = vocab();
    assert_eq!(Escaped(&v.tokens[158]).to_string(), "\\xe2");
    assert_eq!(Escaped(&v.tokens[198]).to_string(), "\\n");
    assert_eq!(Escaped(&v.tokens[1]).to_string(), "\\\"");
    assert_eq!(Escaped(&v.tokens[53050]).to_string(), " café");
}
