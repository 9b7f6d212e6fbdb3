//! Buffers that cannot exist are an error, not an abort.

use olmo_format::sample::{small_blob, Aligned};
use olmo_format::Blob;
use olmort::{Model, RunError, RunState};

#[test]
fn impossible_cache_sizes_are_refused() {
    let bytes = Aligned::new(&small_blob());
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    // Overflows usize when multiplied out, and (on 64-bit) asks for ~2^50 bytes.
    for positions in [usize::MAX / 4, 1 << 45] {
        match RunState::new(&model, positions) {
            Err(RunError::Usage(msg)) => assert!(msg.contains("fewer steps"), "{msg}"),
            Err(other) => panic!("{positions}: unexpected error {other}"),
            Ok(_) => panic!("{positions} positions allocated"),
        }
    }
    assert!(RunState::new(&model, 8).is_ok());
}
