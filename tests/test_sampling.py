"""generate / stream / beam search / sequence_log_prob / perplexity.

Two models: a tiny RNNLM on rnnfast, and a bigram "table" model whose next-token
logits depend only on the last token, so every probability is known exactly.

One file (over 500 lines) on purpose: the decoding modes of rnnfast.lm are checked against
each other on these same two models (greedy against beam search against exhaustive search,
generated log-probabilities against sequence_log_prob, a continued generation against one
longer generation), so the helpers and the cross-checks stay together.
"""
import itertools
import math

import pytest
import torch
from torch import nn

from rnnfast.lm import RNNLM, GenerateOutput, generate, perplexity, sequence_log_prob, stream
from rnnfast.lm.beam import _beam_search
from rnnfast.lm.decoding import _check_decoding

V = 11


class Bigram(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]; the state counts consumed tokens."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, ids, state=None):
        if state is None:
            state = torch.zeros(1, ids.size(0), 1)
        return self.table[ids], state + ids.size(1)


def _lm(cell="lstm", vocab=V, seed=0, layers=2):
    torch.manual_seed(seed)
    model = RNNLM(vocab, 8, 16, layers, cell=cell, dropout=0.1)
    # larger weights than the initialisation: sharper distributions that depend on the
    # input, so that greedy, sampled and beam choices differ from step to step
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model


def _prompt(B=3, P=4, vocab=V, seed=1):
    return torch.randint(0, vocab, (B, P), generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _manual_greedy(model, prompt, n):
    """Argmax by re-running the whole sequence every step (no carried state)."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


# --- greedy, top-k, temperature, top-p ----------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_equals_top_k_1_equals_manual_argmax(cell):
    model = _lm(cell).eval()
    prompt = _prompt()
    greedy = generate(model, prompt, 8, do_sample=False)
    assert greedy.shape == (3, 12) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(greedy, _manual_greedy(model, prompt, 8))
    assert torch.equal(generate(model, prompt, 8), greedy)         # greedy is the default
    assert torch.equal(torch.stack(list(stream(model, prompt, 8)), 1), greedy[:, 4:])
    sample = dict(do_sample=True, generator=_gen(0))
    assert torch.equal(generate(model, prompt, 8, top_k=1, **sample), greedy)
    assert torch.equal(generate(model, prompt, 8, temperature=1e-4, **sample), greedy)
    assert torch.equal(generate(model, prompt, 8, top_p=1e-6, **sample), greedy)
    assert torch.equal(generate(model, prompt, 8, num_beams=1, do_sample=False), greedy)
    dec = _check_decoding(False, 1.0, None, None, None, None, None, None)
    beam1 = _beam_search(model, prompt, 8, dec, 1, 1, None)
    assert torch.equal(beam1.sequences, greedy)


def test_generator_makes_sampling_reproducible():
    model = _lm()
    prompt = _prompt()
    a = generate(model, prompt, 20, do_sample=True, generator=_gen(7))
    b = generate(model, prompt, 20, do_sample=True, generator=_gen(7))
    c = generate(model, prompt, 20, do_sample=True, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = generate(model, prompt, 20, do_sample=True)
    torch.manual_seed(3)
    assert torch.equal(d, generate(model, prompt, 20, do_sample=True))


def test_generation_restores_training_mode_and_grad_mode():
    model = _lm().train()
    generate(model, _prompt(), 3)
    assert model.training and all(m.training for m in model.modules())
    s = stream(model, _prompt(), 3)
    next(s)
    assert torch.is_grad_enabled() and model.training
    model.eval()
    sequence_log_prob(model, _prompt())
    assert not model.training


# --- distributions on a model with known logits -----------------------------------------


def _one_step_freqs(model, n, **kw):
    prompt = torch.zeros(n, 1, dtype=torch.long)
    out = generate(model, prompt, 1, do_sample=True, generator=_gen(0), **kw)
    return torch.bincount(out[:, 1], minlength=model.table.size(1)).double() / n


def _assert_close_to(freqs, probs, n):
    probs = probs.double()
    sigma = (probs * (1 - probs) / n).sqrt()
    assert torch.all((freqs - probs).abs() <= 5 * sigma + 1e-12), (freqs, probs)


def test_sampling_distributions_temperature_top_k_top_p():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    model = Bigram(logits.repeat(6, 1))
    n = 40000
    for temperature in (0.5, 1.0, 2.0):
        _assert_close_to(_one_step_freqs(model, n, temperature=temperature),
                         torch.softmax(logits / temperature, 0), n)
    # top-k: the 3 best, renormalised
    keep = torch.tensor([1.0, 1, 1, 0, 0, 0])
    probs = torch.softmax(logits, 0) * keep
    _assert_close_to(_one_step_freqs(model, n, top_k=3), probs / probs.sum(), n)
    # top-p: the smallest prefix (by probability) whose mass reaches p
    p_sorted = torch.softmax(logits, 0)
    cum = p_sorted.cumsum(0)
    top_p = float(cum[1]) + 0.01          # needs the 3rd token to reach it
    probs = p_sorted * keep
    _assert_close_to(_one_step_freqs(model, n, top_p=top_p), probs / probs.sum(), n)
    probs = p_sorted * torch.tensor([1.0, 1, 0, 0, 0, 0])
    _assert_close_to(_one_step_freqs(model, n, top_p=float(cum[1]) - 0.01), probs / probs.sum(), n)
    # combined, applied in transformers' order: temperature, then top-k, then top-p.
    # With these numbers each other order keeps other tokens: top-p before top-k keeps 4
    # (it sees the whole tempered distribution), top-p before temperature keeps 2.
    temperature, top_k, top_p = 3.0, 4, 0.72
    t = torch.softmax(logits / temperature, 0)
    k = t * torch.tensor([1.0, 1, 1, 1, 0, 0])
    k = k / k.sum()
    kp = k * (k.cumsum(0) - k < top_p).float()
    assert kp.gt(0).tolist() == [True, True, True, False, False, False]
    assert int((t.cumsum(0) - t < top_p).sum()) == 4
    untempered = torch.softmax(logits, 0)
    assert int((untempered.cumsum(0) - untempered < top_p).sum()) == 2
    _assert_close_to(_one_step_freqs(model, n, temperature=temperature, top_k=top_k,
                                     top_p=top_p), kp / kp.sum(), n)


def test_suppressed_tokens_never_appear():
    model = _lm()
    prompt = _prompt(B=8)
    greedy = generate(model, prompt, 30, do_sample=False)
    common = torch.bincount(greedy[:, 4:].reshape(-1), minlength=V).topk(3).indices.tolist()
    for kw in (dict(do_sample=False), dict(do_sample=True, generator=_gen(0)),
               dict(do_sample=True, temperature=3.0), dict(num_beams=3)):
        out = generate(model, prompt, 30, suppress_tokens=common, **kw)
        assert not torch.isin(out[:, 4:], torch.tensor(common)).any(), kw
    out = generate(model, prompt, 30, suppress_tokens=torch.tensor(common), do_sample=True,
                   generator=_gen(1))
    assert not torch.isin(out[:, 4:], torch.tensor(common)).any()


# --- end of sequence ----------------------------------------------------------------------


def test_rows_stop_at_eos_and_are_padded():
    torch.manual_seed(0)
    model = Bigram(torch.randn(6, 6))
    eos = 5
    out = generate(model, torch.randint(0, 5, (64, 2)), 12, eos_token_id=eos, do_sample=True,
                   generator=_gen(0), return_dict=True, output_scores=True)
    gen = out.sequences[:, 2:]
    assert out.finished.any() and not out.finished.all()
    for row, done, length, lps in zip(gen, out.finished, out.lengths, out.token_log_probs):
        hits = (row == eos).nonzero().flatten().tolist()
        assert bool(done) == bool(hits)
        if hits:
            first = hits[0]
            assert torch.all(row[first:] == eos)              # padded with eos
            assert int(length) == 2 + first + 1
            assert torch.all(lps[first + 1:] == 0) and torch.all(lps[:first + 1] < 0)
        else:
            assert int(length) == 2 + 12
    # a custom pad id
    padded = generate(model, torch.randint(0, 5, (64, 2)), 12, eos_token_id=eos, pad_token_id=0,
                      do_sample=True, generator=_gen(0))
    for row in padded[:, 2:]:
        hits = (row == eos).nonzero().flatten().tolist()
        if hits:
            assert torch.all(row[hits[0] + 1:] == 0)


def test_generation_stops_early_when_every_row_has_finished():
    table = torch.zeros(4, 4)
    table[:, 3] = 10.0                                       # eos (3) is by far most likely
    out = generate(Bigram(table), torch.zeros(2, 1, dtype=torch.long), 50, do_sample=False,
                   eos_token_id=3)
    assert out.tolist() == [[0, 3], [0, 3]]
    # several eos ids; the first is the pad
    table[:, 3] = 0.0
    table[0, 2] = table[2, 1] = 10.0                           # 0 -> 2 -> 1
    out = generate(Bigram(table), torch.tensor([[0], [1]]), 5, do_sample=False,
                   eos_token_id=[1, 2], return_dict=True)
    # row 0 ends at once (0 -> 2) and is padded with 1; row 1 goes 1 -> 0 -> 2
    assert out.sequences.tolist() == [[0, 2, 1], [1, 0, 2]]
    assert out.finished.tolist() == [True, True] and out.lengths.tolist() == [2, 3]


def test_generated_log_probs_match_sequence_log_prob():
    model = _lm()
    prompt = _prompt()
    out = generate(model, prompt, 10, eos_token_id=3, do_sample=True, generator=_gen(0),
                   return_dict=True, output_scores=True)
    assert isinstance(out, GenerateOutput)
    scored = sequence_log_prob(model, out.sequences, context_length=4, lengths=out.lengths)
    torch.testing.assert_close(scored, out.sequences_scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.token_log_probs.sum(1), out.sequences_scores)


# --- state carry and the cost of the prompt -----------------------------------------------


@pytest.mark.parametrize("sample", [False, True])
def test_continuing_from_returned_state_equals_one_longer_generation(sample):
    model = _lm().eval()
    prompt = _prompt()
    kw = dict(do_sample=sample)
    full = generate(model, prompt, 12, generator=_gen(5), **kw)
    g = _gen(5)
    first = generate(model, prompt, 5, generator=g, return_dict=True, **kw)
    rest = generate(model, first.sequences[:, -1:], 7, generator=g, state=first.state, **kw)
    assert torch.equal(torch.cat([first.sequences, rest[:, 1:]], 1), full)


@pytest.mark.parametrize("sample", [False, True])
def test_continuing_after_rows_have_ended(sample):
    # rows end at different steps, some before the split; the finished flags carry over
    model = _lm(seed=0).eval()
    with torch.no_grad():
        model.decoder.bias[3] += 2.0                      # eos (3) often, not always
    prompt = _prompt(B=8)
    kw = dict(do_sample=sample, eos_token_id=3, pad_token_id=0)
    full = generate(model, prompt, 14, generator=_gen(5), return_dict=True, **kw)
    g = _gen(5)
    first = generate(model, prompt, 4, generator=g, return_dict=True, **kw)
    assert first.finished.any() and not first.finished.all()
    assert (full.finished & ~first.finished).any()          # some end after the split
    assert not full.finished.all()                          # and the rest never
    rest = generate(model, first.sequences[:, -1:], 10, generator=g, state=first.state,
                    finished=first.finished, return_dict=True, **kw)
    assert torch.equal(torch.cat([first.sequences, rest.sequences[:, 1:]], 1), full.sequences)
    assert torch.equal(rest.finished, full.finished)
    # and the same state: a row that had ended keeps the one it had at its end
    for ours, theirs in zip(rest.state, full.state):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # once every row has ended there is nothing to add
    last = first.sequences[:, -1:]
    done = generate(model, last, 5, state=first.state, finished=torch.ones(8, dtype=torch.bool),
                    return_dict=True, **kw)
    assert torch.equal(done.sequences, last) and done.finished.all()
    assert done.lengths.tolist() == [1] * 8
    # without the flags the second call cannot know: ended rows are continued
    blind = generate(model, first.sequences[:, -1:], 10, generator=_gen(0), state=first.state,
                     **kw)
    assert (blind[first.finished, 1:] != 0).any()


def test_returned_state_consumed_all_but_the_last_token():
    model = Bigram(torch.randn(5, 5))
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 4, return_dict=True,
                   do_sample=True, generator=_gen(0))
    assert out.state.flatten().tolist() == [3 + 4 - 1] * 2


class _CountCalls:
    def __init__(self, module):
        self.shapes = []
        module.register_forward_pre_hook(lambda m, args: self.shapes.append(tuple(args[0].shape)))


@pytest.mark.parametrize("kw", [dict(do_sample=False), dict(do_sample=True, generator=_gen(0)),
                                dict(do_sample=True, generator=_gen(0), num_return_sequences=3),
                                dict(num_beams=4, num_return_sequences=2)],
                         ids=["greedy", "sample", "samples", "beams"])
def test_prompt_runs_once_then_one_step_per_token(kw):
    model = _lm()
    calls = _CountCalls(model)
    out = generate(model, _prompt(B=2, P=6), 9, **kw)
    long_calls = [s for s in calls.shapes if s[1] > 1]
    assert long_calls == [(2, 6)]                         # the prompt, once, per prompt row
    assert len(calls.shapes) == 9                         # + one T=1 step per later token
    assert all(s[1] == 1 for s in calls.shapes[1:])
    assert out.shape[1] == 6 + 9


def test_num_return_sequences_rows_follow_their_prompt():
    model = _lm()
    prompt = _prompt(B=2)
    out = generate(model, prompt, 6, num_return_sequences=4, do_sample=True, generator=_gen(0))
    assert out.shape == (8, 10)
    assert torch.equal(out[:, :4], prompt.repeat_interleave(4, 0))
    assert len({tuple(r) for r in out[:4, 4:].tolist()}) > 1


def test_stream_yields_the_tokens_generate_returns():
    model = _lm()
    prompt = _prompt()
    s = stream(model, prompt, 10, eos_token_id=2, do_sample=True, generator=_gen(3))
    steps = list(s)
    assert all(t.shape == (3,) for t in steps)
    expected = generate(model, prompt, 10, eos_token_id=2, do_sample=True, generator=_gen(3))
    assert torch.equal(torch.stack(steps, 1), expected[:, 4:])
    assert torch.equal(s.sequences, expected)
    assert s.token_log_probs.shape == (3, len(steps))
    with pytest.raises(StopIteration):
        next(s)


def test_unbatched_prompt():
    model = _lm()
    out = generate(model, torch.tensor([1, 2, 3]), 4, do_sample=False)
    assert out.shape == (1, 7)
    assert torch.equal(out, generate(model, torch.tensor([[1, 2, 3]]), 4, do_sample=False))


# --- beam search ----------------------------------------------------------------------------


def test_beam_scores_sorted_and_equal_to_sequence_log_prob():
    model = _lm()
    prompt = _prompt(B=2)
    out = generate(model, prompt, 6, num_beams=5, num_return_sequences=5, return_dict=True,
                   output_scores=True)
    scores = out.sequences_scores.view(2, 5)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    assert torch.equal(out.sequences[:, :4], prompt.repeat_interleave(5, 0))
    assert len({tuple(r) for r in out.sequences.tolist()}) == 10      # distinct beams
    # the score is the joint log-probability / generated length ** length_penalty (1.0)
    scored = sequence_log_prob(model, out.sequences, context_length=4)
    torch.testing.assert_close(scored / 6, out.sequences_scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.token_log_probs.sum(1), scored, atol=1e-4, rtol=1e-5)
    squared = generate(model, prompt, 6, num_beams=5, num_return_sequences=5, return_dict=True,
                       output_scores=True, length_penalty=2.0)
    assert torch.equal(squared.sequences, out.sequences)     # same lengths: same ranking
    torch.testing.assert_close(scored / 6 ** 2, squared.sequences_scores, atol=1e-4, rtol=1e-5)
    # the best beam is at least as likely as the greedy continuation
    greedy = generate(model, prompt, 6, do_sample=False)
    greedy_lp = sequence_log_prob(model, greedy, context_length=4)
    assert torch.all(scored.view(2, 5)[:, 0] >= greedy_lp - 1e-5)


def _exhaustive(model, prompt, n, vocab):
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=n)))
    full = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    return full, sequence_log_prob(model, full, context_length=prompt.size(1))


def test_beam_search_covering_the_vocab_finds_the_exhaustive_best():
    vocab, n = 4, 3
    model = _lm(vocab=vocab, seed=3)
    prompt = torch.tensor([[1, 2]])
    full, lps = _exhaustive(model, prompt, n, vocab)
    # vocab ** (n - 1) beams hold every prefix: exact search (length_penalty 0: the sum)
    best = generate(model, prompt, n, num_beams=vocab ** (n - 1), return_dict=True,
                    output_scores=True, length_penalty=0.0)
    assert torch.equal(best.sequences[0], full[lps.argmax()])
    torch.testing.assert_close(best.sequences_scores[0], lps.max(), atol=1e-4, rtol=1e-5)
    # every sequence, in order
    every = generate(model, prompt, n, num_beams=vocab ** n, num_return_sequences=vocab ** n,
                     return_dict=True, output_scores=True)
    order = lps.argsort(descending=True)
    assert torch.equal(every.sequences, full[order])
    torch.testing.assert_close(every.sequences_scores, lps[order] / n, atol=1e-4, rtol=1e-5)


def _hypotheses(model, prompt, n, vocab, eos):
    """Every finished hypothesis of up to ``n`` tokens (ending at its first ``eos``, or
    ``n`` long without one), padded with ``eos``; their lengths and log-probabilities."""
    seqs, lengths = [], []
    for m in range(1, n + 1):
        for body in itertools.product([t for t in range(vocab) if t != eos], repeat=m - 1):
            for last in range(vocab):
                if m < n and last != eos:
                    continue
                seqs.append(list(body) + [last] + [eos] * (n - m))
                lengths.append(m)
    full = torch.cat([prompt.expand(len(seqs), -1), torch.tensor(seqs)], 1)
    lengths = torch.tensor(lengths)
    lps = sequence_log_prob(model, full, context_length=prompt.size(1),
                            lengths=prompt.size(1) + lengths)
    return full, lengths, lps


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
def test_beam_search_with_eos_finds_the_exhaustive_best(length_penalty):
    # with as many beams as hypotheses and early_stopping="never", beam search keeps every
    # hypothesis: its ranking is that of the score over all of them. A finished one
    # leaves the beam (it is not extended) and is ranked by sum / length ** length_penalty.
    vocab, n, eos = 4, 3, 3
    model = _lm(vocab=vocab, seed=5)
    with torch.no_grad():
        model.decoder.bias[eos] += 1.0
    prompt = torch.tensor([[1, 2]])
    full, lengths, lps = _hypotheses(model, prompt, n, vocab, eos)
    count = len(full)                                   # 1 + 3 + 36
    assert count == 40
    score = lps / lengths.double() ** length_penalty
    order = score.argsort(descending=True)
    out = generate(model, prompt, n, num_beams=count, num_return_sequences=count,
                   eos_token_id=eos, length_penalty=length_penalty, early_stopping="never",
                   return_dict=True, output_scores=True)
    assert torch.equal(out.sequences, full[order])
    assert torch.equal(out.lengths, prompt.size(1) + lengths[order])
    assert torch.equal(out.finished, full[order].gather(1, out.lengths[:, None] - 1)[:, 0] == eos)
    torch.testing.assert_close(out.sequences_scores, score[order].float(), atol=1e-4, rtol=1e-5)
    # the best ten with ten beams: the same, in the same order
    ten = generate(model, prompt, n, num_beams=10, num_return_sequences=10, eos_token_id=eos,
                   length_penalty=length_penalty, early_stopping="never")
    assert torch.equal(ten, full[order[:10]][:, :ten.size(1)])


def test_beam_continuation_state():
    model = Bigram(torch.randn(5, 5))
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 4, num_beams=3,
                   num_return_sequences=2, return_dict=True)
    assert out.sequences.shape == (4, 7)
    assert out.state.flatten().tolist() == [6] * 4


# --- scoring ------------------------------------------------------------------------------


def test_sequence_log_prob_equals_hand_computed_sum():
    model = _lm()
    ids = _prompt(B=3, P=9)
    with torch.no_grad():
        model.eval()
        logits, _ = model(ids[:, :-1])
    picks = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
    torch.testing.assert_close(sequence_log_prob(model, ids), picks.sum(1))
    total, per_token = sequence_log_prob(model, ids, return_token_log_probs=True)
    torch.testing.assert_close(per_token, picks)
    # context tokens are not scored; nor are positions past a row's length
    torch.testing.assert_close(sequence_log_prob(model, ids, context_length=4),
                               picks[:, 3:].sum(1))
    lengths = torch.tensor([9, 5, 2])
    want = torch.stack([picks[0].sum(), picks[1, :4].sum(), picks[2, :1].sum()])
    torch.testing.assert_close(sequence_log_prob(model, ids, lengths=lengths), want)
    # chunked evaluation carries the state: same numbers
    torch.testing.assert_close(sequence_log_prob(model, ids, chunk_size=3), picks.sum(1))
    nll = -picks.mean()
    assert math.isclose(perplexity(model, ids), math.exp(float(nll)), rel_tol=1e-5)
    assert math.isclose(perplexity(model, ids, chunk_size=2), math.exp(float(nll)),
                        rel_tol=1e-5)


def test_sequence_log_prob_from_a_state():
    model = _lm().eval()
    ids = _prompt(B=2, P=10)
    _, state = model(ids[:, :3])        # has consumed what comes before ids[:, 3:]
    torch.testing.assert_close(sequence_log_prob(model, ids[:, 3:], state=state),
                               sequence_log_prob(model, ids, context_length=4))


# --- argument errors ------------------------------------------------------------------------


@pytest.mark.parametrize("kw,exc,match", [
    (dict(temperature=0.0, do_sample=True), ValueError,
     r"temperature must be > 0 when sampling.*got 0.0"),
    (dict(temperature=-1.0, do_sample=False), ValueError, "temperature must be >= 0"),
    (dict(temperature="hot"), TypeError, "temperature must be a float, got str"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0, got -1"),
    (dict(top_k=2.5), TypeError, "top_k must be an int or None, got float"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\], got 1.5"),
    (dict(num_beams=0), ValueError, "num_beams must be >= 1, got 0"),
    (dict(num_beams=2, do_sample=True), ValueError, r"beam search with sampling \(num_beams=2, "
                                                    r"do_sample=True\) is not supported"),
    (dict(num_beams=2, length_penalty="long"), TypeError, "length_penalty must be a float"),
    (dict(num_beams=2, length_penalty=math.nan), ValueError, "length_penalty must be a finite"),
    (dict(num_beams=2, early_stopping="soon"), ValueError,
     "early_stopping must be True, False or \"never\", got 'soon'"),
    (dict(num_beams=2, finished=torch.zeros(3, dtype=torch.bool)), ValueError,
     "finished is not supported with beam search"),
    (dict(finished=torch.zeros(3)), TypeError, "finished must be a bool tensor"),
    (dict(finished=torch.zeros(2, dtype=torch.bool)), ValueError,
     r"finished must hold one flag per row of input_ids: expected shape \(3,\), got \(2,\)"),
    (dict(finished=torch.ones(3, dtype=torch.bool)), ValueError,
     "finished rows are padded with pad_token_id"),
    (dict(num_beams=2, num_return_sequences=3), ValueError,
     r"num_return_sequences \(3\) must be <= num_beams \(2\)"),
    (dict(do_sample=False, num_return_sequences=2), ValueError, "identical copies"),
    (dict(eos_token_id=V), ValueError, r"eos_token_id holds token id 11, outside"),
    (dict(eos_token_id=-1), ValueError, "non-negative"),
    (dict(eos_token_id=1.0), TypeError, "eos_token_id must be an int"),
    (dict(suppress_tokens=list(range(V))), ValueError, "suppresses all 11 tokens"),
    (dict(suppress_tokens=[V + 3]), ValueError, "suppress_tokens holds token id 14"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    (dict(output_scores=True), ValueError, "return_dict=True"),
    (dict(do_sample=1), TypeError, "do_sample must be a bool"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences must be >= 1"),
])
def test_generate_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        generate(_lm(), _prompt(), 3, **kw)


def test_input_errors():
    model = _lm()
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        generate(model, _prompt(), 0)
    with pytest.raises(TypeError, match=r"input_ids must be a torch.Tensor of token ids "
                                        r"\(e.g. torch.tensor\(\[ids\]\)\), got list"):
        generate(model, [1, 2], 3)
    with pytest.raises(TypeError, match="integer tensor"):
        generate(model, torch.zeros(1, 3), 3)
    with pytest.raises(ValueError, match="at least 1 token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="must be callable"):
        generate(None, _prompt(), 3)
    with pytest.raises(TypeError, match=r"must return \(logits, state\)"):
        generate(lambda ids, state: ids, _prompt(), 3)
    with pytest.raises(ValueError, match="at least 2 token"):
        sequence_log_prob(model, torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"context_length \(5\) must be smaller"):
        sequence_log_prob(model, _prompt(P=5), context_length=5)
    with pytest.raises(ValueError, match="lengths must hold one length per row"):
        sequence_log_prob(model, _prompt(B=3), lengths=[2, 2])
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 4\]"):
        sequence_log_prob(model, _prompt(B=2), lengths=[2, 9])
    with pytest.raises(ValueError, match="no token is scored"):
        perplexity(model, _prompt(B=2, P=4), context_length=2, lengths=[2, 1])
