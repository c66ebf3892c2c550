//! (issue 3: shard contract / prep-scanqa / prep-sqa3d) — module under construction.
