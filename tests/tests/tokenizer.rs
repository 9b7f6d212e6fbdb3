//! The built-in tokenizer against real data: the seed texts with their ids, the varied
//! cases from the reference tokenizer, and encode/decode round trips.

use olmo_e2e::fixtures;
use olmo_format::vocab::{Vocab, VocabView};
use olmo_format::VocabInfo;
use olmort::text::tokenizer::Tokenizer;
use serde::Deserialize;

/// The dolma2 vocabulary from the tiny fixture, packed as a blob holds it.
struct Packed {
    info: VocabInfo,
    offsets: Vec<u32>,
    bytes: Vec<u8>,
}

impl Packed {
    fn dolma2() -> Packed {
        let path = fixtures().join("tiny/vocab.txt");
        let text = std::fs::read_to_string(&path).expect("tiny/vocab.txt");
        let vocab = Vocab::parse_vocab_txt(&text).expect("vocab.txt parses");
        let olmo_format::vocab::PackedVocab { offsets, bytes } = vocab.to_packed();
        Packed {
            info: vocab.info(),
            offsets,
            bytes,
        }
    }

    fn tokenizer(&self) -> Tokenizer<'_> {
        Tokenizer::new(VocabView::new(&self.info, &self.offsets, &self.bytes))
    }
}

fn read_ids(path: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixtures().join(path)).expect(path);
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn seed_texts_encode_to_their_ids() {
    let packed = Packed::dolma2();
    let t = packed.tokenizer();
    for name in ["archilles", "dodonaea"] {
        let text = std::fs::read_to_string(fixtures().join(format!("seed/{name}.txt"))).unwrap();
        let expected = read_ids(&format!("seed/{name}.tokens.bin"));
        // The texts end in a newline and so do the ids (".\n" is one token).
        assert!(text.ends_with('\n'));
        assert_eq!(t.encode(&text, false).unwrap(), expected, "{name}");
        assert_eq!(t.decode(&expected), text.as_bytes());
    }
    assert_eq!(
        t.encode("Four score and seven", false).unwrap(),
        read_ids("seed/fourscore.tokens.bin")
    );
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases(file: &str) -> Vec<Case> {
    let path = fixtures().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_cases(file: &str, min_cases: usize) {
    let packed = Packed::dolma2();
    let t = packed.tokenizer();
    let cases = cases(file);
    assert!(cases.len() >= min_cases, "{file}: only {} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let got = t.encode(&case.text, false).unwrap();
        if got != case.ids {
            wrong.push(format!("{:?}\n  expected {:?}\n  got      {:?}", case.text, case.ids, got));
        }
        assert_eq!(t.decode(&got), case.text.as_bytes(), "round trip of {:?}", case.text);
    }
    assert!(wrong.is_empty(), "{file}: {} of {} cases differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[test]
fn varied_cases_match_the_reference_tokenizer() {
    check_cases("tokenizer_cases.json", 40);
}

#[test]
fn random_strings_match_the_reference_tokenizer() {
    check_cases("tokenizer_random_cases.json", 500);
}

#[test]
fn special_tokens_only_when_asked() {
    let packed = Packed::dolma2();
    let t = packed.tokenizer();
    let text = "The end.<|endoftext|>Next <|pad|>";
    let special = t.encode(text, true).unwrap();
    assert_eq!(t.special_id("<|endoftext|>"), Some(100257));
    assert_eq!(special, [791, 842, 13, 100257, 5971, 220, 100277]);
    let ordinary = t.encode(text, false).unwrap();
    assert!(ordinary.iter().all(|&id| id < 100256), "{ordinary:?}");
    assert_eq!(t.decode(&special), text.as_bytes());
    assert_eq!(t.decode(&ordinary), text.as_bytes());
}

/// xorshift64*: the test's own deterministic stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random string mixing ASCII, whitespace, line breaks, digits, apostrophes and
/// characters from every plane.
fn random_text(rng: &mut Rng) -> String {
    let len = rng.below(40) as usize;
    let mut s = String::new();
    for _ in 0..len {
        let c = match rng.below(10) {
            0 => [' ', ' ', '\n', '\r', '\t', '\u{a0}', '\u{3000}'][rng.below(7) as usize],
            1 => ['\'', 's', 'S', 'l', 'L', 'd', '\u{17f}'][rng.below(7) as usize],
            2 => char::from_u32(b'0' as u32 + rng.below(10) as u32).unwrap(),
            3 | 4 => char::from_u32(0x20 + rng.below(0x5f) as u32).unwrap(),
            5 => char::from_u32(rng.below(0x80) as u32).unwrap(),
            6 => char::from_u32(0x80 + rng.below(0x780) as u32).unwrap(),
            7 => char::from_u32(0x800 + rng.below(0xF800) as u32).unwrap_or('\u{fffd}'),
            8 => char::from_u32(0x1F300 + rng.below(0x300) as u32).unwrap(),
            _ => char::from_u32(rng.below(0x110000) as u32).unwrap_or('x'),
        };
        s.push(c);
    }
    s
}

#[test]
fn encode_then_decode_is_the_identity() {
    let packed = Packed::dolma2();
    let t = packed.tokenizer();
    let mut rng = Rng(0x5eed_0f01_2025);
    for _ in 0..3000 {
        let text = random_text(&mut rng);
        for special in [false, true] {
            let ids = t.encode(&text, special).unwrap();
            assert_eq!(t.decode(&ids), text.as_bytes(), "{text:?}");
            assert!(ids.iter().all(|&id| id < 100278));
        }
    }
}
