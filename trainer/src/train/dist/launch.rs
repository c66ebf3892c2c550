//! How a process learns its place in a data-parallel job, from the environment its launcher set:
//!
//! - torchrun and compatible launchers (`train --nproc N` sets the same for its ranks): `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
//! - Slurm (`srun`): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, and the first host of
//!   `SLURM_JOB_NODELIST` as the rendezvous host (`MASTER_ADDR` / `MASTER_PORT` win when set).
//!
//! torchrun's variables win over Slurm's (a torchrun started by `srun` sees both).

use anyhow::{bail, ensure, Context, Result};

/// The rendezvous port when neither `MASTER_PORT` nor anything else names one (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Where the rank sits in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node: the GPU this rank uses.
    pub local_rank: usize,
    /// Host and port of rank 0's rendezvous (the NCCL unique id travels from there).
    pub master_addr: String,
    pub master_port: u16,
    /// "torchrun" or "slurm".
    pub source: &'static str,
}

fn parse<T: std::str::FromStr>(var: &str, value: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .trim()
        .parse()
        .with_context(|| format!("environment variable {var}={value:?} is not a valid number"))
}

/// Reads the launch variables through `get` (`std::env::var(..).ok()` in the binary). `None`
/// when no launcher set them (a plain single-process run).
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>> {
    let num = |var: &str| -> Result<Option<usize>> { get(var).map(|v| parse(var, &v)).transpose() };
    let (rank, world_size, local_rank, master_addr, source) =
        if let (Some(rank), Some(world_size)) = (num("RANK")?, num("WORLD_SIZE")?) {
            let local_rank = match num("LOCAL_RANK")? {
                Some(l) => l,
                None if world_size == 1 => 0,
                None => bail!(
                    "RANK and WORLD_SIZE are set but LOCAL_RANK is not (which GPU is this rank's?)"
                ),
            };
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None if world_size == 1 => "127.0.0.1".into(),
                None => {
                    bail!("RANK and WORLD_SIZE are set but MASTER_ADDR is not (where is rank 0?)")
                }
            };
            (rank, world_size, local_rank, master_addr, "torchrun")
        } else if let (Some(rank), Some(world_size)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?)
        {
            let local_rank = num("SLURM_LOCALID")?.unwrap_or(0);
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = get("SLURM_JOB_NODELIST")
                        .or_else(|| get("SLURM_NODELIST"))
                        .context("SLURM_PROCID is set but SLURM_JOB_NODELIST is not")?;
                    first_host(&list)
                        .with_context(|| format!("SLURM_JOB_NODELIST={list:?}: not a host list"))?
                }
            };
            (rank, world_size, local_rank, master_addr, "slurm")
        } else {
            return Ok(None);
        };
    let master_port = match get("MASTER_PORT") {
        Some(v) => parse("MASTER_PORT", &v)?,
        None => DEFAULT_MASTER_PORT,
    };
    let env = LaunchEnv {
        rank,
        world_size,
        local_rank,
        master_addr,
        master_port,
        source,
    };
    ensure!(env.world_size > 0, "{}: a world size of 0", env.source);
    ensure!(
        env.rank < env.world_size,
        "{}: rank {} is not below the world size {}",
        env.source,
        env.rank,
        env.world_size
    );
    Ok(Some(env))
}

/// The first host of a Slurm host list: `node[03-05,9],gpu1` → `node03`, `a[1-2]-ib[7]` → `a1-ib7`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    // The first top-level item (commas inside brackets belong to a range).
    let mut depth = 0i32;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let item = &list[..end];
    let mut host = String::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .with_context(|| format!("{item:?}: unclosed ["))?;
        let first = rest[open + 1..close].split(',').next().unwrap_or("");
        let start = first.split('-').next().unwrap_or("").trim();
        ensure!(
            !start.is_empty() && start.chars().all(|c| c.is_ascii_digit()),
            "{item:?}: range {first:?} does not start with a number"
        );
        host.push_str(start);
        rest = &rest[close + 1..];
    }
    ensure!(!rest.contains(']'), "{item:?}: unmatched ]");
    host.push_str(rest);
    ensure!(!host.is_empty(), "an empty host list");
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<LaunchEnv>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn no_launcher_means_no_launch_env() {
        assert_eq!(env(&[("HOME", "/root")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
            // torchrun inside srun: torchrun's variables win.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            LaunchEnv {
                rank: 5,
                world_size: 8,
                local_rank: 1,
                master_addr: "node7".into(),
                master_port: 1234,
                source: "torchrun"
            }
        );
        let e = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(e.master_port, DEFAULT_MASTER_PORT);
    }

    #[test]
    fn slurm_variables_and_the_first_host_of_the_node_list() {
        let e = env(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_JOB_NODELIST", "gpu-[012-015,020],login1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                e.rank,
                e.world_size,
                e.local_rank,
                e.master_addr.as_str(),
                e.master_port,
                e.source
            ),
            (6, 16, 2, "gpu-012", DEFAULT_MASTER_PORT, "slurm")
        );
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "a,b"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "40000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.1", 40000));
    }

    #[test]
    fn host_lists() {
        for (list, first) in [
            ("node01", "node01"),
            ("node[03-05,9],gpu1", "node03"),
            ("n[7],m[1-2]", "n7"),
            ("a[1-2]-ib[7-8]", "a1-ib7"),
            ("x-[0009]", "x-0009"),
            ("alpha,beta", "alpha"),
        ] {
            assert_eq!(first_host(list).unwrap(), first, "{list}");
        }
        for bad in ["", "node[", "node[a-b]", "node]"] {
            assert!(first_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        let e = env(&[("RANK", "two"), ("WORLD_SIZE", "4")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=\"two\""), "{e}");
        let e = env(&[
            ("RANK", "4"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank 4 is not below the world size 4"), "{e}");
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOCAL_RANK is not"), "{e}");
        let e = env(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SLURM_JOB_NODELIST"), "{e}");
    }
}
