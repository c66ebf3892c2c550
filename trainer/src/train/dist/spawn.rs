//! One process per rank on this node, as torchrun starts them: `train --nproc N --launcher
//! processes` re-executes this binary N times with `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` set ([`super::launch`] reads them in the
//! children), waits for all of them, and exits as the first rank that failed.
//!
//! When a rank fails, the others usually fail soon after with a collective error naming it; those
//! still running after [`KILL_GRACE`] (a rank stuck in NCCL, which cannot be interrupted) are
//! killed, so the parent never waits forever.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long the other ranks may take to end on their own once one has failed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// A rank's process ended without success; the parent exits with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rank {rank} of {world} (pid {pid}) {how}: the first rank to fail{others}")]
pub struct RankFailed {
    pub rank: usize,
    pub world: usize,
    pub pid: u32,
    /// "exited with code 3", "was killed by signal 9".
    pub how: String,
    /// The exit code the parent passes on (128 + signal for a signal).
    pub code: i32,
    /// What became of the other failed ranks.
    others: String,
}

/// The command line of a rank: this process's arguments (without the program name) minus the
/// options that start ranks (`--nproc`, `--launcher`), with `--run-dir` set so that every rank
/// writes the same run (the default name carries the start time).
pub fn child_args(args: &[String], run_dir: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut has_run_dir = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nproc" | "--launcher" => {
                it.next();
            }
            _ if a.starts_with("--nproc=") || a.starts_with("--launcher=") => {}
            "--" => {
                out.push(a.clone());
                out.extend(it.by_ref().cloned());
            }
            _ => {
                has_run_dir |= a == "--run-dir" || a.starts_with("--run-dir=");
                out.push(a.clone());
            }
        }
    }
    if !has_run_dir {
        // Before a possible "--", where options are still options.
        let at = out.iter().position(|a| a == "--").unwrap_or(out.len());
        out.splice(
            at..at,
            ["--run-dir".to_string(), run_dir.display().to_string()],
        );
    }
    out
}

/// A TCP port free on this machine now (the OS picks it), for `MASTER_PORT`.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn describe(status: ExitStatus) -> (String, i32) {
    if let Some(code) = status.code() {
        return (format!("exited with code {code}"), code);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return (format!("was killed by signal {sig}"), 128 + sig);
        }
    }
    ("ended abnormally".into(), 1)
}

/// Starts `exe args` as ranks `0..nproc` of a job whose rank 0 listens on
/// `master_addr:master_port`, waits for every rank, and fails with [`RankFailed`] for the first
/// rank that failed.
pub fn run_processes(
    exe: &Path,
    args: &[String],
    nproc: usize,
    master_addr: &str,
    master_port: u16,
    grace: Duration,
) -> Result<()> {
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let spawned = Command::new(exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", master_addr)
            .env("MASTER_PORT", master_port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()));
        match spawned {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                for (_, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let mut running: Vec<(usize, Child)> = children;
    let mut first: Option<(usize, u32, String, i32)> = None;
    let mut others = Vec::new();
    let mut kill_at: Option<Instant> = None;
    while !running.is_empty() {
        let mut still = Vec::with_capacity(running.len());
        for (rank, mut child) in running {
            match child.try_wait()? {
                None => still.push((rank, child)),
                Some(status) if status.success() => {}
                Some(status) => {
                    let (how, code) = describe(status);
                    eprintln!("rank {rank} of {nproc} (pid {}) {how}", child.id());
                    if first.is_none() {
                        first = Some((rank, child.id(), how, code));
                        kill_at = Some(Instant::now() + grace);
                    } else {
                        others.push(format!("rank {rank} {how}"));
                    }
                }
            }
        }
        running = still;
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (rank, child) in &mut running {
                eprintln!(
                    "rank {rank} of {nproc} (pid {}) still runs {grace:?} after rank {} failed: \
                     killing it",
                    child.id(),
                    first.as_ref().map_or(0, |f| f.0)
                );
                let _ = child.kill();
                let _ = child.wait();
                others.push(format!("rank {rank} was killed"));
            }
            running.clear();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first {
        None => Ok(()),
        Some((rank, pid, how, code)) => Err(RankFailed {
            rank,
            world: nproc,
            pid,
            how,
            code,
            others: if others.is_empty() {
                String::new()
            } else {
                format!(" (then: {})", others.join(", "))
            },
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn child_arguments_drop_the_launch_options_and_pin_the_run_directory() {
        let dir = PathBuf::from("data/runs/tiny-1");
        assert_eq!(
            child_args(
                &s(&[
                    "tiny",
                    "--nproc",
                    "2",
                    "--launcher=processes",
                    "--max-steps",
                    "3"
                ]),
                &dir
            ),
            s(&["tiny", "--max-steps", "3", "--run-dir", "data/runs/tiny-1"])
        );
        assert_eq!(
            child_args(
                &s(&[
                    "--nproc=4",
                    "--run-dir",
                    "r",
                    "--launcher",
                    "processes",
                    "x.yaml"
                ]),
                &dir
            ),
            s(&["--run-dir", "r", "x.yaml"])
        );
        assert_eq!(
            child_args(&s(&["--run-dir=r", "tiny", "--nproc", "2"]), &dir),
            s(&["--run-dir=r", "tiny"])
        );
    }

    #[test]
    fn every_rank_gets_torchruns_variables_and_the_first_failure_is_passed_on() {
        // The ranks are shells: rank 1 fails with code 3, rank 0 succeeds, rank 2 hangs and is
        // killed after the grace period.
        let script = r#"
            test "$WORLD_SIZE" = 3 -a "$LOCAL_WORLD_SIZE" = 3 -a "$RANK" = "$LOCAL_RANK" \
                -a "$MASTER_ADDR" = 127.0.0.1 -a "$MASTER_PORT" = 4321 -a "$0" = arg || exit 9
            case "$RANK" in 0) exit 0;; 1) sleep 0.2; exit 3;; *) sleep 30;; esac
        "#;
        let started = Instant::now();
        let e = run_processes(
            Path::new("/bin/sh"),
            &s(&["-c", script, "arg"]),
            3,
            "127.0.0.1",
            4321,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the hung rank"
        );
        let failed = e.downcast_ref::<RankFailed>().expect("a RankFailed");
        assert_eq!((failed.rank, failed.world, failed.code), (1, 3, 3));
        assert!(
            e.to_string().contains("rank 1 of 3")
                && e.to_string().contains(
                    "exited with code 3: the first rank to fail (then: rank 2 was killed)"
                ),
            "{e}"
        );
        run_processes(
            Path::new("/bin/sh"),
            &s(&["-c", "exit 0"]),
            2,
            "h",
            1,
            KILL_GRACE,
        )
        .unwrap();
        let e = run_processes(
            Path::new("/bin/sh"),
            &s(&["-c", "kill -9 $$"]),
            1,
            "h",
            1,
            KILL_GRACE,
        )
        .unwrap_err();
        let failed = e.downcast_ref::<RankFailed>().unwrap();
        assert_eq!((failed.rank, failed.code), (0, 137), "{e}");
        assert!(e.to_string().contains("was killed by signal 9"), "{e}");
    }
}
