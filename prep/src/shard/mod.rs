//! The shard contract (DESIGN.md): what prep writes and train reads, schema as code in this one place.
//!
//! A prepared dataset is a folder of Arrow IPC files plus `manifest.json` and `rejects.jsonl`:
//!
//! - `scenes-NNNNN.arrow` ([`scenes_schema`]): one row per scene — dataset, scene id, the views (frame
//!   id, encoded image bytes, encoding, width, height, geometry or null), the raw world pose of the
//!   first view (the sample reference frame's anchor) and the dataset's axis alignment.
//! - `samples-NNNNN.arrow` ([`samples_schema`]): one row per question or instruction.
//! - The output of one `--shard-index i --num-shards n` job names its files
//!   `scenes-partIIIII-NNNNN.arrow` so that parts can be merged into one folder.
//!
//! Files are written under a temporary name, fsynced and renamed ([`AtomicFile`]); a new file is
//! started once one reaches [`WriterOptions::target_file_bytes`]. The same records in the same order
//! give byte-identical files. [`Dataset`] reads them memory-mapped (zero copy) with random access by
//! row and by scene id.
//!
//! Geometry conventions (frames, pixels, depth bins) are documented in [`crate::geometry`].
//!
//! The folder's files, by part of the contract (everything public is re-exported here, so paths are
//! `roomplan_prep::shard::X`):
//!
//! - `schema.rs`: the Arrow schemas and [`SCHEMA_VERSION`];
//! - `records.rs`: the row records and their last-gate checks;
//! - `batch.rs`: records ↔ record batches ([`TableRecord`]);
//! - `atomic.rs`: all-or-nothing files ([`AtomicFile`], [`write_atomic`]);
//! - `writer.rs`: [`DatasetWriter`] and [`WriterOptions`];
//! - `reader.rs`: [`ShardFile`], [`TableReader`], [`Dataset`];
//! - `verify.rs`: [`verify_dataset`] and [`merge_datasets`];
//! - `describe.rs`: readable dumps; `example.rs`: a small example dataset;
//! - `error.rs`: [`ShardError`];
//! - `features.rs` (public module `roomplan_prep::shard::features`): feature folders, the frozen
//!   VGGT's outputs once per scene (`tools cache-features`), their schema and pins.
//!
//! The manifest ([`crate::manifest`]), the rejects log ([`crate::rejects`]) and the staging of a new
//! dataset beside an old one ([`crate::staging`]) are modules of their own beside this one.

mod atomic;
mod batch;
mod describe;
mod error;
mod example;
pub mod features;
mod reader;
mod records;
mod schema;
mod verify;
mod writer;

pub use crate::staging::is_dataset_file_name;
pub use crate::staging::CommitStep;
pub use atomic::{write_atomic, AtomicFile};
pub use batch::TableRecord;
pub use describe::{describe_sample, describe_scene, fmt_float};
pub use error::ShardError;
pub use example::example_records;
pub use reader::{Dataset, ShardFile, TableReader};
pub use records::{
    AgentPose, Geometry, SampleRecord, SceneRecord, ViewRecord, ENCODING_JPEG, ENCODING_PNG,
};
pub use schema::{
    agent_fields, geometry_fields, samples_schema, scenes_schema, schema_of, view_fields,
    SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLE_KEY,
};
pub use verify::{merge_datasets, verify_dataset, VerifyReport};
pub use writer::{shard_file_name, DatasetWriter, WriterOptions};
