//! (issue 6: VGGT / Perceiver / geometry head / fusion) — module under construction.
