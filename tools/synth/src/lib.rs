//! Procedural indoor scenes in the real raw formats (issue 2) — under construction.
