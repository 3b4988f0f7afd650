"""``python -m rnnfast demo`` / ``sample``: end to end with tiny sizes."""
import json
import os
import subprocess
import sys

import pytest
import torch

import rnnfast
from rnnfast.lm import RNNLM, demo, load_lm

TINY = ["--steps", "3", "--hidden", "32", "--seq-len", "16", "--batch-size", "4",
        "--max-chars", "20000", "--sample-tokens", "20", "--compare-steps", "1",
        "--no-progress"]


def _run(*args, timeout=120):
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "rnnfast", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_demo_and_sample_end_to_end(tmp_path):
    save = tmp_path / "lm"
    proc = _run("demo", *TINY, "--save", str(save))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("corpus: standard-library docstrings", "validation perplexity:",
                     "sample, temperature 0.5:", "greedy:", "training speed",
                     "rnnfast", "torch.nn.LSTM", "tokens/s", "demo finished in"):
        assert expected in out, (expected, out)
    assert {p.name for p in save.iterdir()} == {"model.pt", "config.json", "tokenizer.json"}
    config = json.loads((save / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["meta"]["level"] == "char"
    torch.load(save / "model.pt", weights_only=True)

    sample = _run("sample", "--load", str(save), "--prompt", "Return the", "--max-new-tokens",
                  "25", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("Return the")
    assert len(sample.stdout.rstrip("\n")) >= len("Return the")


def test_sample_is_reproducible_with_a_seed(tmp_path, capsys):
    save = tmp_path / "lm"
    demo.main(["demo", *TINY, "--compare-steps", "0", "--save", str(save)])
    capsys.readouterr()
    texts = []
    for _ in range(2):
        demo.main(["sample", "--load", str(save), "--prompt", "The", "--max-new-tokens", "30",
                   "--seed", "3", "--top-k", "5", "--top-p", "0.9"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("The")
    demo.main(["sample", "--load", str(save), "--greedy", "--max-new-tokens", "10"])
    assert capsys.readouterr().out


def test_word_level_gru_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    lines = [f"the {w} sat on the mat number {i % 7}" for i, w in
             enumerate(["cat", "dog", "bird", "fish"] * 60)]
    text.write_text("\n".join(lines) + "\n")
    save = tmp_path / "lm"
    demo.main(["demo", "--text", str(text), "--level", "word", "--cell", "gru", "--layers", "2",
               "--dropout", "0.1", "--hidden", "16", "--tie-weights", "--steps", "4",
               "--seq-len", "8", "--batch-size", "4", "--sample-tokens", "8",
               "--compare-steps", "1", "--threads", "1", "--no-progress", "--save", str(save)])
    out = capsys.readouterr().out
    assert "word-level vocabulary" in out and "per word" in out and "torch.nn.GRU" in out
    model, tok, meta = load_lm(save)
    assert model.cell == "gru" and model.tie_weights and model.num_layers == 2
    assert tok.kind == "word" and meta["level"] == "word"


def test_demo_with_lstm_variants(tmp_path, capsys):
    save = tmp_path / "lm"
    demo.main(["demo", *TINY, "--peephole", "--weight-drop", "0.3", "--zoneout", "0.1",
               "--save", str(save)])
    out = capsys.readouterr().out
    assert "LSTM with peepholes (weight_drop 0.3, zoneout 0.1)" in out, out
    assert "no speed comparison with torch" in out and "validation perplexity:" in out
    model, _, _ = load_lm(save)
    assert model.peephole and model.weight_drop == 0.3 and model.zoneout == 0.1


def test_stdlib_corpus_is_deterministic_and_sized():
    a = demo.stdlib_corpus(50_000)
    assert a == demo.stdlib_corpus(50_000)
    assert 45_000 <= len(a) <= 50_000
    assert demo.stdlib_corpus(200).startswith(a[:150])


def test_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit, match="cannot load"):
        demo.main(["sample", "--load", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exc:
        demo.main(["demo", "--steps", "0"])
    assert exc.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("tiny text\n")
    with pytest.raises(SystemExit, match="too short"):
        demo.main(["demo", "--text", str(short), "--no-progress"])
    with pytest.raises(SystemExit, match="cannot read --text"):
        demo.main(["demo", "--text", str(tmp_path / "missing.txt")])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SystemExit, match="cannot read --text"):
        demo.main(["demo", "--text", str(binary)])
    with pytest.raises(SystemExit, match="embed_size == hidden_size"):
        demo.main(["demo", "--tie-weights", "--hidden", "32", "--max-chars", "5000",
                   "--no-progress"])


def test_train_stops_at_the_time_limit():
    model = RNNLM(10, 4, 8)
    data = torch.randint(0, 10, (2, 200))
    stats = demo.train(model, data, 1000, 8, 1e-3, 1.0, progress=False, time_limit=1e-9)
    assert stats["steps"] == 1                 # at least one step, then the clock stops it
    stats = demo.train(model, data, 30, 8, 1e-3, 1.0, progress=False)   # wraps around epochs
    assert stats["steps"] == 30 and stats["tokens"] == 30 * 2 * 8
