"""Beam search (``generate(..., num_beams > 1)``), as HuggingFace transformers does it."""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from .decoding import GenerateOutput, _check_vocab_ids, _Decoding, _suppress_mask
from .protocol import (_float_logits, _forward, _inference, _map_state, _merge_rows,
                       _repeat_rows, _select_rows)

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
