//! METEOR 1.5 as pycocoevalcap computes it: the official Java scorer (`meteor-1.5.jar`, shipped
//! with the `pycocoevalcap` package together with its paraphrase table) run as
//! `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`, fed the same lines as
//! `pycocoevalcap/meteor/meteor.py`:
//!
//! 1. per question `SCORE ||| ref 1 ||| … ||| ref n ||| hypothesis` → one line of sufficient statistics
//!    (the hypothesis with `|||` removed and double spaces made single, as the wrapper does);
//! 2. one `EVAL ||| stats 1 ||| … ||| stats N` → N per-question scores, then the corpus score
//!    computed from the pooled statistics (not a mean of the per-question scores).
//!
//! The corpus score is what ScanQA's `score.py` and the SQA3D/ScanQA tables report.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// The jar's file name inside `pycocoevalcap/meteor/`.
pub const JAR_NAME: &str = "meteor-1.5.jar";
/// Environment variable naming the jar (its folder must also hold `data/paraphrase-en.gz`).
pub const JAR_ENV: &str = "ROOMPLAN_METEOR_JAR";

const HOW_TO_INSTALL: &str = "METEOR runs the official METEOR 1.5 jar with Java: install Java \
(`apt-get install default-jre-headless`) and pycocoevalcap (`pip install pycocoevalcap`, which ships \
meteor-1.5.jar and its paraphrase table), or name the jar with --meteor-jar or ROOMPLAN_METEOR_JAR";

#[derive(Debug, Error)]
pub enum MeteorError {
    #[error("METEOR unavailable: {reason}. {HOW_TO_INSTALL}")]
    Unavailable { reason: String },
    #[error("METEOR: {0}")]
    Protocol(String),
    #[error("METEOR: {candidates} candidates but {references} reference lists")]
    LengthMismatch {
        candidates: usize,
        references: usize,
    },
}

fn unavailable(reason: impl Into<String>) -> MeteorError {
    MeteorError::Unavailable {
        reason: reason.into(),
    }
}

/// The jar to run: `explicit`, else `$ROOMPLAN_METEOR_JAR`, else the one inside the `pycocoevalcap`
/// package that `python3` imports. Checks that the file and its paraphrase table exist.
pub fn locate_jar(explicit: Option<&Path>) -> Result<PathBuf, MeteorError> {
    let jar = if let Some(p) = explicit {
        p.to_path_buf()
    } else if let Some(p) = std::env::var_os(JAR_ENV) {
        PathBuf::from(p)
    } else {
        let out = Command::new("python3")
            .args([
                "-c",
                "import importlib.util as u; s = u.find_spec('pycocoevalcap'); print(s.submodule_search_locations[0] if s else '')",
            ])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| unavailable(format!("cannot run python3 to find pycocoevalcap ({e})")))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if dir.is_empty() {
            return Err(unavailable("python3 has no pycocoevalcap package"));
        }
        Path::new(&dir).join("meteor").join(JAR_NAME)
    };
    if !jar.is_file() {
        return Err(unavailable(format!("{} does not exist", jar.display())));
    }
    let table = jar
        .parent()
        .unwrap_or(Path::new("."))
        .join("data/paraphrase-en.gz");
    if !table.is_file() {
        return Err(unavailable(format!(
            "{} (the paraphrase table beside the jar) does not exist",
            table.display()
        )));
    }
    Ok(jar)
}

/// METEOR scores of tokenized candidates against their tokenized references:
/// (corpus score, per-question scores), fractions in 0..=1.
pub fn meteor(
    jar: &Path,
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<(f64, Vec<f64>), MeteorError> {
    if candidates.len() != references.len() {
        return Err(MeteorError::LengthMismatch {
            candidates: candidates.len(),
            references: references.len(),
        });
    }
    let jar = jar
        .canonicalize()
        .map_err(|e| unavailable(format!("{}: {e}", jar.display())))?;
    let mut child = Command::new("java")
        .args(["-jar", "-Xmx2G"])
        .arg(&jar)
        .args(["-", "-", "-stdio", "-l", "en", "-norm"])
        .current_dir(jar.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| unavailable(format!("cannot run java ({e})")))?;
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let result = (|| {
        let mut read_line = |what: &str| -> Result<String, MeteorError> {
            let mut line = String::new();
            let n = stdout
                .read_line(&mut line)
                .map_err(|e| MeteorError::Protocol(format!("reading {what}: {e}")))?;
            if n == 0 {
                return Err(MeteorError::Protocol(format!(
                    "the scorer ended before sending {what}"
                )));
            }
            Ok(line.trim().to_string())
        };
        let mut eval_line = String::from("EVAL");
        for (i, (cand, refs)) in candidates.iter().zip(references).enumerate() {
            let hypothesis = cand.replace("|||", "").replace("  ", " ");
            let line = format!("SCORE ||| {} ||| {hypothesis}\n", refs.join(" ||| "));
            stdin
                .write_all(line.as_bytes())
                .and_then(|_| stdin.flush())
                .map_err(|e| MeteorError::Protocol(format!("writing question {i}: {e}")))?;
            let stats = read_line(&format!("the statistics of question {i}"))?;
            eval_line += " ||| ";
            eval_line += &stats;
        }
        eval_line.push('\n');
        stdin
            .write_all(eval_line.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| MeteorError::Protocol(format!("writing EVAL: {e}")))?;
        let parse = |text: String, what: &str| {
            text.parse::<f64>().map_err(|_| {
                MeteorError::Protocol(format!("{what}: expected a number, got {text:?}"))
            })
        };
        let mut items = Vec::with_capacity(candidates.len());
        for i in 0..candidates.len() {
            let what = format!("the score of question {i}");
            items.push(parse(read_line(&what)?, &what)?);
        }
        let corpus = parse(read_line("the corpus score")?, "the corpus score")?;
        Ok((corpus, items))
    })();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let errors = stderr_reader.join().unwrap_or_default();
    result.map_err(|e| match e {
        MeteorError::Protocol(msg) if !errors.trim().is_empty() => MeteorError::Protocol(format!(
            "{msg}; java said: {}",
            errors
                .trim()
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        )),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_jar_is_a_clear_message() {
        let err = locate_jar(Some(Path::new("/nonexistent/meteor-1.5.jar"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("METEOR unavailable: /nonexistent/meteor-1.5.jar does not exist."),
            "{text}"
        );
        assert!(text.contains("pip install pycocoevalcap"), "{text}");
        assert!(text.contains("default-jre-headless"), "{text}");
    }

    #[test]
    fn a_jar_without_its_paraphrase_table_is_refused() {
        let tmp = std::env::temp_dir().join(format!("roomplan-meteor-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let jar = tmp.join(JAR_NAME);
        std::fs::write(&jar, b"not a jar").unwrap();
        let text = locate_jar(Some(&jar)).unwrap_err().to_string();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(
            text.contains(
                "data/paraphrase-en.gz (the paraphrase table beside the jar) does not exist"
            ),
            "{text}"
        );
    }

    #[test]
    fn lengths_must_agree() {
        let err = meteor(Path::new("x.jar"), &["a".into()], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "METEOR: 1 candidates but 0 reference lists"
        );
    }
}
