//! The caption scores ScanQA's official `score.py` reports: BLEU-1..4, ROUGE-L and CIDEr(-D), as
//! `pycocoevalcap` (tylin/coco-caption) computes them (FORMATS.md §6.1–6.2), and [`ptb_tokenize`], an
//! approximation of the Java PTBTokenizer it runs first. METEOR needs the Java METEOR jar and is not
//! computed here.
//!
//! The scorers take text that is already tokenized (tokens separated by spaces), as pycocoevalcap's
//! do after its tokenizer; scores are fractions (ScanQA tables print them ×100). Checked against
//! pycocoevalcap 1.2 by `tests/caption_golden.rs`.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum CaptionError {
    #[error("{candidates} candidates but {references} reference lists")]
    LengthMismatch {
        candidates: usize,
        references: usize,
    },
    #[error("question {index} has no reference answer")]
    NoReferences { index: usize },
    #[error("CIDEr is undefined here: every reference answer of the {questions} questions is empty after PTB tokenization (punctuation only), so there are no n-grams to weigh (pycocoevalcap raises on this set too)")]
    NoReferenceNgrams { questions: usize },
}

/// Corpus scores of one set of questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionScores {
    /// Cumulative BLEU-1..4 (corpus level, `closest` reference length).
    pub bleu: [f64; 4],
    /// Mean ROUGE-L (β = 1.2).
    pub rouge_l: f64,
    /// Mean CIDEr-D (n = 1..4, σ = 6, ×10 as pycocoevalcap).
    pub cider: f64,
}

/// Punctuation tokens pycocoevalcap drops after tokenizing. The bracket tokens are listed upper
/// case there but the tokenizer runs with `-lowerCase`, so `-lrb-` and friends survive — as they do
/// in the official scores.
const DROPPED: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Clitics the PTB tokenizer splits off a word ("it's" → "it 's", "don't" → "do n't").
const CLITICS: [&str; 6] = ["s", "d", "m", "ll", "re", "ve"];

/// Words the PTB tokenizer splits in two.
const SPLIT_WORDS: [(&str, &str, &str); 6] = [
    ("cannot", "can", "not"),
    ("gonna", "gon", "na"),
    ("gotta", "got", "ta"),
    ("wanna", "wan", "na"),
    ("lemme", "lem", "me"),
    ("gimme", "gim", "me"),
];

/// Abbreviations that keep their final period ("no." only before a number: "no. 5").
const ABBREVIATIONS: [&str; 13] = [
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "co", "inc", "ft",
];

/// Characters the Java tokenizer rewrites before splitting, with what it makes of them: curly double
/// quotes become `` `` ``/`''` and dashes `--` (all dropped as punctuation), `½` the token `1/2`,
/// `°` a token of its own ("90°" → "90 °").
const REWRITES: [(char, &str); 6] = [
    ('\u{201c}', " \" "),
    ('\u{201d}', " \" "),
    ('\u{2014}', " -- "),
    ('\u{2013}', " -- "),
    ('\u{bd}', " 1/2 "),
    ('\u{b0}', " \u{b0} "),
];

/// Emoticons kept as one token, their bracket written as the tokenizer writes brackets
/// (":)" → ":-rrb-", ":-(" → ":--lrb-").
fn emoticon(chunk: &str) -> Option<String> {
    let chars: Vec<char> = chunk.chars().collect();
    let (first, last) = (*chars.first()?, *chars.last()?);
    let nose_ok = match chars.len() {
        2 => true,
        3 => chars[1] == '-',
        _ => false,
    };
    let prefix: String = chars[..chars.len() - 1].iter().collect();
    (matches!(first, ':' | ';') && matches!(last, '(' | ')') && nose_ok)
        .then(|| format!("{prefix}{}", bracket_token(last)))
}

/// Symbols that always stand alone as tokens (and are kept).
const SYMBOLS: [char; 9] = ['$', '%', '&', '#', '=', '+', '~', '*', '|'];

/// Lower-cased PTB-style tokens of `text` joined by single spaces, punctuation dropped, as
/// pycocoevalcap's `PTBTokenizer` (CoreNLP 3.4.1, `-preserveLines -lowerCase`) gives them for short
/// answers: clitics split off ("do n't", "it 's"), a few words split ("can not", "gon na"),
/// brackets as `-lrb-`/`-rrb-`/`-lsb-`/`-rsb-`/`-lcb-`/`-rcb-`, symbols such as `$ % & + =` apart,
/// commas, colons and periods kept inside numbers and words, hyphens and slashes inside words,
/// common abbreviations keep their period, curly quotes and apostrophes, dashes, `½`, `°`, signs,
/// times ("10:30 pm") and emoticons (":-rrb-") as Java writes them. Checked against the Java
/// tokenizer on every string of the golden set and, live where Java and the jar are installed, on
/// the corpus of `tests/ptb_java.rs`; the differences known ("y'all", "rock'n'roll", "'tis",
/// "AT&T" — Java keeps `&` inside an all-capitals word, which needs the original case) are
/// listed and pinned in `tests/caption_golden.rs` and `tests/ptb_java.rs`.
pub fn ptb_tokenize(text: &str) -> String {
    let mut lower = String::with_capacity(text.len());
    for c in text.to_lowercase().chars() {
        match REWRITES.iter().find(|(from, _)| *from == c) {
            Some((_, to)) => lower.push_str(to),
            None => lower.push(c),
        }
    }
    let mut tokens = Vec::new();
    let chunks: Vec<&str> = lower.split_whitespace().collect();
    for (i, chunk) in chunks.iter().enumerate() {
        if let Some(token) = emoticon(chunk) {
            tokens.push(token);
            continue;
        }
        let before_number = chunks
            .get(i + 1)
            .is_some_and(|c| c.starts_with(|d: char| d.is_ascii_digit()));
        split_chunk(chunk, before_number, &mut tokens);
    }
    let mut out = Vec::with_capacity(tokens.len());
    for token in tokens {
        if token.is_empty() || DROPPED.contains(&token.as_str()) {
            continue;
        }
        match SPLIT_WORDS.iter().find(|(word, _, _)| *word == token) {
            Some((_, first, second)) => out.extend([first.to_string(), second.to_string()]),
            None => out.push(token),
        }
    }
    out.join(" ")
}

/// Splits one whitespace-free, lower-cased chunk into tokens (punctuation tokens included; the
/// caller drops them).
fn split_chunk(chunk: &str, before_number: bool, out: &mut Vec<String>) {
    let chars: Vec<char> = chunk.chars().collect();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    };
    let digit_at = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_some_and(|c| c.is_ascii_digit())
    };
    let alnum_at = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_some_and(|c| c.is_alphanumeric())
    };
    let run_of = |i: usize, c: char| chars[i..].iter().take_while(|&&d| d == c).count();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1);
        let next = Some(i + 1);
        let mut step = 1;
        match c {
            '(' | ')' | '[' | ']' | '{' | '}' => {
                flush(&mut word, out);
                out.push(bracket_token(c).to_string());
            }
            // A sign before a number stays with it ("+5").
            '+' if word.is_empty() && digit_at(next) => word.push(c),
            c if SYMBOLS.contains(&c) => {
                flush(&mut word, out);
                out.push(c.to_string());
            }
            '"' | ';' => flush(&mut word, out),
            // Inside a word ("a?b") they are part of it.
            '!' | '?' if alnum_at(prev) && alnum_at(next) => word.push(c),
            '!' | '?' => {
                // A run of them is one token ("?!", "???"); only a lone "!" or "?" is dropped.
                flush(&mut word, out);
                step = chars[i..]
                    .iter()
                    .take_while(|&&d| d == '!' || d == '?')
                    .count();
                out.push(chars[i..i + step].iter().collect());
            }
            ',' | ':' if digit_at(prev) && digit_at(next) => word.push(c),
            ',' | ':' => flush(&mut word, out),
            '.' => {
                step = run_of(i, '.');
                let at_end = i + step == chars.len() || !chars[i + step].is_alphanumeric();
                let keep = step == 1
                    && ((digit_at(prev) && digit_at(next))
                        || !at_end // inside a word: "www.example.com"
                        || word.contains('.') // "u.s.", "e.g."
                        || ABBREVIATIONS.contains(&word.as_str())
                        || (word == "no" && before_number && i + 1 == chars.len()));
                if keep {
                    word.push(c);
                } else {
                    flush(&mut word, out);
                }
            }
            '-' => {
                step = run_of(i, '-');
                let next_alnum = chars.get(i + 1).is_some_and(|d| d.is_alphanumeric());
                let joins_words = step == 1 && !word.is_empty() && next_alnum;
                let negative_number = step == 1 && word.is_empty() && digit_at(next);
                if joins_words || negative_number {
                    word.push(c);
                } else {
                    flush(&mut word, out);
                }
            }
            // A curly apostrophe splits clitics as the straight one does ("it’s" → "it 's"); a
            // curly opening single quote is a quote mark.
            '\'' | '\u{2019}' | '\u{2018}' => {
                let rest: String = chars[i + 1..]
                    .iter()
                    .take_while(|d| d.is_alphanumeric())
                    .collect();
                let rest_len = rest.chars().count();
                let rest_ends_chunk = chars
                    .get(i + 1 + rest_len)
                    .is_none_or(|d| !d.is_alphanumeric());
                let after_letter = word.chars().last().is_some_and(char::is_alphabetic);
                if after_letter && rest == "t" && word.ends_with('n') && rest_ends_chunk {
                    word.pop(); // "don't" → "do" "n't"
                    flush(&mut word, out);
                    out.push("n't".to_string());
                    step = 2;
                } else if rest_ends_chunk && CLITICS.contains(&rest.as_str()) {
                    flush(&mut word, out); // "it's" → "it" "'s"
                    out.push(format!("'{rest}"));
                    step = 1 + rest_len;
                } else if c != '\u{2018}' && after_letter && rest.starts_with(char::is_alphabetic) {
                    word.push(c); // "o'clock", "ma'am", "o’clock" (kept curly)
                } else if c == '\''
                    && word.is_empty()
                    && rest.starts_with(|d: char| d.is_ascii_digit())
                {
                    word.push(c); // "'90s"
                } else {
                    flush(&mut word, out); // a quote mark
                }
            }
            // "10:30pm" → "10:30" "pm": a time's am/pm is a token of its own ("5pm" stays whole).
            'a' | 'p'
                if word.contains(':')
                    && word.ends_with(|d: char| d.is_ascii_digit())
                    && chars[i + 1..] == ['m'] =>
            {
                flush(&mut word, out);
                word.push(c);
            }
            _ => word.push(c),
        }
        i += step;
    }
    flush(&mut word, out);
}

fn bracket_token(c: char) -> &'static str {
    match c {
        '(' => "-lrb-",
        ')' => "-rrb-",
        '[' => "-lsb-",
        ']' => "-rsb-",
        '{' => "-lcb-",
        _ => "-rcb-",
    }
}

fn check(candidates: &[String], references: &[Vec<String>]) -> Result<(), CaptionError> {
    if candidates.len() != references.len() {
        return Err(CaptionError::LengthMismatch {
            candidates: candidates.len(),
            references: references.len(),
        });
    }
    match references.iter().position(|r| r.is_empty()) {
        Some(index) => Err(CaptionError::NoReferences { index }),
        None => Ok(()),
    }
}

/// All three scores of tokenized candidates against their tokenized references.
pub fn score(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<CaptionScores, CaptionError> {
    Ok(CaptionScores {
        bleu: bleu(candidates, references)?,
        rouge_l: mean(&rouge_l(candidates, references)?),
        cider: mean(&cider_d(candidates, references)?),
    })
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN; // numpy's mean of nothing
    }
    values.iter().sum::<f64>() / values.len() as f64
}

type Ngram<'a> = Vec<&'a str>;

/// Counts of the 1..=4-grams of whitespace-separated tokens.
fn ngram_counts(text: &str) -> (usize, HashMap<Ngram<'_>, usize>) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut counts = HashMap::new();
    for k in 1..=4 {
        for window in words.windows(k) {
            *counts.entry(window.to_vec()).or_insert(0) += 1;
        }
    }
    (words.len(), counts)
}

/// One question's BLEU statistics: clipped n-gram matches, candidate n-gram counts, candidate
/// length and the closest reference length.
#[derive(Debug, Clone, Copy, Default)]
struct BleuStats {
    correct: [usize; 4],
    guess: [usize; 4],
    test_len: usize,
    ref_len: usize,
}

impl BleuStats {
    fn of(cand: &str, refs: &[String]) -> BleuStats {
        let mut max_counts: HashMap<Ngram<'_>, usize> = HashMap::new();
        let mut lengths = Vec::new();
        for r in refs {
            let (len, counts) = ngram_counts(r);
            lengths.push(len);
            for (g, n) in counts {
                let m = max_counts.entry(g).or_insert(0);
                *m = (*m).max(n);
            }
        }
        let (len, counts) = ngram_counts(cand);
        // Closest reference length, ties to the shorter (Python's min over (|l − c|, l)).
        let closest = lengths
            .iter()
            .copied()
            .min_by_key(|&l| (l.abs_diff(len), l))
            .unwrap_or(0);
        let mut stats = BleuStats {
            test_len: len,
            ref_len: closest,
            ..BleuStats::default()
        };
        for k in 0..4 {
            stats.guess[k] = (len + 1).saturating_sub(k + 1);
        }
        for (g, n) in &counts {
            stats.correct[g.len() - 1] += (*n).min(max_counts.get(g).copied().unwrap_or(0));
        }
        stats
    }

    fn add(&mut self, other: &BleuStats) {
        for k in 0..4 {
            self.correct[k] += other.correct[k];
            self.guess[k] += other.guess[k];
        }
        self.test_len += other.test_len;
        self.ref_len += other.ref_len;
    }

    /// Cumulative BLEU-1..4 with pycocoevalcap's smoothing constants and brevity penalty.
    fn scores(&self) -> [f64; 4] {
        const TINY: f64 = 1e-15;
        const SMALL: f64 = 1e-9;
        let mut scores = [0.0; 4];
        let mut product = 1.0;
        for k in 0..4 {
            product *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            scores[k] = product.powf(1.0 / (k as f64 + 1.0));
        }
        let ratio = (self.test_len as f64 + TINY) / (self.ref_len as f64 + SMALL);
        if ratio < 1.0 {
            for s in &mut scores {
                *s *= (1.0 - 1.0 / ratio).exp();
            }
        }
        scores
    }
}

/// Corpus BLEU-1..4 as `Bleu(4).compute_score` (option `closest`): clipped n-gram matches and
/// lengths summed over questions, cumulative geometric means, brevity penalty `exp(1 − r/c)`.
pub fn bleu(candidates: &[String], references: &[Vec<String>]) -> Result<[f64; 4], CaptionError> {
    check(candidates, references)?;
    let mut total = BleuStats::default();
    for (cand, refs) in candidates.iter().zip(references) {
        total.add(&BleuStats::of(cand, refs));
    }
    Ok(total.scores())
}

/// Per-question BLEU-1..4, the second list `Bleu(4).compute_score` returns: each question's own
/// statistics with the same smoothing and brevity penalty.
pub fn bleu_per_item(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<Vec<[f64; 4]>, CaptionError> {
    check(candidates, references)?;
    Ok(candidates
        .iter()
        .zip(references)
        .map(|(cand, refs)| BleuStats::of(cand, refs).scores())
        .collect())
}

/// ROUGE-L per question: LCS of the space-split tokens, precision and recall maximised over the
/// references separately, F with β = 1.2. (Splits on single spaces, as pycocoevalcap does, so an
/// empty candidate is one empty token.)
pub fn rouge_l(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<Vec<f64>, CaptionError> {
    check(candidates, references)?;
    const BETA2: f64 = 1.2 * 1.2;
    Ok(candidates
        .iter()
        .zip(references)
        .map(|(cand, refs)| {
            let c: Vec<&str> = cand.split(' ').collect();
            let (mut precision, mut recall) = (0.0f64, 0.0f64);
            for r in refs {
                let r: Vec<&str> = r.split(' ').collect();
                let lcs = lcs_len(&r, &c) as f64;
                precision = precision.max(lcs / c.len() as f64);
                recall = recall.max(lcs / r.len() as f64);
            }
            if precision != 0.0 && recall != 0.0 {
                (1.0 + BETA2) * precision * recall / (recall + BETA2 * precision)
            } else {
                0.0
            }
        })
        .collect())
}

fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// One text's tf-idf vectors per n-gram order, their norms, and its "length". pycocoevalcap counts
/// the length as the number of **bigrams** (`if n == 1` on a zero-based order) — kept, since the
/// official numbers include it.
struct TfIdf<'a> {
    vectors: [HashMap<Ngram<'a>, f64>; 4],
    norms: [f64; 4],
    length: usize,
}

fn tf_idf<'a>(text: &'a str, doc_freq: &HashMap<Ngram<'a>, f64>, log_n: f64) -> TfIdf<'a> {
    let (_, counts) = ngram_counts(text);
    let mut vectors: [HashMap<Ngram<'a>, f64>; 4] = Default::default();
    let mut norms = [0.0; 4];
    let mut length = 0;
    for (g, tf) in counts {
        let order = g.len() - 1;
        let df = doc_freq.get(&g).copied().unwrap_or(0.0).max(1.0).ln();
        let value = tf as f64 * (log_n - df);
        norms[order] += value * value;
        if order == 1 {
            length += tf;
        }
        vectors[order].insert(g, value);
    }
    TfIdf {
        vectors,
        norms: norms.map(f64::sqrt),
        length,
    }
}

/// CIDEr-D per question: tf-idf over 1..4-grams with document frequencies from the references of
/// the evaluated set, clipped hypothesis weights, Gaussian length penalty (σ = 6), averaged over
/// orders and references, ×10.
pub fn cider_d(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<Vec<f64>, CaptionError> {
    check(candidates, references)?;
    const SIGMA: f64 = 6.0;
    let mut doc_freq: HashMap<Ngram<'_>, f64> = HashMap::new();
    for refs in references {
        let mut seen = HashSet::new();
        for r in refs {
            seen.extend(ngram_counts(r).1.into_keys());
        }
        for g in seen {
            *doc_freq.entry(g).or_insert(0.0) += 1.0;
        }
    }
    if doc_freq.is_empty() {
        // pycocoevalcap's `max(self.document_frequency.values())` fails on this set.
        return Err(CaptionError::NoReferenceNgrams {
            questions: references.len(),
        });
    }
    let log_n = (references.len() as f64).ln();
    Ok(candidates
        .iter()
        .zip(references)
        .map(|(cand, refs)| {
            let hyp = tf_idf(cand, &doc_freq, log_n);
            let mut sum = [0.0f64; 4];
            for r in refs {
                let reference = tf_idf(r, &doc_freq, log_n);
                let delta = hyp.length as f64 - reference.length as f64;
                for n in 0..4 {
                    let mut value = 0.0;
                    for (g, h) in &hyp.vectors[n] {
                        let r = reference.vectors[n].get(g).copied().unwrap_or(0.0);
                        value += h.min(r) * r;
                    }
                    if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
                        value /= hyp.norms[n] * reference.norms[n];
                    }
                    sum[n] += value * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                }
            }
            sum.iter().sum::<f64>() / 4.0 / refs.len() as f64 * 10.0
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn tokenizer_cases() {
        let cases = [
            ("It's the chair's leg.", "it 's the chair 's leg"),
            (
                "the T-shirt (white) on the bed!",
                "the t-shirt -lrb- white -rrb- on the bed",
            ),
            ("don't know", "do n't know"),
            (
                "2 chairs, 1 table; and a sofa...",
                "2 chairs 1 table and a sofa",
            ),
            ("1,000 at 10:30 or 3.5", "1,000 at 10:30 or 3.5"),
            ("\"quoted\" 'single'", "quoted single"),
            ("o'clock", "o'clock"),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(ptb_tokenize(text), expected, "{text:?}");
        }
    }

    #[test]
    fn perfect_answers_score_one_and_errors_name_the_problem() {
        let cands = s(&["on the left side of the table", "brown"]);
        let refs = vec![
            s(&["on the left side of the table"]),
            s(&["brown", "dark brown"]),
        ];
        let b = bleu(&cands, &refs).unwrap();
        assert!(b.iter().all(|x| (x - 1.0).abs() < 1e-6), "{b:?}");
        assert_eq!(rouge_l(&cands, &refs).unwrap(), [1.0, 1.0]);
        assert_eq!(
            bleu(&cands, &refs[..1]).unwrap_err().to_string(),
            "2 candidates but 1 reference lists"
        );
        let empty = vec![s(&["x"]), vec![]];
        assert_eq!(
            score(&cands, &empty).unwrap_err(),
            CaptionError::NoReferences { index: 1 }
        );
        // References that are all punctuation leave CIDEr nothing to weigh: an error, as the
        // official scorer raises, not a score of 0. One reference with a word is enough.
        let punctuation = vec![s(&["."]), s(&["?", "..."])]
            .iter()
            .map(|r| r.iter().map(|x| ptb_tokenize(x)).collect())
            .collect::<Vec<Vec<String>>>();
        let err = cider_d(&cands, &punctuation).unwrap_err();
        assert_eq!(err, CaptionError::NoReferenceNgrams { questions: 2 });
        assert_eq!(
            err.to_string(),
            "CIDEr is undefined here: every reference answer of the 2 questions is empty after PTB tokenization (punctuation only), so there are no n-grams to weigh (pycocoevalcap raises on this set too)"
        );
        assert_eq!(score(&cands, &punctuation).unwrap_err(), err);
        let one_word = vec![s(&["."]), s(&["brown"])];
        assert_eq!(cider_d(&cands, &one_word).unwrap()[0], 0.0);
    }
}
