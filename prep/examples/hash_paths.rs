//! Times sha256 of files through `read` into a buffer and through memory maps (whole file, or
//! windows of a given size, with or without MAP_POPULATE): alternating, several rounds, medians
//! of CPU time, beside `manifest::sha256_file` itself. Used to choose its path (BENCHMARKS.md,
//! "Hashing through memory maps").
//!
//! cargo run --release -p roomplan-prep --example hash_paths -- ROUNDS FILE...
use sha2::{Digest, Sha256};
use std::io::Read;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn by_read(path: &str, buf_len: usize) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; buf_len];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn by_map(path: &str, window: usize, populate: bool) -> String {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let mut h = Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = window.min(len - offset);
        let mut opts = memmap2::MmapOptions::new();
        opts.offset(offset as u64).len(n);
        if populate {
            opts.populate();
        }
        // SAFETY: a read-only map of a file nothing writes during the benchmark.
        let map = unsafe { opts.map(&f) }.unwrap();
        if !populate {
            let _ = map.advise(memmap2::Advice::Sequential);
        }
        h.update(&map[..]);
        offset += n;
    }
    hex::encode(h.finalize())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args[0].parse().unwrap();
    let files = &args[1..];
    type Way = (&'static str, Box<dyn Fn(&str) -> String>);
    let ways: Vec<Way> = vec![
        ("read 1 MiB", Box::new(|p| by_read(p, 1 << 20))),
        ("read 128 KiB", Box::new(|p| by_read(p, 128 << 10))),
        ("map whole", Box::new(|p| by_map(p, usize::MAX, false))),
        (
            "map whole populate",
            Box::new(|p| by_map(p, usize::MAX, true)),
        ),
        (
            "map 16 MiB windows",
            Box::new(|p| by_map(p, 16 << 20, false)),
        ),
        (
            "map 16 MiB windows populate",
            Box::new(|p| by_map(p, 16 << 20, true)),
        ),
        (
            "map 64 MiB windows populate",
            Box::new(|p| by_map(p, 64 << 20, true)),
        ),
        (
            "map 4 MiB windows populate",
            Box::new(|p| by_map(p, 4 << 20, true)),
        ),
        (
            "manifest::sha256_file",
            Box::new(|p| roomplan_prep::manifest::sha256_file(p.as_ref()).unwrap().0),
        ),
    ];
    let reference: Vec<String> = files.iter().map(|p| by_read(p, 1 << 20)).collect();
    let mut times = vec![Vec::new(); ways.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in ways.iter().enumerate() {
            let c0 = cpu_seconds();
            for (p, r) in files.iter().zip(&reference) {
                assert_eq!(&f(p), r);
            }
            times[i].push(cpu_seconds() - c0);
        }
    }
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    for ((name, _), mut t) in ways.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let m = t[t.len() / 2];
        println!(
            "{name:30} CPU {m:.3} s  {:.0} MiB/s",
            bytes as f64 / m / 1048576.0
        );
    }
}
