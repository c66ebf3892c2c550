//! Answer-matching metrics of the 3D question-answering benchmarks (FORMATS.md §6.1, 6.3–6.5):
//!
//! - ScanQA's official "Top1 (EM)" / "Top10 (EM)" ([`em_at_1`], [`em_at_k`]): raw string
//!   equality, no normalisation. Its third answer score, "Top1 (F-value)" (unigram F1 on WordNet
//!   lemmas), needs WordNet and is not implemented here.
//! - LEO's EM and refined EM ([`leo_em`], [`leo_refined_em`], [`leo_match`]) after its
//!   [`clean_answer`] normalisation, and its SQA3D question types ([`sqa3d_question_type`]).
//! - SQA3D's official top-1 accuracy ([`sqa3d_top1`]).
//! - The original project's own metric ([`predecessor_exact_match`]).
//! - Aggregates over a set of questions ([`score_scanqa`], [`score_sqa3d`]), in percent as the
//!   papers print them.
//!
//! The LEO functions are ports of `embodied-generalist/embodied-generalist@5e9a876`
//! (`data/data_utils.py`: `clean_answer`, `get_sqa_question_type`; `evaluator/scanqa_eval.py`:
//! `answer_match`), including their quirks, and are checked case by case against that code's output
//! by `tests/answers_golden.rs`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

use serde::Serialize;

/// Python's `str.isspace()`, which is also what `\s`, `str.split()` and `str.strip()` use on `str`
/// (Unicode 14 as in Python 3.11). It differs from [`char::is_whitespace`] by including the
/// information separators U+001C..U+001F.
pub fn is_python_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

// ---------------------------------------------------------------------------------------------
// ScanQA official (FORMATS §6.1)
// ---------------------------------------------------------------------------------------------

/// ScanQA "Top1 (EM)": the first prediction is one of the reference answers, compared as raw
/// strings (`"Brown"` does not match `"brown"`). No prediction counts as a miss.
pub fn em_at_1<P: AsRef<str>, A: AsRef<str>>(top: &[P], answers: &[A]) -> bool {
    em_at_k(top, answers, 1)
}

/// ScanQA "Top`k` (EM)" (`k` = 10 in the paper): any of the first `k` predictions is one of the
/// reference answers, compared as raw strings.
pub fn em_at_k<P: AsRef<str>, A: AsRef<str>>(top: &[P], answers: &[A], k: usize) -> bool {
    top.iter()
        .take(k)
        .any(|pred| answers.iter().any(|a| a.as_ref() == pred.as_ref()))
}

// ---------------------------------------------------------------------------------------------
// LEO (FORMATS §6.3)
// ---------------------------------------------------------------------------------------------

/// LEO's answer normalisation (`clean_answer`), step for step.
///
/// Lowercase; drop leading/trailing spaces and collapse runs of spaces; delete every character
/// outside `[a-zA-Z0-9,'\-:]` and Python whitespace; fix a table of typos; `tv` → `TV`; numbers
/// 0–20, 23 and `none` → words; `word2` → `word`; drop `a`/`an`/`the` before a word;
/// `backwards` → `backward`.
///
/// Faithful to the official code's surprises, e.g. the deletion runs after the space handling, so
/// `"chair ?"` → `"chair "` and `"chair . table"` → `"chair  table"`; `"1.5"` → `"fifteen"`;
/// `"café"` → `"caf"`. It is therefore not idempotent (`"a a chair"` → `"a chair"` → `"chair"`).
pub fn clean_answer(text: &str) -> String {
    let text = text.to_lowercase();
    let text = strip_trailing_spaces(&text);
    // `^[ ]+`: only U+0020, not other whitespace.
    let text = text.trim_start_matches(' ');
    let text = collapse_spaces(text);
    // The official `\.[ ]{2,}` → `. ` step is omitted: no run of two spaces survives the line
    // above. Its `ç` → `c` and `’` → `'` steps are omitted too: the deletion below has already
    // removed both characters.
    let text: String = text
        .chars()
        .filter(|&c| c.is_ascii_alphanumeric() || ",'-:".contains(c) || is_python_whitespace(c))
        .collect();
    // From here on only ASCII letters and digits are word characters, so Python's `\bWORD\b` is
    // "a maximal run of ASCII alphanumerics equal to WORD" (and the `regex` crate's Unicode `\b`
    // agrees with Python's on such text). The official passes run one after the
    // other; the typo and number passes are merged into one lookup each because no replacement is
    // a key of a later pass, but the `o' clock` pass must stay between them and the `word2` pass
    // (`"o' clock2"` keeps its space).
    let text = map_words(&text, fix_typo);
    // Python `re.sub(r"\bo'[ ]+clock\b", "o'clock", s)`.
    static O_CLOCK: OnceLock<Regex> = OnceLock::new();
    let o_clock = O_CLOCK.get_or_init(|| Regex::new(r"\bo'[ ]+clock\b").expect("valid pattern"));
    let text = o_clock.replace_all(&text, "o'clock");
    let text = map_words(&text, number_to_word);
    let mut text = map_words(&text, strip_word_digit);
    // Python `re.sub(r'\bARTICLE\b ([a-zA-Z]+)', r'\g<1>', s)` for a, an, the, in that order; like
    // `re.sub`, `replace_all` resumes after the consumed letters, so in "a a chair" only the first
    // `a` goes.
    static ARTICLES: OnceLock<[Regex; 3]> = OnceLock::new();
    let articles = ARTICLES.get_or_init(|| {
        ["a", "an", "the"]
            .map(|a| Regex::new(&format!(r"\b{a}\b ([a-zA-Z]+)")).expect("valid pattern"))
    });
    for article in articles {
        text = article.replace_all(&text, "$1").into_owned();
    }
    map_words(&text, |w| (w == "backwards").then_some("backward"))
}

/// Python `re.sub('[ ]+$', '', s)`: `$` also matches just before a final `\n`, so the spaces in
/// front of a trailing newline go, not those after it.
fn strip_trailing_spaces(text: &str) -> String {
    match text.strip_suffix('\n') {
        Some(body) => format!("{}\n", body.trim_end_matches(' ')),
        None => text.trim_end_matches(' ').to_string(),
    }
}

/// Python `re.sub(' {2,}', ' ', s)`.
fn collapse_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous_space = false;
    for c in text.chars() {
        if !(c == ' ' && previous_space) {
            out.push(c);
        }
        previous_space = c == ' ';
    }
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Replaces each maximal run of ASCII alphanumerics `w` with `f(w)` where that is `Some`.
/// Run boundaries are byte positions of ASCII characters, so slicing is always on char bounds.
fn map_words<'t>(text: &'t str, f: impl Fn(&'t str) -> Option<&'t str>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let word = is_word_byte(bytes[i]);
        while i < bytes.len() && is_word_byte(bytes[i]) == word {
            i += 1;
        }
        let run = &text[start..i];
        out.push_str(if word { f(run).unwrap_or(run) } else { run });
    }
    out
}

fn fix_typo(word: &str) -> Option<&str> {
    Some(match word {
        "letf" | "let" => "left",
        "tehre" => "there",
        "rigth" | "rght" => "right",
        "behine" => "behind",
        // The only place the official code puts capitals back.
        "tv" => "TV",
        "chai" => "chair",
        "wasing" => "washing",
        "waslked" => "walked",
        "oclock" => "o'clock",
        _ => return None,
    })
}

fn number_to_word(word: &str) -> Option<&str> {
    Some(match word {
        "0" | "none" => "zero",
        "1" => "one",
        "2" => "two",
        "3" => "three",
        "4" => "four",
        "5" => "five",
        "6" => "six",
        "7" => "seven",
        "8" => "eight",
        "9" => "nine",
        "10" => "ten",
        "11" => "eleven",
        "12" => "twelve",
        "13" => "thirteen",
        "14" => "fourteen",
        "15" => "fifteen",
        "16" => "sixteen",
        "17" => "seventeen",
        "18" => "eighteen",
        "19" => "nineteen",
        "20" => "twenty",
        "23" => "twenty-three",
        _ => return None,
    })
}

/// `\b([a-zA-Z]+)([0-9])\b` → letters: a whole word of letters plus exactly one digit
/// (`chair2` → `chair`, but `chair12` and `2chair` stay).
fn strip_word_digit(word: &str) -> Option<&str> {
    let (&last, letters) = word.as_bytes().split_last()?;
    let all_letters = !letters.is_empty() && letters.iter().all(u8::is_ascii_alphabetic);
    // `word` is ASCII, so cutting off its last byte keeps it a valid str.
    (all_letters && last.is_ascii_digit()).then(|| &word[..letters.len()])
}

/// Python `"".join(s.split())`: the text with all whitespace removed.
fn without_whitespace(text: &str) -> String {
    text.chars().filter(|&c| !is_python_whitespace(c)).collect()
}

/// LEO's (EM, refined EM) of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LeoMatch {
    pub em: bool,
    pub refined_em: bool,
}

/// LEO's `answer_match` on strings that are already cleaned.
///
/// As in the official code the ground truths are tried in order and the **first** one that
/// matches in either sense decides: pred `"chair"` against `["chair table", "chair"]` is refined
/// only (EM false), because `"chair"` is a substring of the first. Refined means equal, or one is a
/// substring of the other once all whitespace is removed; an empty prediction is therefore a
/// refined match of any non-empty ground-truth list.
pub fn leo_answer_match<G: AsRef<str>>(pred: &str, gts: &[G]) -> LeoMatch {
    let pred_joined = without_whitespace(pred);
    for gt in gts {
        let gt = gt.as_ref();
        if pred == gt {
            return LeoMatch {
                em: true,
                refined_em: true,
            };
        }
        let gt_joined = without_whitespace(gt);
        if gt_joined.contains(&pred_joined) || pred_joined.contains(&gt_joined) {
            return LeoMatch {
                em: false,
                refined_em: true,
            };
        }
    }
    LeoMatch::default()
}

/// LEO's scoring of one raw answer: [`clean_answer`] on the prediction and every ground truth,
/// then [`leo_answer_match`].
pub fn leo_match<G: AsRef<str>>(pred: &str, gts: &[G]) -> LeoMatch {
    let gts: Vec<String> = gts.iter().map(|g| clean_answer(g.as_ref())).collect();
    leo_answer_match(&clean_answer(pred), &gts)
}

/// LEO's EM of one raw answer (see [`leo_match`]).
pub fn leo_em<G: AsRef<str>>(pred: &str, gts: &[G]) -> bool {
    leo_match(pred, gts).em
}

/// LEO's refined EM ("EM-R") of one raw answer (see [`leo_match`]).
pub fn leo_refined_em<G: AsRef<str>>(pred: &str, gts: &[G]) -> bool {
    leo_match(pred, gts).refined_em
}

/// The other EM reading (FORMATS §6.3): the cleaned prediction equals **any** cleaned ground
/// truth, whatever their order. At least LEO's EM ([`leo_em`]), often higher. (The refined readings
/// agree: LEO's first-match rule finds a refined match whenever any ground truth is one.)
pub fn leo_em_any<G: AsRef<str>>(pred: &str, gts: &[G]) -> bool {
    let pred = clean_answer(pred);
    gts.iter().any(|g| clean_answer(g.as_ref()) == pred)
}

/// SQA3D question type by the question's first word (`get_sqa_question_type`; MCAN uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqaQuestionType {
    What = 0,
    Is = 1,
    How = 2,
    Can = 3,
    Which = 4,
    Other = 5,
}

impl SqaQuestionType {
    pub const ALL: [SqaQuestionType; 6] = [
        Self::What,
        Self::Is,
        Self::How,
        Self::Can,
        Self::Which,
        Self::Other,
    ];

    /// The official rule: strip leading whitespace, then compare the first 4/2/3/3/5 characters,
    /// lowercased, with `what`/`is`/`how`/`can`/`which` in that order. It is a prefix test, so
    /// `"island"` is `Is` and `"However"` is `How`.
    pub fn of_question(question: &str) -> Self {
        let question = question.trim_start_matches(is_python_whitespace);
        // Python's `question[:n].lower()`: slice by code points first, then lowercase.
        let prefix_is = |word: &str| {
            let prefix: String = question.chars().take(word.chars().count()).collect();
            prefix.to_lowercase() == word
        };
        if prefix_is("what") {
            Self::What
        } else if prefix_is("is") {
            Self::Is
        } else if prefix_is("how") {
            Self::How
        } else if prefix_is("can") {
            Self::Can
        } else if prefix_is("which") {
            Self::Which
        } else {
            Self::Other
        }
    }
}

/// LEO's SQA3D question type as its number: what=0, is=1, how=2, can=3, which=4, other=5.
pub fn sqa3d_question_type(question: &str) -> u8 {
    SqaQuestionType::of_question(question) as u8
}

// ---------------------------------------------------------------------------------------------
// SQA3D official (FORMATS §6.4) and the predecessor's metric (§6.5)
// ---------------------------------------------------------------------------------------------

/// SQA3D's benchmark top-1 accuracy for one question: the prediction equals the first answer
/// (`answers[0].answer`), raw string equality. No answers counts as a miss.
pub fn sqa3d_top1<A: AsRef<str>>(pred: &str, answers: &[A]) -> bool {
    answers.first().is_some_and(|a| a.as_ref() == pred)
}

/// Python `" ".join(s.strip().lower().split())`.
fn predecessor_normalise(text: &str) -> String {
    text.to_lowercase()
        .split(is_python_whitespace)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The original project's `exact_match`: equality after lowercasing and collapsing whitespace
/// (`" ".join(s.strip().lower().split())` on both sides).
pub fn predecessor_exact_match(pred: &str, reference: &str) -> bool {
    predecessor_normalise(pred) == predecessor_normalise(reference)
}

// ---------------------------------------------------------------------------------------------
// Aggregates
// ---------------------------------------------------------------------------------------------

/// `100 * part / whole`, and 0 for an empty set.
pub fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Answer scores of a ScanQA-style set, in percent (×100 as the papers print them); 0 for an
/// empty set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerScores {
    /// Number of questions.
    pub n: usize,
    /// ScanQA official "Top1 (EM)".
    pub em1: f64,
    /// ScanQA official "Top10 (EM)".
    pub em10: f64,
    /// LEO EM of the top-1 prediction (its first-match rule).
    pub leo_em: f64,
    /// EM of the top-1 prediction read as "cleaned prediction equals any cleaned reference".
    pub leo_em_any: f64,
    /// LEO refined EM of the top-1 prediction.
    pub leo_refined_em: f64,
}

/// Scores `(predictions best first, reference answers)` pairs. The LEO metrics use the first
/// prediction; a question with no prediction counts as wrong in every metric (rather than as an
/// empty string, which LEO's refined EM would accept).
pub fn score_scanqa<P: AsRef<str>, A: AsRef<str>>(items: &[(Vec<P>, Vec<A>)]) -> AnswerScores {
    let (mut em1, mut em10, mut leo_em, mut leo_any, mut leo_refined) = (0, 0, 0, 0, 0);
    for (top, answers) in items {
        em1 += usize::from(em_at_1(top, answers));
        em10 += usize::from(em_at_k(top, answers, 10));
        if let Some(first) = top.first() {
            let m = leo_match(first.as_ref(), answers);
            leo_em += usize::from(m.em);
            leo_any += usize::from(leo_em_any(first.as_ref(), answers));
            leo_refined += usize::from(m.refined_em);
        }
    }
    let n = items.len();
    AnswerScores {
        n,
        em1: percent(em1, n),
        em10: percent(em10, n),
        leo_em: percent(leo_em, n),
        leo_em_any: percent(leo_any, n),
        leo_refined_em: percent(leo_refined, n),
    }
}

/// One SQA3D question with a model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sqa3dPrediction {
    pub question: String,
    pub prediction: String,
    /// Reference answers; the official metric uses only the first.
    pub answers: Vec<String>,
}

/// Correct counts of one question type (or of the whole set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TypeCounts {
    pub total: usize,
    /// Correct by [`sqa3d_top1`].
    pub top1: usize,
    /// Correct by [`leo_em`].
    pub leo_em: usize,
    /// Correct by [`leo_em_any`].
    pub leo_em_any: usize,
    /// Correct by [`leo_refined_em`].
    pub leo_refined_em: usize,
}

/// SQA3D scores, overall in percent and per question type as counts (use [`percent`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sqa3dScores {
    pub n: usize,
    /// Official top-1 accuracy, percent.
    pub top1: f64,
    pub leo_em: f64,
    pub leo_em_any: f64,
    pub leo_refined_em: f64,
    /// All six types, also those with no question.
    pub by_type: BTreeMap<SqaQuestionType, TypeCounts>,
}

pub fn score_sqa3d(items: &[Sqa3dPrediction]) -> Sqa3dScores {
    let mut by_type: BTreeMap<SqaQuestionType, TypeCounts> = SqaQuestionType::ALL
        .iter()
        .map(|&t| (t, TypeCounts::default()))
        .collect();
    let mut overall = TypeCounts::default();
    for item in items {
        let top1 = sqa3d_top1(&item.prediction, &item.answers);
        let leo = leo_match(&item.prediction, &item.answers);
        let any = leo_em_any(&item.prediction, &item.answers);
        let kind = SqaQuestionType::of_question(&item.question);
        for counts in [&mut overall, by_type.entry(kind).or_default()] {
            counts.total += 1;
            counts.top1 += usize::from(top1);
            counts.leo_em += usize::from(leo.em);
            counts.leo_em_any += usize::from(any);
            counts.leo_refined_em += usize::from(leo.refined_em);
        }
    }
    Sqa3dScores {
        n: overall.total,
        top1: percent(overall.top1, overall.total),
        leo_em: percent(overall.leo_em, overall.total),
        leo_em_any: percent(overall.leo_em_any, overall.total),
        leo_refined_em: percent(overall.leo_refined_em, overall.total),
        by_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanqa_em_is_raw_equality() {
        let answers = ["brown"];
        assert!(!em_at_1(&["Brown"], &answers));
        assert!(!em_at_1(&["brown "], &answers));
        assert!(em_at_1(&["brown"], &answers));
        assert!(!em_at_1::<&str, &str>(&[], &answers));
        assert!(!em_at_1(&["brown"], &[] as &[&str]));
        // Only the first prediction counts for EM@1.
        assert!(!em_at_1(&["white", "brown"], &answers));
        assert!(em_at_1(
            &["white".to_string()],
            &["black".to_string(), "white".to_string()]
        ));
    }

    #[test]
    fn scanqa_em_at_k_looks_at_k_predictions() {
        let top: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        assert!(em_at_k(&top, &["p9"], 10));
        assert!(!em_at_k(&top, &["p10"], 10));
        assert!(em_at_k(&top, &["p10"], 11));
        assert!(!em_at_k(&top, &["p0"], 0));
        assert!(!em_at_k(&top, &["P9"], 10));
    }

    #[test]
    fn predecessor_lowercases_and_collapses_whitespace() {
        assert!(predecessor_exact_match("  Brown\tChair \n", "brown chair"));
        assert!(predecessor_exact_match("a\u{a0}b", "A B"));
        assert!(predecessor_exact_match("a\u{1c}b", "a b")); // Python whitespace, not Rust's
        assert!(predecessor_exact_match("", "   "));
        assert!(!predecessor_exact_match("brown.", "brown"));
        assert!(!predecessor_exact_match("brownchair", "brown chair"));
    }

    #[test]
    fn sqa3d_top1_uses_the_first_answer_only() {
        assert!(sqa3d_top1("left", &["left", "right"]));
        assert!(!sqa3d_top1("right", &["left", "right"]));
        assert!(!sqa3d_top1("Left", &["left"]));
        assert!(!sqa3d_top1("", &[] as &[&str]));
    }

    #[test]
    fn question_type_numbers() {
        assert_eq!(sqa3d_question_type("What is it?"), 0);
        assert_eq!(sqa3d_question_type(" is it"), 1);
        assert_eq!(sqa3d_question_type("How"), 2);
        assert_eq!(sqa3d_question_type("Can I"), 3);
        assert_eq!(sqa3d_question_type("Which"), 4);
        assert_eq!(sqa3d_question_type("Where"), 5);
    }

    #[test]
    fn scanqa_aggregate() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let items = vec![
            // EM@1, EM@10, LEO EM, refined.
            (s(&["brown", "red"]), s(&["brown"])),
            // Raw miss, but LEO cleans the case: EM@10 via the 2nd, LEO EM.
            (s(&["Brown", "brown"]), s(&["brown"])),
            // Only refined.
            (s(&["black chair"]), s(&["chair"])),
            // Nothing; no prediction.
            (s(&[]), s(&["chair"])),
        ];
        let scores = score_scanqa(&items);
        assert_eq!(
            scores,
            AnswerScores {
                n: 4,
                em1: 25.0,
                em10: 50.0,
                leo_em: 50.0,
                leo_em_any: 50.0,
                leo_refined_em: 75.0,
            }
        );
        // The two EM readings differ when an earlier reference is a refined match.
        let order = vec![(s(&["chair"]), s(&["chair table", "chair"]))];
        let scores = score_scanqa(&order);
        assert_eq!(
            (scores.leo_em, scores.leo_em_any, scores.leo_refined_em),
            (0.0, 100.0, 100.0)
        );
        let empty: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        assert_eq!(score_scanqa(&empty).em1, 0.0);
    }

    #[test]
    fn sqa3d_aggregate() {
        let item = |q: &str, p: &str, a: &[&str]| Sqa3dPrediction {
            question: q.into(),
            prediction: p.into(),
            answers: a.iter().map(|x| x.to_string()).collect(),
        };
        let items = vec![
            item("What is on my left?", "table", &["table"]),
            item("what color", "Brown", &["brown"]),
            item("Is the door open?", "yes", &["no"]),
            item("Which way", "left", &["to the left"]),
        ];
        let scores = score_sqa3d(&items);
        assert_eq!(scores.n, 4);
        assert_eq!(scores.top1, 25.0);
        assert_eq!(scores.leo_em, 50.0);
        assert_eq!(scores.leo_refined_em, 75.0);
        let what = scores.by_type[&SqaQuestionType::What];
        assert_eq!(
            what,
            TypeCounts {
                total: 2,
                top1: 1,
                leo_em: 2,
                leo_em_any: 2,
                leo_refined_em: 2
            }
        );
        assert_eq!(scores.by_type[&SqaQuestionType::Is].leo_refined_em, 0);
        assert_eq!(scores.by_type[&SqaQuestionType::Which].leo_refined_em, 1);
        assert_eq!(scores.by_type[&SqaQuestionType::How].total, 0);
        assert_eq!(scores.by_type.len(), 6);
        let json = serde_json::to_value(&scores).unwrap();
        assert_eq!(json["by_type"]["what"]["total"], 2);
        assert_eq!(json["by_type"]["other"]["total"], 0);
    }
}
