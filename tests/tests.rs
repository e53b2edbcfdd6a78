//! ckpt's integration tests: one crate (one binary to build and link), one module per area.
//! Run one area with `cargo test --test tests hostile::`.

mod util;

mod commands;
mod corrupt_input;
mod export_faults;
mod extract_faults;
mod faults;
mod hook;
mod hostile;
mod interop;
mod memory;
mod page_cache;
mod podman;
mod podman_e2e;
mod proptest_roundtrip;
mod registry;
mod roundtrip;
mod seekable;
mod sparse_stream;
