//! roomplan-prep: raw datasets → Arrow shards (the shard contract of DESIGN.md).
//!
//! One concept, one home: `shard` is the contract that prep writes and train reads.

// The contract and what every prep binary shares (issue 3).
pub mod shard;
pub mod manifest;
pub mod rejects;
pub mod json_records;
pub mod staging;
pub mod geometry;
pub mod imaging;
pub mod pipeline;
pub mod hash_cache;
pub mod allocator;
// ScanNet-based datasets (issue 3).
pub mod scannet;
pub mod scanqa;
pub mod sqa3d;
// ARKitScenes and RoomPlan (issue 4).
pub mod arkit;
pub mod roomplan;
pub mod actions;
