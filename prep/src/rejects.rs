//! Rejected raw records: rejects.jsonl (issue 3) — module under construction.
