"""Text generation with recurrent language models: greedy decoding, sampling, beam search.

Works with any model that follows the protocol of :mod:`rnnfast.lm.protocol`,
``model(input_ids, state) -> (logits, state)`` (:class:`rnnfast.lm.RNNLM` does).

Because the model is recurrent, the prompt is run **once**: one forward over the
whole prompt primes the state, and each new token then costs one forward of a
single step (T=1) with the carried state.

* :func:`generate` — greedy decoding (the default), sampling (``do_sample=True``
  with temperature, top-k, top-p), beam search (:mod:`rnnfast.lm.beam`); per-row stop
  at ``eos_token_id``; suppressed tokens. Arguments that HuggingFace ``transformers``'
  ``generate`` also has keep its names, defaults and meaning (see :func:`generate` for
  the details and the few differences).
* :func:`stream` — the same decoding (not beam search) as an iterator that yields
  each step's tokens as they are produced.

Scoring given sequences (``sequence_log_prob``, ``perplexity``) is in
:mod:`rnnfast.lm.scoring`.

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
  top-k or top-p, so they agree with ``sequence_log_prob``.
* **Modes.** Generation (as scoring) runs under ``torch.no_grad()`` with the model
  switched to eval mode for the duration (dropout off); the model's training
  flags are restored afterwards.
"""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Union

import torch
from torch import Tensor

from .beam import _beam_search
from .checks import _check_bool, _check_ids, _check_int, _check_model, _finite_float, _type_name
from .decoding import (GenerateOutput, TokenIds, _check_decoding, _check_vocab_ids, _Decoding,
                       _suppress_mask)
from .protocol import _float_logits, _forward, _inference, _keep_rows, _repeat_rows

__all__ = ["generate", "stream", "TokenStream"]


# --- argument checks ------------------------------------------------------------------------


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


def _row_lengths(prompt_len: int, tokens: Tensor, finished: Tensor,
                 eos: Optional[Tensor]) -> Tensor:
    """Prompt plus generated tokens up to and including the first end-of-sequence."""
    n = tokens.size(1)
    lengths = torch.full_like(finished, prompt_len + n, dtype=torch.long)
    if eos is not None and n and bool(finished.any()):
        first = torch.isin(tokens, eos).int().argmax(dim=1)
        lengths = torch.where(finished, prompt_len + first + 1, lengths)
    return lengths


# --- choosing the next token --------------------------------------------------------------


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
    finished ones (see :mod:`rnnfast.lm.beam`), with ``length_penalty`` and
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
