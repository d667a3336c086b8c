import json

from transformers import CLIPTokenizer

from lora_core.base import checkpoints
from lora_core.tiny import tiny_world
from lora_core.tiny.tiny_tokenizer import bytes_to_unicode, write_clip_tokenizer_files

TOKENIZER_DIR = checkpoints.weights_dir() / "tiny-sd" / "tokenizer"


def test_every_world_word_is_one_token_and_unknown_words_still_tokenize(tmp_path):
    _, captions = tiny_world.sample_world(500, seed=1)
    words = tiny_world.vocabulary_corpus(captions)
    vocab, merges = write_clip_tokenizer_files(words, tmp_path)
    tok = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=32)
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1  # byte-level fallback, no <unk>
    assert tok.unk_token_id not in tok("zebra 🙂", add_special_tokens=False).input_ids


def test_committed_tokenizer_has_clip_layout_and_room_for_new_tokens():
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text())
    ordered = sorted(vocab, key=vocab.get)
    symbols = list(bytes_to_unicode().values())
    assert ordered[:256] == symbols
    assert ordered[256:512] == [s + "</w>" for s in symbols]
    assert ordered[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    for word in ("photo", "of", "pattern", "striped", "purple", "star"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    before = len(tok)
    tok.add_tokens(["<s0>", "<s1>"])
    ids = tok("a photo of <s0> <s1>", add_special_tokens=False).input_ids
    assert ids[-2:] == [before, before + 1]
    longest = "a photo of a red and yellow striped circle and a blue star on a green dotted background <s0> <s1>"
    assert len(tok(longest).input_ids) <= tok.model_max_length
