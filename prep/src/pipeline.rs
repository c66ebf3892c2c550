//! Shared driver of the prep binaries: common arguments, scene-parallel run, shard splitting (issue 3) — under construction.
