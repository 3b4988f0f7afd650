"""``python -m rnnfast demo``: train a language model on rnnfast, then sample from it.

The default corpus needs no download: the docstrings of a fixed list of
standard-library modules, gathered at run time with :mod:`inspect` in a
deterministic order (about 400 KB of English prose and code examples; the exact
text depends on the Python version). ``--text FILE`` trains on a file instead.

Training is truncated backpropagation through time: the token stream is cut into
``--batch-size`` parallel rows, and each step trains on the next ``--seq-len``
tokens of every row, starting from the hidden state the previous chunk ended
with (carried over, detached from the graph). Gradients are clipped with
``clip_grad_norm_``. At the end the demo prints the validation perplexity on a
held-out tail of the text, samples at a few temperatures, and the training speed
of the same model on rnnfast and on ``torch.nn.LSTM``/``GRU`` (same weights, same
batch, measured interleaved in this process).

``python -m rnnfast sample --load DIR --prompt "..."`` loads a model saved with
``--save DIR`` and prints a sample as it is generated.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import statistics
import sys
import time
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .generation import generate, stream
from .model import RNNLM, detach_state, load_lm, save_lm
from .scoring import perplexity
from .text import CharTokenizer, Tokenizer, WordTokenizer

try:  # tqdm draws the progress bar; without it a plain line per few steps is printed
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised only where tqdm is missing
    _tqdm = None

# Standard-library modules whose docstrings form the default corpus (sorted; a
# module missing from this Python build is skipped).
CORPUS_MODULES = (
    "abc argparse ast asyncio.events base64 bisect calendar collections configparser "
    "contextlib copy csv dataclasses datetime decimal difflib email.message enum fractions "
    "functools gettext glob gzip hashlib heapq hmac html http.client inspect io ipaddress "
    "itertools json logging math mimetypes operator os pathlib pickle pprint queue random re "
    "secrets shlex shutil socket statistics string struct subprocess tarfile tempfile textwrap "
    "threading time timeit tokenize traceback typing unittest urllib.parse uuid warnings "
    "weakref zipfile zlib").split()

DEFAULT_MAX_CHARS = 450_000
SAMPLE_TEMPERATURES = (0.5, 0.8, 1.0)


# --- corpus ---------------------------------------------------------------------------------


def _public_docs(module) -> List[str]:
    """The docstrings of ``module``, its public classes and functions, and their public
    methods and properties, in name order."""
    docs = [module.__doc__]
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        # only what the module defines (its C accelerator "_name" counts as itself)
        owner = (getattr(obj, "__module__", None) or "").lstrip("_")
        if owner != module.__name__.lstrip("_"):
            continue
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and (
                        inspect.isroutine(member)
                        or isinstance(member, (property, classmethod, staticmethod))):
                    docs.append(getattr(member, "__doc__", None))
    return docs


def stdlib_corpus(max_chars: int = DEFAULT_MAX_CHARS,
                  modules: Sequence[str] = CORPUS_MODULES) -> str:
    """Docstrings of standard-library modules, cleaned (:func:`inspect.cleandoc`),
    de-duplicated, separated by blank lines; cut at a docstring boundary once
    ``max_chars`` is reached. Deterministic for a given Python version."""
    seen = set()
    parts: List[str] = []
    size = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # deprecated modules announce themselves
        for name in sorted(modules):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for doc in _public_docs(module):
                if not isinstance(doc, str):
                    continue
                doc = inspect.cleandoc(doc).strip()
                if len(doc) < 40 or doc in seen:  # skip one-liners like "Return self."
                    continue
                seen.add(doc)
                parts.append(doc)
                size += len(doc) + 2
                if size >= max_chars:
                    return "\n\n".join(parts)[:max_chars]
    return "\n\n".join(parts)


# --- data -------------------------------------------------------------------------------------


def _batchify(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """A 1-D token stream as ``rows`` parallel rows ``[rows, len // rows]``."""
    cols = ids.numel() // rows
    return ids[:rows * cols].view(rows, cols)


class _Progress:
    """tqdm when installed; otherwise a line every ~10% of the steps."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.bar = _tqdm(total=total, desc="train", unit="step", dynamic_ncols=True,
                         file=sys.stderr) if (enabled and _tqdm is not None) else None
        self.n = 0

    def update(self, **postfix) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.n == self.total or self.n % max(1, self.total // 10) == 0):
            text = ", ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"train {self.n}/{self.total}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- training -----------------------------------------------------------------------------


def _train_step(model, optimizer, x, y, state, clip: float):
    """One truncated-BPTT step; returns (loss, state after the chunk, detached)."""
    logits, state = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), detach_state(state)


def train(model: RNNLM, data: torch.Tensor, steps: int, seq_len: int, lr: float, clip: float,
          progress: bool = True, time_limit: Optional[float] = None) -> dict:
    """Trains ``model`` on ``data`` ``[rows, cols]`` for ``steps`` truncated-BPTT steps
    of ``seq_len`` tokens per row (Adam). The hidden state runs on from chunk to chunk
    and restarts at zeros when the data wraps around.

    The learning rate follows a cosine from ``lr`` down to ``lr / 10`` over the run. With
    a ``time_limit`` (seconds), training stops once it has passed, and the schedule's
    progress is whichever is further along, steps or time, so a run cut short by the
    clock still ends at the low learning rate."""
    rows, cols = data.shape
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bar = _Progress(steps, progress)
    state = None
    pos = 0
    smooth = None
    tokens_done = 0
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        elapsed = time.perf_counter() - start
        if time_limit is not None and done and elapsed > time_limit:
            break                                      # (always at least one step)
        frac = done / steps
        if time_limit is not None:
            frac = min(1.0, max(frac, elapsed / time_limit))
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        if pos + seq_len + 1 > cols:                   # next epoch: start over from zeros
            pos, state = 0, None
        x = data[:, pos:pos + seq_len]
        y = data[:, pos + 1:pos + seq_len + 1]
        pos += seq_len
        loss, state = _train_step(model, optimizer, x, y, state, clip)
        value = float(loss)
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        tokens_done += x.numel()
        done += 1
        elapsed = time.perf_counter() - start
        bar.update(loss=f"{smooth:.3f}", tok_s=f"{tokens_done / elapsed:,.0f}")
    bar.close()
    elapsed = time.perf_counter() - start
    return {"steps": done, "tokens": tokens_done, "seconds": elapsed,
            "tokens_per_s": tokens_done / elapsed, "final_loss": smooth}


def compare_speed(model: RNNLM, data: torch.Tensor, seq_len: int, steps: int,
                  rounds: int = 3) -> Tuple[float, float]:
    """Training tokens/s of ``model`` on rnnfast and of its torch twin (same weights,
    same batch, fresh Adam each), interleaved: ``rounds`` rounds of ``steps`` steps
    each after one warm-up step; medians. ``model`` itself is not changed."""
    x = data[:, :seq_len]
    y = data[:, 1:seq_len + 1]
    timings = {}
    for backend in ("rnnfast", "torch"):
        twin = model.twin(backend).train()
        opt = torch.optim.Adam(twin.parameters(), lr=1e-4)
        _train_step(twin, opt, x, y, None, 1.0)    # warm-up (allocations, packing)
        timings[backend] = (twin, opt, [])
    for _ in range(rounds):
        for backend, (twin, opt, times) in timings.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                _train_step(twin, opt, x, y, None, 1.0)
            times.append(time.perf_counter() - t0)
    per_s = {b: steps * x.numel() / statistics.median(t) for b, (_, _, t) in timings.items()}
    return per_s["rnnfast"], per_s["torch"]


# --- demo -----------------------------------------------------------------------------------


def _prompt_ids(tokenizer: Tokenizer, prompt: str) -> List[int]:
    """The prompt's ids, after an ``<eos>`` that stands for "start of a line": the model
    always has a token to condition on, even for an empty prompt."""
    return [tokenizer.eos_id] + tokenizer.encode(prompt)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rnnfast",
                                     description="rnnfast language-model demo")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a language model on rnnfast, then sample",
                          description=__doc__.split("\n\n")[0])
    demo.add_argument("--text", metavar="FILE",
                      help="train on this UTF-8 text file (default: standard-library "
                           "docstrings gathered at run time)")
    demo.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                      help="size of the default corpus (default: %(default)s)")
    demo.add_argument("--level", choices=("char", "word"), default="char")
    demo.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    demo.add_argument("--layers", type=int, default=1)
    demo.add_argument("--hidden", type=int, default=256)
    demo.add_argument("--embed", type=int, default=None,
                      help="embedding size (default: 64 for char, --hidden for word)")
    demo.add_argument("--tie-weights", action="store_true",
                      help="share the embedding and output matrices (needs --embed == --hidden)")
    demo.add_argument("--dropout", type=float, default=0.0)
    demo.add_argument("--peephole", action="store_true",
                      help="LSTM with peephole connections (rnnfast's own; torch has none)")
    demo.add_argument("--layer-norm", action="store_true",
                      help="layer-normalised LSTM/GRU cell (rnnfast's own; torch has none)")
    demo.add_argument("--weight-drop", type=float, default=0.0,
                      help="DropConnect on the recurrent weights in training (AWD-LSTM)")
    demo.add_argument("--zoneout", type=float, default=0.0,
                      help="zoneout probability of the recurrent states (Krueger et al. 2017)")
    demo.add_argument("--seq-len", type=int, default=64, help="truncated-BPTT length")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--steps", type=int, default=2500)
    demo.add_argument("--time-limit", type=float, default=100.0,
                      help="stop training after this many seconds even if --steps are not "
                           "done (0: no limit; default: %(default)s)")
    demo.add_argument("--lr", type=float, default=3e-3)
    demo.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    demo.add_argument("--min-freq", type=int, default=None,
                      help="rarer tokens become <unk> (default: 2 for word, 1 for char)")
    demo.add_argument("--vocab-size", type=int, default=None,
                      help="word level: keep at most this many words (default: 5000)")
    demo.add_argument("--val-fraction", type=float, default=0.05,
                      help="tail of the text held out for validation (default: %(default)s)")
    demo.add_argument("--compare-steps", type=int, default=2,
                      help="steps per round when timing rnnfast against torch (0: skip)")
    demo.add_argument("--sample-tokens", type=int, default=None,
                      help="length of each sample (default: 240 chars / 50 words)")
    demo.add_argument("--prompt", default="Return the ", help="prompt for the samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: torch's choice); on a machine shared with "
                           "other busy processes, 1 can be several times faster")
    demo.add_argument("--save", metavar="DIR", help="save model, config and tokenizer here")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = sub.add_parser("sample", help="sample from a model saved with demo --save")
    sample.add_argument("--load", metavar="DIR", required=True)
    sample.add_argument("--prompt", default="")
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--greedy", action="store_true", help="most likely token each step")
    sample.add_argument("--seed", type=int, default=None)
    return parser


def _check_demo_args(parser, args) -> None:
    for name in ("layers", "hidden", "seq_len", "batch_size", "steps", "max_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.time_limit < 0:
        parser.error(f"--time-limit must be >= 0, got {args.time_limit}")
    if args.compare_steps < 0:
        parser.error(f"--compare-steps must be >= 0, got {args.compare_steps}")
    if not 0.0 < args.val_fraction < 0.5:
        parser.error(f"--val-fraction must be in (0, 0.5), got {args.val_fraction}")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")


def run_demo(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    # corpus and tokenizer
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"error: cannot read --text {args.text!r}: {exc}") from None
        source = args.text
    else:
        text = stdlib_corpus(args.max_chars)
        source = "standard-library docstrings"
    split = int(len(text) * (1 - args.val_fraction))
    split = text.rfind("\n", 0, split) + 1 or split     # cut at a line end
    train_text, val_text = text[:split], text[split:]
    if args.level == "char":
        tokenizer = CharTokenizer.from_text(train_text, min_freq=args.min_freq or 1)
    else:
        tokenizer = WordTokenizer.from_text(train_text, min_freq=args.min_freq or 2,
                                            max_size=args.vocab_size or 5000)
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    data = _batchify(train_ids, args.batch_size)
    if data.size(1) < args.seq_len + 1:
        raise SystemExit(f"error: the training text has {train_ids.numel()} tokens: too short "
                         f"for --batch-size {args.batch_size} x --seq-len {args.seq_len}; "
                         "lower them or give a longer --text")
    val_rows = max(1, min(args.batch_size, val_ids.numel() // (args.seq_len + 1)))
    val = _batchify(val_ids, val_rows)
    if val.size(1) < 2:
        raise SystemExit(f"error: the validation split has {val_ids.numel()} tokens; give a "
                         "longer text or a larger --val-fraction")
    print(f"corpus: {source}, {len(text):,} chars; {args.level}-level vocabulary of "
          f"{tokenizer.vocab_size:,} tokens; {train_ids.numel():,} training / "
          f"{val_ids.numel():,} validation tokens")

    # model
    embed = args.embed or (64 if args.level == "char" else args.hidden)
    try:
        model = RNNLM(tokenizer.vocab_size, embed, args.hidden, args.layers, cell=args.cell,
                      dropout=args.dropout, tie_weights=args.tie_weights,
                      peephole=args.peephole, weight_drop=args.weight_drop,
                      zoneout=args.zoneout, layer_norm=args.layer_norm)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    n_params = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    regularisers = [f"{name} {value:g}" for name, value in
                    (("weight_drop", args.weight_drop), ("zoneout", args.zoneout)) if value]
    variants = "".join([" with peepholes" if args.peephole else "",
                        " with layer norm" if args.layer_norm else "",
                        f" ({', '.join(regularisers)})" if regularisers else ""])
    print(f"model: {args.cell.upper()}{variants} x{args.layers}, hidden {args.hidden}, "
          f"embedding {embed}, "
          f"{n_params:,} parameters, on rnnfast ({threads} thread{'s' if threads > 1 else ''}); "
          f"batch {args.batch_size} x {args.seq_len} tokens (truncated BPTT), {args.steps} steps")

    stats = train(model, data, args.steps, args.seq_len, args.lr, args.clip,
                  progress=not args.no_progress, time_limit=args.time_limit or None)
    if stats["steps"] < args.steps:
        print(f"(stopped by --time-limit {args.time_limit:g} s after {stats['steps']} of "
              f"{args.steps} steps: this machine is busier or slower than the defaults assume)")
    print(f"trained {stats['steps']} steps ({stats['tokens']:,} tokens) in "
          f"{stats['seconds']:.1f} s: {stats['tokens_per_s']:,.0f} tokens/s, "
          f"final training loss {stats['final_loss']:.3f}")

    model.eval()
    val_ppl = perplexity(model, val, chunk_size=args.seq_len)
    unit = "character" if args.level == "char" else "word"
    print(f"validation perplexity: {val_ppl:.2f} per {unit} "
          f"({math.log2(val_ppl):.3f} bits), on {val.numel():,} held-out tokens")

    # samples
    n_new = args.sample_tokens or (240 if args.level == "char" else 50)
    prompt = _prompt_ids(tokenizer, args.prompt)
    gen = torch.Generator().manual_seed(args.seed)
    for temperature in SAMPLE_TEMPERATURES:
        # the whole distribution at each temperature (generate's top_k default is 50)
        out = generate(model, torch.tensor([prompt]), n_new, do_sample=True,
                       temperature=temperature, top_k=None,
                       suppress_tokens=[tokenizer.unk_id], generator=gen)
        print(f"\nsample, temperature {temperature}:")
        print(_indent(tokenizer.decode(out[0, 1:].tolist())))
    out = generate(model, torch.tensor([prompt]), n_new, do_sample=False,
                   suppress_tokens=[tokenizer.unk_id])
    print("\ngreedy:")
    print(_indent(tokenizer.decode(out[0, 1:].tolist())))

    # speed against torch
    speed = None
    if args.compare_steps > 0 and (model.peephole or model.weight_drop or model.zoneout
                                   or model.layer_norm):
        missing = [name for name, on in (("peephole LSTM", model.peephole),
                                         ("weight_drop", model.weight_drop),
                                         ("zoneout", model.zoneout),
                                         ("layer_norm", model.layer_norm)) if on]
        print(f"\n(no speed comparison with torch: torch.nn has no {', '.join(missing)})")
    elif args.compare_steps > 0:
        fast, ref = compare_speed(model, data, args.seq_len, args.compare_steps)
        speed = {"rnnfast": fast, "torch": ref}
        torch_name = f"torch.nn.{'LSTM' if args.cell == 'lstm' else 'GRU'}"
        print(f"\ntraining speed, same model and batch ({args.batch_size} x {args.seq_len}), "
              f"interleaved: rnnfast {fast:,.0f} tokens/s | {torch_name} {ref:,.0f} tokens/s "
              f"| {fast / ref:.2f}x")

    if args.save:
        save_lm(args.save, model, tokenizer, level=args.level, seed=args.seed,
                steps=args.steps, val_perplexity=val_ppl, source=source)
        print(f"\nsaved to {args.save}; sample with: python -m rnnfast sample --load "
              f"{args.save} --prompt \"{args.prompt}\"")
    total = time.perf_counter() - t_start
    print(f"\ndemo finished in {total:.1f} s")
    return {"train": stats, "val_perplexity": val_ppl, "speed": speed, "seconds": total}


def run_sample(args) -> str:
    try:
        model, tokenizer, _ = load_lm(args.load)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot load {args.load!r}: {exc}") from None
    if tokenizer is None:
        raise SystemExit(f"error: {args.load!r} holds no tokenizer.json")
    prompt = _prompt_ids(tokenizer, args.prompt)
    generator = None
    if args.seed is not None:
        generator = torch.Generator().manual_seed(args.seed)
    try:
        # sampling arguments only when sampling (generate/stream warn about them otherwise)
        sampling = {} if args.greedy else dict(do_sample=True, temperature=args.temperature,
                                               top_k=args.top_k, top_p=args.top_p)
        steps = stream(model, torch.tensor([prompt]), args.max_new_tokens, generator=generator,
                       suppress_tokens=[tokenizer.unk_id], **sampling)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    # print as it is generated: the text of the ids so far, minus what is already out
    ids = list(prompt[1:])
    shown = tokenizer.decode(ids)
    sys.stdout.write(shown)
    for token in steps:
        ids.append(int(token[0]))
        text = tokenizer.decode(ids)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write("\n")
    return shown


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        _check_demo_args(parser, args)
        run_demo(args)
    else:
        run_sample(args)
    return 0
