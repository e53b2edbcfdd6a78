//! ckpt: aligned tar archives whose file data is shared (reflinked), not copied.
