//! ChatML rendering and tokenization with a small byte-level BPE tokenizer.json built here.

use roomplan_trainer::model::chat::{self, ChatTokenizer, Message, IGNORE_INDEX};

/// Merges for "Ġt", "he", "Ġthe", so that " the" becomes one token.
const MERGES: &[(&str, &str)] = &[("Ġ", "t"), ("h", "e"), ("Ġt", "he")];

fn tokenizer() -> (tempfile::TempDir, ChatTokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, chat::tiny_tokenizer_json(MERGES).unwrap()).unwrap();
    let tok = ChatTokenizer::from_file(&path).unwrap();
    (dir, tok)
}

#[test]
fn renders_chatml_without_default_system_turn() {
    let msgs = [Message::user("Where is the sofa?")];
    assert_eq!(
        chat::render(&msgs, true),
        "<|im_start|>user\nWhere is the sofa?<|im_end|>\n<|im_start|>assistant\n"
    );
    let msgs = [
        Message::system("Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello"),
    ];
    assert_eq!(
        chat::render(&msgs, false),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    );
}

#[test]
fn special_tokens_and_byte_level_ids() {
    let (_dir, tok) = tokenizer();
    // 256 byte symbols, 3 merges, then the specials in order.
    assert_eq!(
        (
            tok.pad_id(),
            tok.im_start_id(),
            tok.im_end_id(),
            tok.image_slot_id()
        ),
        (259, 260, 261, 262)
    );
    assert!(tok.is_stop(261) && tok.is_stop(259) && !tok.is_stop(260));
    // 'a' is byte 0x61, printable, so its symbol keeps id 0x61; " the" is the last merge (258).
    assert_eq!(tok.encode_text("a the").unwrap(), vec![0x61, 258]);
    assert_eq!(tok.encode_text("<|im_start|>a").unwrap(), vec![260, 0x61]);
    // Non-ASCII text survives the byte-level round trip.
    let ids = tok.encode_text("Küche ☕").unwrap();
    // 10 bytes; "he" merges into one id, every other byte is its own.
    assert_eq!(ids.len(), "Küche ☕".len() - 1);
    assert!(ids.contains(&257));
    assert_eq!(tok.decode(&ids, false).unwrap(), "Küche ☕");
}

#[test]
fn image_placeholder_expands_to_slots_with_positions() {
    let (_dir, tok) = tokenizer();
    let msgs = [Message::user("<image>\nthe room")];
    let p = tok.encode_prompt(&msgs, 5).unwrap();
    let head = tok.encode_text("<|im_start|>user\n").unwrap();
    assert_eq!(
        head,
        vec![
            260,
            b'u' as u32,
            b's' as u32,
            b'e' as u32,
            b'r' as u32,
            b'\n' as u32
        ]
    );
    assert_eq!(
        p.image_positions,
        (head.len()..head.len() + 5).collect::<Vec<_>>()
    );
    assert!(p
        .image_positions
        .iter()
        .all(|&i| p.ids[i] == tok.image_slot_id()));
    let tail = tok
        .encode_text("\nthe room<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    assert_eq!(&p.ids[head.len() + 5..], tail.as_slice());
    // Zero slots removes the placeholder; a second placeholder or a missing one is refused.
    assert_eq!(
        tok.encode_prompt(&msgs, 0).unwrap().ids.len(),
        p.ids.len() - 5
    );
    let err = tok
        .encode_prompt(&[Message::user("<image><image>")], 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 <image> placeholders"), "{err}");
    let err = tok
        .encode_prompt(&[Message::user("no image")], 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 image slots requested but the prompt has no <image>"),
        "{err}"
    );
}

#[test]
fn training_labels_cover_answer_and_im_end_only() {
    let (_dir, tok) = tokenizer();
    let msgs = [Message::user("<image>Q?"), Message::assistant("the")];
    let ex = tok.encode_training(&msgs, 3).unwrap();
    let prompt = tok.encode_prompt(&msgs[..1], 3).unwrap();
    let n = prompt.ids.len();
    assert_eq!(&ex.ids[..n], prompt.ids.as_slice());
    // "the" without a leading space: 't' then the merged "he" (257), then <|im_end|>.
    assert_eq!(&ex.ids[n..], &[b't' as u32, 257, 261]);
    assert!(ex.labels[..n].iter().all(|&l| l == IGNORE_INDEX));
    assert_eq!(
        &ex.labels[n..],
        &ex.ids[n..].iter().map(|&i| i as i64).collect::<Vec<_>>()[..]
    );
    assert_eq!(ex.image_positions, prompt.image_positions);
    let err = tok
        .encode_training(&[Message::user("x")], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("last message is a user turn"), "{err}");
}

#[test]
fn tokenizer_without_chatml_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let json = chat::tiny_tokenizer_json(&[])
        .unwrap()
        .replace("<|im_end|>", "<|end|>");
    std::fs::write(&path, json).unwrap();
    let err = format!("{:#}", ChatTokenizer::from_file(&path).err().unwrap());
    assert!(err.contains("no <|im_end|> token"), "{err}");
}
