"""Text generation and scoring for recurrent language models.

Works with any model that follows this protocol (``rnnfast.models.RNNLM`` does)::

    logits, state = model(input_ids, state)
    # input_ids [B, T] integer tensor; logits [B, T, V]; state: the recurrent state after
    # the last step (None in: the model starts from zeros). State tensors, possibly nested
    # in tuples/lists (LSTM: (h, c)), have the batch at dim 1, as torch's RNNs return them.

Because the model is recurrent, the prompt is run **once**: one forward over the
whole prompt primes the state, and each new token then costs one forward of a
single step (T=1) with the carried state.

* :func:`generate` — greedy decoding (the default), sampling (``do_sample=True``
  with temperature, top-k, top-p), beam search; per-row stop at ``eos_token_id``;
  suppressed tokens. Arguments that HuggingFace ``transformers``' ``generate`` also
  has keep its names, defaults and meaning (see :func:`generate` for the details and
  the few differences).
* :func:`stream` — the same decoding (not beam search) as an iterator that yields
  each step's tokens as they are produced.
* :func:`sequence_log_prob` and :func:`perplexity` — score given sequences in one
  batched forward.

Conventions
-----------
* **Padding.** Once a row has produced an end-of-sequence token, every later
  position of that row holds ``pad_token_id``, which defaults to the (first)
  ``eos_token_id``; a finished row's padding has log-probability 0 and its state
  stops advancing. Generation stops early when every row has finished, so
  ``sequences`` may be shorter than ``prompt + max_new_tokens``.
* **Returned state.** The state returned with the sequences has consumed every
  token of ``sequences`` except the last one (the last token was chosen but never
  fed); for a finished row, everything before its end-of-sequence token. To
  continue greedy decoding or sampling, pass the last column as the new prompt and
  the ``finished`` flags, so that finished rows stay finished::

      out = generate(model, ids, 50, return_dict=True, eos_token_id=eos)
      more = generate(model, out.sequences[:, -1:], 50, state=out.state,
                      finished=out.finished, eos_token_id=eos)

  ``torch.cat([out.sequences, more[:, 1:]], 1)`` is then exactly what
  ``generate(model, ids, 100, eos_token_id=eos)`` returns (with sampling too, when
  the same ``generator`` is used for both calls). Without ``finished``, the second
  call cannot know which rows had ended: those rows would be continued. A
  ``state`` passed in has, in the same way, consumed everything before
  ``input_ids``. (Beam search is a search over whole hypotheses: two beam searches
  in a row are not one longer beam search.)
* **Log-probabilities** (``output_scores=True``) are the model's own:
  ``log_softmax(logits)`` at the chosen token, before suppression, temperature,
  top-k or top-p, so they agree with :func:`sequence_log_prob`.
* **Modes.** Generation and scoring run under ``torch.no_grad()`` with the model
  switched to eval mode for the duration (dropout off); the model's training
  flags are restored afterwards.
"""
from __future__ import annotations

import math
import numbers
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .text import _check_int

__all__ = ["generate", "stream", "TokenStream", "GenerateOutput", "sequence_log_prob",
           "perplexity"]

TokenIds = Union[int, Sequence[int], Tensor]


# --- results ------------------------------------------------------------------------------


@dataclass
class GenerateOutput:
    """What :func:`generate` returns with ``return_dict=True``.

    Shapes: ``N = batch * num_return_sequences`` rows, ``P`` prompt tokens, ``n``
    generated tokens (``n <= max_new_tokens``).

    Attributes:
        sequences: ``[N, P + n]`` the prompt followed by the generated tokens (rows
            that ended early are padded with ``pad_token_id``).
        state: the recurrent state for the ``N`` rows, having consumed every token of
            ``sequences`` but the last (see the module notes on continuing).
        finished: ``[N]`` bool, whether the row produced an end-of-sequence token.
        lengths: ``[N]`` each row's length up to and including its end-of-sequence
            token (``P + n`` for rows that did not finish): pass it as ``lengths`` to
            :func:`sequence_log_prob` to leave the padding out.
        token_log_probs: ``[N, n]`` with ``output_scores=True``: the model's
            log-probability of each generated token (0 at padding); else None.
        sequences_scores: ``[N]`` with ``output_scores=True``, else None. Beam search:
            HuggingFace's score, the sum of ``token_log_probs`` divided by
            ``generated_length ** length_penalty`` (``generated_length`` counts the
            generated tokens up to and including the end-of-sequence token), the
            score the hypotheses are ranked by. Greedy decoding and sampling: the sum
            of ``token_log_probs`` (the joint log-probability of the generated part
            given the prompt).
    """

    sequences: Tensor
    state: Any
    finished: Tensor
    lengths: Tensor
    token_log_probs: Optional[Tensor] = None
    sequences_scores: Optional[Tensor] = None


# --- argument checks ------------------------------------------------------------------------


def _type_name(value) -> str:
    return type(value).__name__


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)} ({value!r})")


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable as model(input_ids, state) -> (logits, state), "
                        f"got {_type_name(model)}")


def _check_ids(name: str, input_ids, min_len: int = 1) -> Tensor:
    """``input_ids`` as a 2-D integer tensor (a 1-D tensor is one row)."""
    if not isinstance(input_ids, Tensor):
        hint = " (e.g. torch.tensor([ids]))" if isinstance(input_ids, (list, tuple)) else ""
        raise TypeError(f"{name} must be a torch.Tensor of token ids{hint}, got "
                        f"{_type_name(input_ids)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or \
            input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, length] (or 1-D for one sequence), got "
                         f"shape {tuple(input_ids.shape)}")
    if input_ids.size(0) == 0:
        raise ValueError(f"{name} must hold at least one sequence, got shape "
                         f"{tuple(input_ids.shape)}")
    if input_ids.size(1) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} token(s) per row, got shape "
                         f"{tuple(input_ids.shape)}")
    return input_ids.long()


def _id_list(name: str, value, allow_empty: bool = True) -> Optional[List[int]]:
    """An int, an iterable of ints or a 1-D integer tensor, as a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dim() > 1:
            raise TypeError(f"{name} must be an int, a sequence of ints or a 1-D integer "
                            f"tensor, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.reshape(-1).tolist()
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    elif isinstance(value, (list, tuple, set, frozenset, range)):
        value = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    else:
        raise TypeError(f"{name} must be an int, a sequence of ints or a 1-D integer tensor, "
                        f"got {_type_name(value)}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must hold ints, got {_type_name(v)} ({v!r})")
        if v < 0:
            raise ValueError(f"{name} must hold non-negative token ids, got {v}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return value


@dataclass
class _Decoding:
    """Checked decoding options (for sampling/greedy and beam search alike)."""

    do_sample: bool
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    eos: Optional[List[int]]
    pad: Optional[int]
    suppress: Optional[List[int]]
    generator: Optional[torch.Generator]


def _check_decoding(do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
                    suppress_tokens, generator) -> _Decoding:
    _check_bool("do_sample", do_sample)
    temperature = _finite_float("temperature", temperature)
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (do_sample=True), got "
                         f"{temperature}; for the most likely token use do_sample=False")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    _check_int("top_k", top_k, 0, allow_none=True)
    if top_k == 0:
        top_k = None                               # as in transformers: 0 turns top-k off
    if top_p is not None:
        if not isinstance(top_p, numbers.Real) or isinstance(top_p, bool):
            raise TypeError(f"top_p must be a float in (0, 1] or None, got {_type_name(top_p)} "
                            f"({top_p!r})")
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    eos = _id_list("eos_token_id", eos_token_id, allow_empty=False)
    _check_int("pad_token_id", pad_token_id, 0, allow_none=True)
    if pad_token_id is None and eos is not None:
        pad_token_id = eos[0]
    suppress = _id_list("suppress_tokens", suppress_tokens)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{_type_name(generator)}")
    return _Decoding(do_sample, temperature, top_k, top_p, eos, pad_token_id, suppress or None,
                     generator)


def _finite_float(name: str, value) -> float:
    """``value`` as a float; TypeError if it is not a real number, ValueError if not finite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {_type_name(value)} ({value!r})")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _check_beam_options(length_penalty, early_stopping) -> float:
    length_penalty = _finite_float("length_penalty", length_penalty)
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or \"never\", got "
                         f"{early_stopping!r}")
    return length_penalty


def _warn_ignored(do_sample: bool, num_beams: int, temperature, top_k, top_p, length_penalty,
                  early_stopping) -> None:
    """Warns, as transformers does, about arguments the chosen decoding ignores: sampling
    arguments without ``do_sample=True``, beam arguments without ``num_beams > 1``.
    The values that draw no warning are transformers' defaults."""
    ignored = []
    if not do_sample:
        if temperature != 1.0:
            ignored.append(f"temperature={temperature!r}")
        if top_k is not None and top_k != 50:
            ignored.append(f"top_k={top_k!r}")
        if top_p is not None and top_p != 1.0:
            ignored.append(f"top_p={top_p!r}")
        if ignored:
            warnings.warn(f"do_sample is not True, so {', '.join(ignored)} has no effect: "
                          "these arguments only act when sampling. Pass do_sample=True to "
                          "sample, or leave them unset for greedy decoding or beam search.",
                          UserWarning, stacklevel=3)
    if num_beams == 1:
        beam_args = []
        if length_penalty != 1.0:
            beam_args.append(f"length_penalty={length_penalty!r}")
        if early_stopping is not False:
            beam_args.append(f"early_stopping={early_stopping!r}")
        if beam_args:
            warnings.warn(f"num_beams is 1, so {', '.join(beam_args)} has no effect: these "
                          "arguments only act in beam search (num_beams > 1).",
                          UserWarning, stacklevel=3)


def _check_finished(finished, batch: int, dec: "_Decoding", device) -> Optional[Tensor]:
    """``finished`` as a ``[batch]`` bool tensor (None stays None)."""
    if finished is None:
        return None
    if not isinstance(finished, Tensor) or finished.dtype != torch.bool:
        got = f"a {finished.dtype} tensor" if isinstance(finished, Tensor) else \
            _type_name(finished)
        raise TypeError(f"finished must be a bool tensor (a previous output's .finished), "
                        f"got {got}")
    if finished.dim() != 1 or finished.numel() != batch:
        raise ValueError(f"finished must hold one flag per row of input_ids: expected shape "
                         f"({batch},), got {tuple(finished.shape)}")
    if dec.pad is None and bool(finished.any()):
        raise ValueError("finished rows are padded with pad_token_id: pass eos_token_id "
                         "(or pad_token_id) along with finished")
    return finished.to(device)


def _check_vocab_ids(dec: _Decoding, vocab_size: int) -> None:
    """Checks the token ids in ``dec`` against the model's vocabulary (known after the
    first forward)."""
    for name, ids in (("eos_token_id", dec.eos), ("suppress_tokens", dec.suppress),
                      ("pad_token_id", None if dec.pad is None else [dec.pad])):
        for v in ids or ():
            if v >= vocab_size:
                raise ValueError(f"{name} holds token id {v}, outside the model's vocabulary "
                                 f"[0, {vocab_size - 1}]")
    if dec.suppress is not None and len(set(dec.suppress)) >= vocab_size:
        raise ValueError(f"suppress_tokens suppresses all {vocab_size} tokens of the "
                         "vocabulary; nothing could be generated")


# --- model plumbing ---------------------------------------------------------------------------


@contextmanager
def _inference(model):
    """no_grad + eval mode for the duration; training flags restored afterwards."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def _forward(model, ids: Tensor, state):
    out = model(ids, state)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"model(input_ids, state) must return (logits, state), got "
                        f"{_type_name(out)}")
    logits, state = out
    if not isinstance(logits, Tensor) or logits.dim() != 3 or \
            tuple(logits.shape[:2]) != tuple(ids.shape):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else _type_name(logits)
        raise ValueError(f"model must return logits of shape [batch, time, vocab] = "
                         f"[{ids.size(0)}, {ids.size(1)}, V], got {got}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"model returned {logits.dtype} logits; expected a floating dtype")
    return logits, state


def _map_state(state, fn):
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(s, fn) for s in state)
    raise TypeError(f"state must be a Tensor or (nested) tuple of Tensors, got "
                    f"{_type_name(state)}")


def _select_rows(state, index: Tensor):
    """State rows ``index`` (batch at dim 1)."""
    return _map_state(state, lambda t: t.index_select(1, index.to(t.device)))


def _repeat_rows(state, repeats: int):
    if repeats == 1:
        return state
    return _map_state(state, lambda t: t.repeat_interleave(repeats, dim=1))


def _merge_rows(first, second, index: Tensor):
    """Rows ``index`` of the two states stacked along the batch (``second``'s rows come
    after ``first``'s)."""
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat([first, second], dim=1).index_select(1, index.to(first.device))
    return type(first)(_merge_rows(a, b, index) for a, b in zip(first, second))


def _keep_rows(state, new_state, keep: Tensor):
    """``new_state``, except rows where ``keep`` is True, which keep ``state``."""
    if state is None or not bool(keep.any()):
        return new_state
    if isinstance(state, Tensor):
        mask = keep.to(state.device).view(1, -1, *([1] * (state.dim() - 2)))
        return torch.where(mask, state, new_state)
    return type(state)(_keep_rows(s, n, keep) for s, n in zip(state, new_state))


def _row_lengths(prompt_len: int, tokens: Tensor, finished: Tensor,
                 eos: Optional[Tensor]) -> Tensor:
    """Prompt plus generated tokens up to and including the first end-of-sequence."""
    n = tokens.size(1)
    lengths = torch.full_like(finished, prompt_len + n, dtype=torch.long)
    if eos is not None and n and bool(finished.any()):
        first = torch.isin(tokens, eos).int().argmax(dim=1)
        lengths = torch.where(finished, prompt_len + first + 1, lengths)
    return lengths


def _float_logits(logits: Tensor) -> Tensor:
    """Last-step logits in at least float32."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _suppress_mask(dec: _Decoding, vocab_size: int, device) -> Optional[Tensor]:
    if dec.suppress is None:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[dec.suppress] = True
    return mask


def _filter_top_k(scores: Tensor, k: int) -> Tensor:
    if k >= scores.size(-1):
        return scores
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def _filter_top_p(scores: Tensor, p: float) -> Tensor:
    """Keeps the smallest set of most likely tokens whose probability reaches ``p``
    (always at least the most likely one)."""
    if p >= 1.0:
        return scores
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs       # probability of the better tokens
    drop = mass_before >= p
    drop[..., 0] = False
    return scores.scatter(-1, order, sorted_scores.masked_fill(drop, -math.inf))


def _choose(logits: Tensor, dec: _Decoding, suppress: Optional[Tensor]) -> Tensor:
    """The next token of each row from last-step ``logits`` [N, V]."""
    scores = logits if suppress is None else logits.masked_fill(suppress, -math.inf)
    if not dec.do_sample:
        return scores.argmax(dim=-1)
    if dec.temperature != 1.0:
        scores = scores / dec.temperature
    if dec.top_k is not None:
        scores = _filter_top_k(scores, dec.top_k)
    if dec.top_p is not None:
        scores = _filter_top_p(scores, dec.top_p)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=dec.generator).squeeze(1)


# --- sampling / greedy as a stream ------------------------------------------------------------


class TokenStream:
    """An iterator over generated tokens: each ``next()`` yields a ``[N]`` long tensor,
    the new token of every row (``pad_token_id`` for finished rows).

    Built by :func:`stream`. Nothing runs until the first ``next()``, which runs the
    prompt; each later ``next()`` runs one step. Iteration ends after
    ``max_new_tokens`` steps, or once every row has finished. While and after
    iterating, these attributes describe the generation so far:

    * ``sequences`` ``[N, P + n]``, ``tokens`` ``[N, n]`` (generated part only),
    * ``token_log_probs`` ``[N, n]``, ``finished`` ``[N]`` bool,
    * ``state``: consumed every token of ``sequences`` but the last (see the module
      notes); ``output()`` packs these into a :class:`GenerateOutput`.
    """

    def __init__(self, model, input_ids: Tensor, max_new_tokens: int, dec: _Decoding,
                 num_return_sequences: int, state, finished: Optional[Tensor] = None) -> None:
        self._model = model
        self._prompt = input_ids
        self._max_new = max_new_tokens
        self._dec = dec
        self._repeats = num_return_sequences
        self.state = state
        self._tokens: List[Tensor] = []
        self._log_probs: List[Tensor] = []
        self._suppress: Optional[Tensor] = None
        self._eos: Optional[Tensor] = None
        rows = input_ids.size(0) * num_return_sequences
        # rows finished before this call (continuing a previous one): padded from the start
        self._given_finished = finished if finished is not None and bool(finished.any()) \
            else None
        if self._given_finished is not None:
            self.finished = self._given_finished.repeat_interleave(num_return_sequences)
        else:
            self.finished = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        # rows can finish (end-of-sequence ids) or have finished: mask them at each step
        self._masking = dec.eos is not None or self._given_finished is not None
        self._done = bool(self.finished.all())

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> Tensor:
        if self._done:
            raise StopIteration
        with _inference(self._model):
            if not self._tokens:
                logits = self._prime()
            else:
                logits = self._advance()
            token = self._pick(logits)
        if len(self._tokens) >= self._max_new or bool(self.finished.all()):
            self._done = True
        return token

    def _prime(self) -> Tensor:
        """One forward over the whole prompt; returns next-token logits [N, V]."""
        logits, state = _forward(self._model, self._prompt, self.state)
        if self._given_finished is not None:         # rows that had ended keep their state
            state = _keep_rows(self.state, state, self._given_finished)
        vocab = logits.size(-1)
        _check_vocab_ids(self._dec, vocab)
        self._suppress = _suppress_mask(self._dec, vocab, logits.device)
        if self._dec.eos is not None:
            self._eos = torch.tensor(self._dec.eos, device=logits.device)
        logits = _float_logits(logits[:, -1])
        if self._repeats > 1:
            logits = logits.repeat_interleave(self._repeats, dim=0)
            state = _repeat_rows(state, self._repeats)
        self.state = state
        return logits

    def _advance(self) -> Tensor:
        """Feeds the last chosen tokens (one step, T=1); finished rows keep their state."""
        last = self._tokens[-1]
        logits, new_state = _forward(self._model, last.unsqueeze(1), self.state)
        self.state = _keep_rows(self.state, new_state, self.finished)
        return _float_logits(logits[:, -1])

    def _pick(self, logits: Tensor) -> Tensor:
        token = _choose(logits, self._dec, self._suppress)
        log_prob = logits.log_softmax(dim=-1).gather(1, token.unsqueeze(1)).squeeze(1)
        if self._masking:
            done = self.finished
            token = token.masked_fill(done, self._dec.pad)
            log_prob = log_prob.masked_fill(done, 0.0)
            if self._eos is not None:
                self.finished = done | torch.isin(token, self._eos)
        self._tokens.append(token)
        self._log_probs.append(log_prob)
        return token

    # --- results so far ---

    @property
    def tokens(self) -> Tensor:
        rows = self.finished.size(0)
        if not self._tokens:
            return self._prompt.new_empty((rows, 0))
        return torch.stack(self._tokens, dim=1)

    @property
    def sequences(self) -> Tensor:
        prompt = self._prompt.repeat_interleave(self._repeats, dim=0)
        return torch.cat([prompt, self.tokens], dim=1)

    @property
    def token_log_probs(self) -> Tensor:
        if not self._log_probs:
            return torch.empty((self.finished.size(0), 0))
        return torch.stack(self._log_probs, dim=1)

    def output(self, output_scores: bool = True) -> GenerateOutput:
        lp = self.token_log_probs if output_scores else None
        lengths = _row_lengths(self._prompt.size(1), self.tokens, self.finished, self._eos)
        if self._given_finished is not None:        # ended before this call: nothing added
            given = self._given_finished.repeat_interleave(self._repeats)
            lengths = lengths.masked_fill(given, self._prompt.size(1))
        return GenerateOutput(sequences=self.sequences, state=self.state,
                              finished=self.finished.clone(), lengths=lengths,
                              token_log_probs=lp,
                              sequences_scores=None if lp is None else lp.sum(dim=1))


def _token_stream(model, input_ids: Tensor, max_new_tokens: int, dec: _Decoding,
                  num_return_sequences: int, state, finished) -> TokenStream:
    """The TokenStream of greedy decoding or sampling, after the checks that need ``dec``
    (shared by :func:`stream` and :func:`generate`)."""
    if num_return_sequences > 1 and not dec.do_sample:
        raise ValueError(f"num_return_sequences={num_return_sequences} with greedy decoding "
                         "(do_sample=False, num_beams=1) would return identical copies; use "
                         "do_sample=True or beam search (num_beams >= num_return_sequences)")
    finished = _check_finished(finished, input_ids.size(0), dec, input_ids.device)
    return TokenStream(model, input_ids, max_new_tokens, dec, num_return_sequences, state,
                       finished)


def stream(model, input_ids: Tensor, max_new_tokens: int, *, do_sample: bool = False,
           temperature: float = 1.0, top_k: Optional[int] = 50, top_p: Optional[float] = None,
           eos_token_id: Optional[TokenIds] = None, pad_token_id: Optional[int] = None,
           suppress_tokens: Optional[TokenIds] = None, num_return_sequences: int = 1,
           generator: Optional[torch.Generator] = None, state=None,
           finished: Optional[Tensor] = None) -> TokenStream:
    """Greedy decoding or sampling, one step at a time.

    Returns a :class:`TokenStream`; iterate it to get each step's ``[N]`` tokens as
    soon as they are chosen (e.g. to print text as it is generated). The arguments
    are those of :func:`generate` (no beam search). Iterating to the end gives the
    same tokens as :func:`generate` with the same arguments.

    >>> s = stream(model, prompt_ids, 100, do_sample=True, temperature=0.8,
    ...            eos_token_id=tok.eos_id)
    >>> for t in s:
    ...     print(tok.decode(t.tolist()), end="", flush=True)
    """
    _check_model(model)
    input_ids = _check_ids("input_ids", input_ids)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_return_sequences", num_return_sequences, 1)
    dec = _check_decoding(do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
                          suppress_tokens, generator)
    _warn_ignored(dec.do_sample, 1, temperature, top_k, top_p, 1.0, False)
    return _token_stream(model, input_ids, max_new_tokens, dec, num_return_sequences, state,
                         finished)


# --- beam search ----------------------------------------------------------------------------

# The score transformers gives to a hypothesis that must not be chosen (the initial copies
# of the first beam, hypotheses that are not finished when filling the finished list, ...):
# a finite number, not -inf, so that ranking and arithmetic on it stay defined. Beam search
# below uses the same value so that its choices, ties included, are transformers' choices.
_EXCLUDED = -1.0e9


def _beam_search(model, input_ids: Tensor, max_new_tokens: int, dec: _Decoding,
                 num_beams: int, num_return_sequences: int, state,
                 length_penalty: float = 1.0, early_stopping: Union[bool, str] = False
                 ) -> GenerateOutput:
    """Beam search as transformers does it (``GenerationMixin`` beam search, 5.x).

    Per prompt row, ``num_beams`` *running* hypotheses and a list of at most
    ``num_beams`` *finished* ones. Each step extends every running hypothesis by every
    token, adds the token's log-probability to the hypothesis' sum, and keeps the
    ``max(2, 1 + len(eos)) * num_beams`` best extensions (candidates). Candidates that
    end in an end-of-sequence token (and, at the last step, all candidates) are done:
    those among the best ``num_beams`` candidates enter the finished list with the
    score ``sum / generated_length ** length_penalty``, where they replace worse
    finished ones; the best ``num_beams`` candidates that are not done are the next
    running hypotheses, so the beam keeps its width. The search stops when no running
    hypothesis can still enter the finished list (transformers' heuristic, ruled by
    ``early_stopping``: ``True`` stops as soon as the list is full, ``False``
    estimates the best reachable score at the current length, ``"never"`` at the
    maximal length when ``length_penalty > 0``), or at ``max_new_tokens``. The
    finished list, best first, is the result.

    Scores use the model's log-probabilities with suppressed tokens at -inf, in the
    logits' dtype promoted to at least float32 (transformers: always float32).
    Hypotheses that are not real (the initial copies of the single prompt hypothesis
    and their extensions) carry transformers' large negative placeholder scores; if
    fewer real hypotheses than ``num_return_sequences`` exist (e.g. ``num_beams``
    exceeds what the allowed tokens can form in ``max_new_tokens`` steps),
    transformers returns such placeholders: here that is a ValueError.
    """
    B, K, P, n = input_ids.size(0), num_beams, input_ids.size(1), max_new_tokens
    device = input_ids.device
    with _inference(model):
        logits, state = _forward(model, input_ids, state)
        V = logits.size(-1)
        _check_vocab_ids(dec, V)
        n_eos = 0 if dec.eos is None else len(dec.eos)
        per_beam = max(2, 1 + n_eos)               # candidates kept per beam and step
        if per_beam > V:
            raise ValueError(f"beam search keeps {per_beam} candidates per beam (one more "
                             f"than the {n_eos} end-of-sequence ids, at least 2), more than "
                             f"the model's vocabulary of {V} tokens")
        W = per_beam * K
        suppress = _suppress_mask(dec, V, logits.device)
        eos = None if dec.eos is None else torch.tensor(dec.eos, device=device)
        logits = _float_logits(logits[:, -1]).repeat_interleave(K, dim=0)   # [B*K, V]
        dtype = logits.dtype
        state = _repeat_rows(state, K)
        fill = dec.pad if dec.pad is not None else 0   # no eos: no hypothesis is padded

        # running hypotheses [B, K, ...]: only the first is real at the start
        run_tok = input_ids.new_full((B, K, n), fill)
        run_lp = torch.zeros((B, K, n), dtype=dtype, device=device)
        run_score = torch.zeros((B, K), dtype=dtype, device=device)
        run_score[:, 1:] = _EXCLUDED
        run_real = torch.zeros((B, K), dtype=torch.bool, device=device)
        run_real[:, 0] = True
        # finished hypotheses [B, K, ...], best first
        fin_tok = run_tok.clone()
        fin_lp = run_lp.clone()
        fin_score = torch.full((B, K), _EXCLUDED, dtype=dtype, device=device)
        fin_set = torch.zeros((B, K), dtype=torch.bool, device=device)   # slot holds one
        fin_real = torch.zeros((B, K), dtype=torch.bool, device=device)
        fin_eos = torch.zeros((B, K), dtype=torch.bool, device=device)
        fin_len = torch.zeros((B, K), dtype=torch.long, device=device)
        fin_state = _map_state(state, torch.zeros_like)
        can_improve = torch.ones((B, 1), dtype=torch.bool, device=device)
        in_top = torch.arange(W, device=device) < K          # the best K candidates
        beam_base = (torch.arange(B, device=device) * K).unsqueeze(1)      # [B, 1]
        slots = torch.arange(K, device=device)

        for t in range(n):
            if t:
                new_logits, state = _forward(model, run_tok[:, :, t - 1].reshape(B * K, 1),
                                             state)
                logits = _float_logits(new_logits[:, -1])
            lp = logits.log_softmax(dim=-1)                                 # [B*K, V]
            if suppress is not None:
                lp = lp.masked_fill(suppress, -math.inf)
            total = (lp.view(B, K, V) + run_score.unsqueeze(2)).view(B, K * V)
            cand_score, flat = total.topk(W, dim=1)                         # [B, W]
            parent = flat // V
            tok = flat % V
            tok_lp = lp.view(B, K * V).gather(1, flat)
            cand_tok = run_tok.gather(1, parent.unsqueeze(2).expand(B, W, n)).clone()
            cand_tok[:, :, t] = tok
            cand_lp = run_lp.gather(1, parent.unsqueeze(2).expand(B, W, n)).clone()
            cand_lp[:, :, t] = tok_lp
            # (no suppressed token, at -inf, is ever kept: each beam has finite candidates)
            cand_real = run_real.gather(1, parent)
            ends = torch.isin(tok, eos) if eos is not None else torch.zeros_like(cand_real)
            done = torch.ones_like(ends) if t == n - 1 else ends

            # the next running hypotheses: the best K candidates that are not done
            masked = cand_score + done.to(dtype) * _EXCLUDED
            pick = masked.topk(K, dim=1).indices                            # [B, K]
            new_run_score = masked.gather(1, pick)
            new_run_tok = cand_tok.gather(1, pick.unsqueeze(2).expand(B, K, n))
            new_run_lp = cand_lp.gather(1, pick.unsqueeze(2).expand(B, K, n))
            new_run_real = (cand_real & ~done).gather(1, pick)
            run_parent = parent.gather(1, pick)

            # the finished list: done candidates among the best K, if they beat its worst
            entering = done & in_top
            score = cand_score / ((t + 1) ** length_penalty)
            full = fin_set.all(dim=1, keepdim=True) & (early_stopping is True)
            score = score + full.to(dtype) * _EXCLUDED
            score = score + (~can_improve).to(dtype) * _EXCLUDED
            score = score + (~entering).to(dtype) * _EXCLUDED
            keep = torch.cat([fin_score, score], dim=1).topk(K, dim=1).indices  # [B, K]
            fin_score = torch.cat([fin_score, score], dim=1).gather(1, keep)
            fin_set = torch.cat([fin_set, entering], dim=1).gather(1, keep)
            fin_real = torch.cat([fin_real, entering & cand_real], dim=1).gather(1, keep)
            fin_eos = torch.cat([fin_eos, ends], dim=1).gather(1, keep)
            fin_len = torch.cat([fin_len, torch.full((B, W), t + 1, device=device)],
                                dim=1).gather(1, keep)
            idx3 = keep.unsqueeze(2).expand(B, K, n)
            fin_tok = torch.cat([fin_tok, cand_tok], dim=1).gather(1, idx3)
            fin_lp = torch.cat([fin_lp, cand_lp], dim=1).gather(1, idx3)
            if not torch.equal(keep, slots.expand(B, K)):
                # a candidate's state is its parent's: it has consumed all but its last token
                from_cand = keep >= K
                cand_parent = parent.gather(1, (keep - K).clamp(min=0))
                rows = torch.where(from_cand, B * K + beam_base + cand_parent,
                                   beam_base + keep.clamp(max=K - 1))
                fin_state = _merge_rows(fin_state, state, rows.reshape(-1))

            run_score, run_tok, run_lp, run_real = new_run_score, new_run_tok, new_run_lp, \
                new_run_real
            state = _select_rows(state, (beam_base + run_parent).reshape(-1))

            # stop when no row can change its finished list any more
            if early_stopping == "never" and length_penalty > 0.0:
                best_len = n
            else:
                best_len = t + 1
            best_running = run_score[:, :1] / (best_len ** length_penalty)
            worst_finished = torch.where(fin_set, fin_score.min(dim=1, keepdim=True).values,
                                         _EXCLUDED)
            can_improve = can_improve & (best_running > worst_finished).any(dim=1, keepdim=True)
            if not bool(can_improve.any()) or \
                    (early_stopping is True and bool(fin_set.all())) or bool(done.all()):
                break

    R = num_return_sequences
    real = fin_real[:, :R]
    if not bool(real.all()):
        found = fin_real.sum(dim=1)
        row = int((~real.all(dim=1)).nonzero()[0])
        allowed = V - (0 if dec.suppress is None else len(set(dec.suppress)))
        raise ValueError(
            f"beam search found only {int(found[row])} hypotheses for prompt row {row}, fewer "
            f"than num_return_sequences={R}: {allowed} allowed tokens (of {V}, the others "
            f"suppressed) and {n} new tokens make too few hypotheses for num_beams={K} "
            "(transformers would return the missing rows as placeholders scored near -1e9). "
            "Lower num_beams or num_return_sequences, or raise max_new_tokens")
    length = int(fin_len[:, :R].max())
    tokens = fin_tok[:, :R, :length].reshape(B * R, length)
    keep = (beam_base + torch.arange(R, device=device)).reshape(-1)
    finished = fin_eos[:, :R].reshape(-1)
    lengths = P + fin_len[:, :R].reshape(-1)
    return GenerateOutput(sequences=torch.cat([input_ids.repeat_interleave(R, dim=0), tokens],
                                              dim=1),
                          state=_select_rows(fin_state, keep),
                          finished=finished, lengths=lengths,
                          token_log_probs=fin_lp[:, :R, :length].reshape(B * R, length),
                          sequences_scores=fin_score[:, :R].reshape(-1))


# --- generate ------------------------------------------------------------------------------


def generate(model, input_ids: Tensor, max_new_tokens: int, *, do_sample: bool = False,
             temperature: float = 1.0, top_k: Optional[int] = 50,
             top_p: Optional[float] = None, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
             eos_token_id: Optional[TokenIds] = None, pad_token_id: Optional[int] = None,
             suppress_tokens: Optional[TokenIds] = None, num_return_sequences: int = 1,
             generator: Optional[torch.Generator] = None, state=None,
             finished: Optional[Tensor] = None, return_dict: bool = False,
             output_scores: bool = False) -> Union[Tensor, GenerateOutput]:
    """Continues each prompt row of ``input_ids`` by up to ``max_new_tokens`` tokens.

    The arguments that HuggingFace ``transformers``' ``generate`` also has keep its
    names, defaults and meaning, and give its sequences (checked against
    transformers 5.24 in ``tests/test_hf_generate.py``): greedy decoding unless
    ``do_sample=True``; sampling processes the logits as transformers does
    (suppressed tokens, then temperature, then top-k with ``top_k=50`` by default,
    then top-p); beam search keeps ``num_beams`` running hypotheses and a list of
    finished ones (see :func:`_beam_search`), with ``length_penalty`` and
    ``early_stopping``. As in transformers, sampling arguments given without
    ``do_sample=True``, and beam arguments given with ``num_beams=1``, draw a
    UserWarning and have no effect. Differences: ``state``, ``finished`` and
    ``generator`` are rnnfast's own; sampling with beams (``do_sample=True,
    num_beams > 1``) is not supported (ValueError); where transformers' beam search
    would return placeholder rows (fewer real hypotheses than
    ``num_return_sequences``) this raises ValueError; ``pad_token_id=0`` pads beam
    search outputs with 0 (transformers' beam search pads with the first
    ``eos_token_id`` when ``pad_token_id`` is 0); ``output_scores`` gives per-token
    log-probabilities (``token_log_probs``), not transformers' per-step ``scores``.

    Args:
        model: ``model(input_ids [B, T], state) -> (logits [B, T, V], state)``.
        input_ids: ``[B, P]`` integer prompt (``P >= 1``; a 1-D tensor is one prompt).
            To generate from nothing, start from a BOS-like token (e.g. ``<eos>``).
        max_new_tokens: how many tokens to generate at most (>= 1).
        do_sample: sample from the processed distribution; ``False`` (the default)
            picks the most likely token (greedy), or runs beam search with
            ``num_beams > 1``.
        temperature: divides the logits before sampling; must be > 0 when sampling.
        top_k: when sampling, only among the ``top_k`` most likely tokens (default 50,
            as in transformers; ``None`` or 0: no limit).
        top_p: nucleus sampling: only among the smallest set of most likely tokens
            whose probability reaches ``top_p`` (in (0, 1]).
        num_beams: > 1 runs beam search; ``sequences`` come back best first per prompt.
        length_penalty: beam search ranks a hypothesis by its summed log-probability
            divided by ``generated_length ** length_penalty`` (> 0 favours longer
            hypotheses, < 0 shorter ones, 0 ranks by the sum itself).
        early_stopping: when beam search stops: ``True`` as soon as ``num_beams``
            hypotheses have finished; ``False`` when, by a heuristic, no running
            hypothesis can beat the finished ones; ``"never"`` only when none can
            (exact for ``length_penalty <= 0``), as in transformers.
        eos_token_id: an id (or ids) ending a row; later positions are padded.
        pad_token_id: the padding of finished rows; defaults to ``eos_token_id``
            (the first one).
        suppress_tokens: ids that are never produced.
        num_return_sequences: rows per prompt (samples, or the best beams with beam
            search, ``<= num_beams``). Row ``b * num_return_sequences + j`` continues
            prompt ``b``. The prompt is still run once per prompt row.
        generator: a ``torch.Generator`` that makes sampling reproducible (``None``:
            torch's global generator, as transformers uses).
        state: the recurrent state to start from (it has consumed everything before
            ``input_ids``); ``None``: the model's zero state.
        finished: ``[B]`` bool, rows of ``input_ids`` that have already ended (a
            previous call's ``finished``, see the module notes on continuing): they
            are only padded and do not keep generation going. Not with beam search.
        return_dict: return a :class:`GenerateOutput` (sequences, final state,
            finished flags, lengths) instead of the ``sequences`` tensor.
        output_scores: also fill ``token_log_probs`` and ``sequences_scores`` (needs
            ``return_dict=True``).

    Returns:
        ``sequences`` ``[N, P + n]`` (``N = B * num_return_sequences``, ``n <=
        max_new_tokens``: generation stops when every row has finished, or when beam
        search stops), or a :class:`GenerateOutput` with ``return_dict=True``.

    The prompt is run once (one forward over ``[B, P]``); each further token costs
    one forward of ``[N, 1]`` (beam search: ``[B * num_beams, 1]``) with the carried
    state.
    """
    _check_model(model)
    input_ids = _check_ids("input_ids", input_ids)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_beams", num_beams, 1)
    _check_int("num_return_sequences", num_return_sequences, 1)
    _check_bool("return_dict", return_dict)
    _check_bool("output_scores", output_scores)
    if output_scores and not return_dict:
        raise ValueError("output_scores=True returns the scores in a GenerateOutput: pass "
                         "return_dict=True as well")
    _check_bool("do_sample", do_sample)
    length_penalty = _check_beam_options(length_penalty, early_stopping)
    dec = _check_decoding(do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
                          suppress_tokens, generator)
    _warn_ignored(do_sample, num_beams, temperature, top_k, top_p, length_penalty,
                  early_stopping)
    if num_beams > 1:
        if do_sample:
            raise ValueError(f"beam search with sampling (num_beams={num_beams}, "
                             "do_sample=True) is not supported: pass do_sample=False for "
                             "beam search, or num_beams=1 to sample")
        if num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= "
                             f"num_beams ({num_beams}) with beam search")
        if finished is not None:
            raise ValueError("finished is not supported with beam search (num_beams > 1): "
                             "a beam search does not continue a previous one")
        out = _beam_search(model, input_ids, max_new_tokens, dec, num_beams,
                           num_return_sequences, state, length_penalty, early_stopping)
        if not output_scores:
            out.token_log_probs = None
            out.sequences_scores = None
        return out if return_dict else out.sequences

    steps = _token_stream(model, input_ids, max_new_tokens, dec, num_return_sequences, state,
                          finished)
    for _ in steps:
        pass
    if return_dict:
        return steps.output(output_scores=output_scores)
    return steps.sequences


# --- scoring ------------------------------------------------------------------------------


def _check_lengths(lengths, batch: int, total: int, device) -> Optional[Tensor]:
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        lengths = torch.tensor(lengths)
    if not isinstance(lengths, Tensor) or lengths.dtype.is_floating_point or lengths.dim() != 1:
        raise TypeError("lengths must be a 1-D integer tensor (or a list of ints) with one "
                        f"length per row, got {_type_name(lengths)}")
    if lengths.numel() != batch:
        raise ValueError(f"lengths must hold one length per row: expected {batch}, got "
                         f"{lengths.numel()}")
    if bool((lengths < 1).any()) or bool((lengths > total).any()):
        raise ValueError(f"lengths must be in [1, {total}] (the padded length), got "
                         f"{lengths.tolist()}")
    return lengths.to(device=device, dtype=torch.long)


def _token_log_probs(model, input_ids, context_length, lengths, state, chunk_size):
    """[B, T-1] log p(x_t | x_<t) for t = 1..T-1, zeroed where not scored; and the
    mask of scored positions."""
    _check_model(model)
    input_ids = _check_ids("input_ids", input_ids, min_len=2)
    B, T = input_ids.shape
    _check_int("context_length", context_length, 1)
    if context_length >= T:
        raise ValueError(f"context_length ({context_length}) must be smaller than the sequence "
                         f"length ({T}): at least one token must be scored")
    _check_int("chunk_size", chunk_size, 1, allow_none=True)
    lengths = _check_lengths(lengths, B, T, input_ids.device)
    inputs, targets = input_ids[:, :-1], input_ids[:, 1:]
    step = chunk_size or inputs.size(1)
    pieces = []
    with _inference(model):
        for start in range(0, inputs.size(1), step):
            chunk = inputs[:, start:start + step]
            logits, state = _forward(model, chunk, state)
            logits = _float_logits(logits)
            V = logits.size(-1)
            tgt = targets[:, start:start + step]
            if int(tgt.max()) >= V:
                raise ValueError(f"input_ids holds token id {int(tgt.max())}, outside the "
                                 f"model's vocabulary [0, {V - 1}]")
            pieces.append(logits.log_softmax(dim=-1).gather(2, tgt.unsqueeze(2)).squeeze(2))
    lp = torch.cat(pieces, dim=1)                                   # [B, T-1]
    pos = torch.arange(1, T, device=lp.device).unsqueeze(0)         # index of the scored token
    mask = (pos >= context_length).expand(B, T - 1)
    if lengths is not None:
        mask = mask & (pos < lengths.unsqueeze(1))
    return lp.masked_fill(~mask, 0.0), mask


def sequence_log_prob(model, input_ids: Tensor, *, context_length: int = 1, lengths=None,
                      state=None, chunk_size: Optional[int] = None,
                      return_token_log_probs: bool = False):
    """Joint log-probability of each row of ``input_ids`` under ``model``.

    Row ``b`` scores ``log p(x_c, ..., x_{L-1} | x_0, ..., x_{c-1})`` =
    ``sum_{t=c}^{L-1} log p(x_t | x_<t)``, where ``c = context_length`` and ``L``
    is the row's length. The first token is never scored: a recurrent model needs an
    input to produce its first prediction, so token 0 is the conditioning context
    (put a BOS-like token such as ``<eos>`` first to score a whole text). With
    ``context_length = P`` this is the log-probability of a continuation given a
    prompt of ``P`` tokens, which is what :func:`generate` reports in
    ``sequences_scores``.

    Args:
        input_ids: ``[B, T]`` integer tensor, ``T >= 2`` (1-D: one row).
        context_length: leading tokens that condition but are not scored (>= 1).
        lengths: optional ``[B]`` true lengths of right-padded rows; positions at or
            beyond a row's length are not scored.
        state: the state to start from (has consumed everything before ``input_ids``).
        chunk_size: run the model over at most this many steps at a time, carrying the
            state (bounded memory for long rows); ``None``: one batched forward.
        return_token_log_probs: also return the ``[B, T-1]`` per-token log-probs
            (entry ``t-1`` scores token ``t``; 0 where not scored).

    Returns:
        ``[B]`` log-probabilities, or ``(log_probs, token_log_probs)``.
    """
    token_lp, _ = _token_log_probs(model, input_ids, context_length, lengths, state, chunk_size)
    total = token_lp.sum(dim=1)
    return (total, token_lp) if return_token_log_probs else total


def perplexity(model, input_ids: Tensor, *, context_length: int = 1, lengths=None, state=None,
               chunk_size: Optional[int] = None) -> float:
    """``exp`` of the mean negative log-likelihood per scored token, over all rows
    (same arguments and scored tokens as :func:`sequence_log_prob`)."""
    token_lp, mask = _token_log_probs(model, input_ids, context_length, lengths, state,
                                      chunk_size)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("no token is scored (every row is within context_length of its end)")
    return math.exp(-float(token_lp.sum(dtype=torch.float64)) / count)
