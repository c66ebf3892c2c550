//! Tokenizer (`tokenizer.json`) and the ChatML template of Qwen3-4B-Instruct-2507:
//! each turn is `<|im_start|>{role}\n{content}<|im_end|>\n`, a system turn only when one is given,
//! generation prompt `<|im_start|>assistant\n`, generation stops on `<|im_end|>` (or
//! `<|endoftext|>`). No BOS is prepended. The 2507 model is non-thinking: no `<think>` block.
//!
//! A prompt may hold one `<image>` placeholder; encoding replaces it by N embedding slots (token
//! ids that the fused model overwrites with vision/geometry embeddings) and reports their positions.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// Qwen's own image padding token; used as the id of image slots when the vocabulary has it.
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// The placeholder written in prompt text where the image embeddings go.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// Label value the loss ignores (transformers' convention).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The ChatML text of `messages`, with the generation prompt appended when asked.
pub fn render(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!(
            "{IM_START}{}\n{}{IM_END}\n",
            m.role.as_str(),
            m.content
        ));
    }
    if add_generation_prompt {
        out.push_str(&format!("{IM_START}assistant\n"));
    }
    out
}

/// Token ids of a prompt with the positions of its image slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Indices into `ids` of the image slots, ascending and contiguous.
    pub image_positions: Vec<usize>,
}

/// A training sequence: prompt then answer; labels are the ids on the answer (content and the
/// closing `<|im_end|>`) and [`IGNORE_INDEX`] elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingExample {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub image_positions: Vec<usize>,
}

/// A `tokenizers` tokenizer with the ChatML special tokens resolved.
#[derive(Clone)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    im_start: u32,
    im_end: u32,
    end_of_text: u32,
    image_slot: u32,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json`; it must define `<|im_start|>`, `<|im_end|>` and `<|endoftext|>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json: {e}", path.display()))?;
        Self::new(tokenizer).with_context(|| format!("{}", path.display()))
    }

    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .with_context(|| format!("the tokenizer has no {t} token (ChatML needs it)"))
        };
        let (im_start, im_end, end_of_text) = (id(IM_START)?, id(IM_END)?, id(END_OF_TEXT)?);
        let image_slot = tokenizer.token_to_id(IMAGE_PAD).unwrap_or(end_of_text);
        Ok(Self {
            tokenizer,
            im_start,
            im_end,
            end_of_text,
            image_slot,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn im_start_id(&self) -> u32 {
        self.im_start
    }
    pub fn im_end_id(&self) -> u32 {
        self.im_end
    }
    /// `<|endoftext|>`, also the padding id of Qwen3.
    pub fn pad_id(&self) -> u32 {
        self.end_of_text
    }
    /// The id written at image slots (`<|image_pad|>`, else `<|endoftext|>`).
    pub fn image_slot_id(&self) -> u32 {
        self.image_slot
    }

    /// Generation stops on `<|im_end|>` or `<|endoftext|>`.
    pub fn is_stop(&self, id: u32) -> bool {
        id == self.im_end || id == self.end_of_text
    }

    /// Ids of plain text (special tokens written in it are recognised, no template added).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("decoding {ids:?}: {e}"))
    }

    /// The rendered prompt with the generation prompt, its `<image>` (at most one) expanded to
    /// `image_slots` slots. A prompt without a placeholder must ask for 0 slots.
    pub fn encode_prompt(&self, messages: &[Message], image_slots: usize) -> Result<Prompt> {
        self.encode_with_slots(&render(messages, true), image_slots)
    }

    /// A training example from a conversation ending with the assistant's answer.
    pub fn encode_training(
        &self,
        messages: &[Message],
        image_slots: usize,
    ) -> Result<TrainingExample> {
        let (answer, context) = messages.split_last().context("empty conversation")?;
        ensure!(
            answer.role == Role::Assistant,
            "the last message is a {} turn, expected the assistant's answer",
            answer.role.as_str()
        );
        ensure!(
            !answer.content.contains(IMAGE_PLACEHOLDER),
            "the answer contains {IMAGE_PLACEHOLDER}"
        );
        let prompt = self.encode_prompt(context, image_slots)?;
        let mut answer_ids = self.encode_text(&answer.content)?;
        answer_ids.push(self.im_end);
        let mut labels = vec![IGNORE_INDEX; prompt.ids.len()];
        labels.extend(answer_ids.iter().map(|&i| i as i64));
        let mut ids = prompt.ids;
        ids.extend(answer_ids);
        Ok(TrainingExample {
            ids,
            labels,
            image_positions: prompt.image_positions,
        })
    }

    /// Encodes `text`, replacing its `<image>` by `slots` image-slot ids.
    pub fn encode_with_slots(&self, text: &str, slots: usize) -> Result<Prompt> {
        let pieces: Vec<&str> = text.split(IMAGE_PLACEHOLDER).collect();
        match pieces.len() {
            1 if slots == 0 => Ok(Prompt {
                ids: self.encode_text(text)?,
                image_positions: Vec::new(),
            }),
            1 => bail!("{slots} image slots requested but the prompt has no {IMAGE_PLACEHOLDER}"),
            2 => {
                let mut ids = self.encode_text(pieces[0])?;
                let start = ids.len();
                ids.extend(std::iter::repeat_n(self.image_slot, slots));
                ids.extend(self.encode_text(pieces[1])?);
                Ok(Prompt {
                    ids,
                    image_positions: (start..start + slots).collect(),
                })
            }
            n => bail!(
                "the prompt has {} {IMAGE_PLACEHOLDER} placeholders; at most one is supported",
                n - 1
            ),
        }
    }
}

/// GPT-2's byte ↔ printable-character table used by byte-level BPE.
pub fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid code point")
        };
    }
    table
}

/// A small but real byte-level BPE `tokenizer.json` (GPT-2 pre-tokenizer, the 256 byte symbols as
/// ids 0–255, then one token per merge in order, then Qwen's ChatML special tokens
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|image_pad|>`), for tests and tiny models.
/// Merges are pairs of existing symbols written in the byte-level alphabet (space = `Ġ`).
pub fn tiny_tokenizer_json(merges: &[(&str, &str)]) -> Result<String> {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_level_alphabet().iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    for (a, b) in merges {
        ensure!(
            vocab.contains_key(*a) && vocab.contains_key(*b),
            "merge ({a:?}, {b:?}) uses a symbol not in the vocabulary"
        );
        let id = vocab.len();
        vocab.entry(format!("{a}{b}")).or_insert(json!(id));
    }
    let first_special = vocab.len();
    let added: Vec<Value> = [END_OF_TEXT, IM_START, IM_END, IMAGE_PAD]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": first_special + i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}
