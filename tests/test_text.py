"""Tokenizers: vocabularies, round trips, specials, save/load, errors."""
import json

import pytest
import torch

from rnnfast.lm import EOS, UNK, CharTokenizer, Tokenizer, WordTokenizer, load_tokenizer

TEXT = "the cat sat\non the mat\nthe end\n"


def test_char_round_trip_and_eos_at_line_ends():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.vocab[:2] == [UNK, EOS] and (tok.unk_id, tok.eos_id) == (0, 1)
    assert "\n" not in tok.vocab
    ids = tok.encode(TEXT)
    assert ids.count(tok.eos_id) == TEXT.count("\n") == 3
    assert ids[-1] == tok.eos_id
    assert tok.decode(ids) == TEXT
    for s in ["", "\n", "tea\n\nmat", "a\r\nb"]:
        known = "".join(c for c in s if c in tok or c == "\n")
        assert tok.decode(tok.encode(known)) == known
    assert tok.encode("the", add_eos=True) == tok.encode("the\n")
    assert len(tok) == tok.vocab_size == 2 + len(set(TEXT) - {"\n"})


def test_char_vocab_is_frequency_ordered_and_deterministic():
    tok = CharTokenizer.from_text("aaabbc\n")
    assert tok.vocab == [UNK, EOS, "a", "b", "c"]
    assert CharTokenizer.build("cbbaaa") == tok
    rare = CharTokenizer.from_text("aaabbc", min_freq=2)
    assert rare.vocab == [UNK, EOS, "a", "b"]
    assert rare.encode("abcz") == [2, 3, rare.unk_id, rare.unk_id]
    assert CharTokenizer.from_text("aaabbc", max_size=3).vocab == [UNK, EOS, "a"]


def test_unknown_chars_decode_as_unk_marker():
    tok = CharTokenizer.from_text("ab")
    assert tok.decode(tok.encode("axb")) == "a<unk>b"


def test_word_tokenizer_min_freq_max_size_and_round_trip():
    tok = WordTokenizer.from_text(TEXT)
    # most frequent first, ties alphabetical
    assert tok.vocab[:4] == [UNK, EOS, "the", "cat"]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    # whitespace inside a line is normalised to single spaces
    assert tok.decode(tok.encode("  the   cat \nmat")) == "the cat\nmat"
    assert tok.encode("the dog") == [tok.token_to_id("the"), tok.unk_id]

    frequent = WordTokenizer.from_text(TEXT, min_freq=2)
    assert frequent.vocab == [UNK, EOS, "the"]
    assert frequent.decode(frequent.encode("the cat")) == "the <unk>"
    small = WordTokenizer.from_text(TEXT, max_size=4)
    assert small.vocab == [UNK, EOS, "the", "cat"]


def test_word_literal_specials_map_to_special_ids():
    tok = WordTokenizer.from_text("a <unk> b <eos> a\n")
    assert UNK not in tok.vocab[2:] and EOS not in tok.vocab[2:]
    assert tok.encode("<unk> <eos>") == [tok.unk_id, tok.eos_id]


def test_decode_accepts_tensors_and_checks_ids():
    tok = CharTokenizer.from_text("abc")
    ids = tok.encode("cab")
    assert tok.decode(torch.tensor(ids)) == "cab"
    assert tok.decode(tuple(ids)) == "cab"
    with pytest.raises(ValueError, match=r"token id 99 at position 1 is out of range"):
        tok.decode([2, 99])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="token ids must be ints"):
        tok.decode([1.0])
    with pytest.raises(TypeError, match="sequence of token ids"):
        tok.decode("abc")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("cls", [CharTokenizer, WordTokenizer])
def test_save_load_round_trip(tmp_path, cls):
    tok = cls.from_text(TEXT + "ünïcödé words\n")
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == cls.kind and data["vocab"] == tok.vocab
    for loaded in (cls.load(path), load_tokenizer(path), Tokenizer.load(str(path))):
        assert type(loaded) is cls and loaded == tok
        assert loaded.encode(TEXT) == tok.encode(TEXT)


def test_load_errors(tmp_path):
    word = tmp_path / "word.json"
    WordTokenizer.from_text(TEXT).save(word)
    with pytest.raises(ValueError, match="holds a WordTokenizer"):
        CharTokenizer.load(word)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not an rnnfast tokenizer"):
        load_tokenizer(other)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")


def test_build_and_encode_errors():
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        CharTokenizer.from_text(b"abc")
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("\n\n")
    with pytest.raises(ValueError, match="no words"):
        WordTokenizer.from_text("  \n ")
    with pytest.raises(ValueError, match="min_freq must be >= 1, got 0"):
        WordTokenizer.from_text(TEXT, min_freq=0)
    with pytest.raises(TypeError, match="min_freq must be an int"):
        WordTokenizer.from_text(TEXT, min_freq=1.5)
    with pytest.raises(ValueError, match="max_size must be >= 2, got 1"):
        CharTokenizer.from_text(TEXT, max_size=1)
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(TypeError, match="text must be a str, got list"):
        tok.encode(["a"])
    with pytest.raises(ValueError, match="must start with the special tokens"):
        CharTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate vocabulary entry"):
        CharTokenizer([UNK, EOS, "a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer([UNK, EOS, "ab"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordTokenizer([UNK, EOS, "a b"])
