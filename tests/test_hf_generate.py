"""rnnfast.lm.generate against HuggingFace transformers' generate on the same model.

transformers is the oracle: an RNNLM is wrapped as a transformers causal LM (logits over
the whole prefix at every call, no cache) and both generate from the same prompts with
the same arguments. Sequences must be identical, and so must the scores.

What is compared is the decoding, given the model's logits. Both sides must therefore
see bitwise the same logits for the same prefix: torch's Linear may round the last bit
differently for a different number of rows (transformers runs the prompt once per beam,
rnnfast once per prompt). So rnnfast generates through a recorder that notes the logits
it computed for each prefix, and the transformers wrapper answers with those (it
computes, and checks against, its own for every prefix). With float32 models, where
transformers scores too, scores are then compared for equality; a float64 model
(transformers still scores in float32) is compared with a tolerance.

Skipped when transformers is not installed (scripts/setup.sh installs it).
"""
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutput  # noqa: E402

from rnnfast.lm import RNNLM, generate  # noqa: E402

transformers.logging.set_verbosity_error()     # its notes on pad ids and the like

V = 12
EOS = 3
PAD = 7


class _Config(PretrainedConfig):
    model_type = "rnnfast_test_rnnlm"


class _Recorder(nn.Module):
    """``lm`` as generate sees it, noting the next-token logits of every prefix it
    computes. The state carries the prefix so that it follows its row through
    generate's row selections: ``[1, N, WIDTH]`` (batch at dim 1), -1 after the end."""

    WIDTH = 64

    def __init__(self, lm: RNNLM):
        super().__init__()
        self.lm = lm
        self.seen = {}
        self.calls = 0

    def forward(self, ids, state=None):
        self.calls += 1
        if state is None:
            inner, prefix = None, ids.new_full((1, ids.size(0), self.WIDTH), -1)
        else:
            inner, prefix = state
        logits, inner = self.lm(ids, inner)
        prefix = prefix.clone()
        for i in range(ids.size(0)):
            row = [t for t in prefix[0, i].tolist() if t >= 0] + ids[i].tolist()
            prefix[0, i, :len(row)] = torch.tensor(row)
            self.seen[tuple(row)] = logits[i, -1].clone()
        return logits, (inner, prefix)


class _AsCausalLM(PreTrainedModel, GenerationMixin):
    """An RNNLM as a transformers causal LM: ``forward(input_ids [N, L])`` returns the
    logits at every position; the last position's are the recorder's for that prefix
    when rnnfast computed it."""

    config_class = _Config

    def __init__(self, recorder: _Recorder):
        lm = recorder.lm
        super().__init__(_Config(vocab_size=lm.decoder.out_features, use_cache=False))
        self.lm = lm
        self.seen = recorder.seen
        self.hits = 0
        self.calls = 0

    def forward(self, input_ids=None, **kwargs):
        self.calls += 1
        logits, _ = self.lm(input_ids)
        logits = logits.clone()
        for i, row in enumerate(input_ids.tolist()):
            known = self.seen.get(tuple(row))
            if known is not None:
                # the same logits up to rounding: the recorder changes nothing else
                torch.testing.assert_close(known, logits[i, -1], rtol=1e-5, atol=1e-5)
                logits[i, -1] = known
                self.hits += 1
        return CausalLMOutput(logits=logits)


def _lm(seed, cell="lstm", dtype=torch.float32, eos_bias=0.0, vocab=V):
    torch.manual_seed(seed)
    lm = RNNLM(vocab, 8, 16, 2, cell=cell)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0.0, 1.0)           # sharp, input-dependent distributions
        lm.decoder.bias[EOS] += eos_bias  # how often hypotheses end
    return lm.to(dtype).eval()


def _prompt(seed, B=3, P=4, vocab=V):
    ids = torch.randint(0, vocab, (B, P), generator=torch.Generator().manual_seed(seed))
    return ids.masked_fill(ids == PAD, PAD + 1)     # no padding in the prompts


def _run_both(lm, prompt, n, **kw):
    """(rnnfast's GenerateOutput, transformers' output, the wrapper), with the same
    arguments; sampling draws from torch's global generator on both sides."""
    seed = kw.pop("seed", None)
    recorder = _Recorder(lm)
    if seed is not None:
        torch.manual_seed(seed)
    ours = generate(recorder, prompt, n, return_dict=True, output_scores=True, **kw)
    wrapped = _AsCausalLM(recorder).eval()
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        hf = wrapped.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                              max_new_tokens=n, use_cache=False,
                              return_dict_in_generate=True, output_scores=True, **kw)
    assert wrapped.hits > 0
    # one model call per decoding step on both sides: both stopped after the same step
    assert recorder.calls == wrapped.calls
    return ours, hf, wrapped


def _check_scores(ours, hf, wrapped, prompt_len, exact, beams):
    if beams:
        if exact:
            assert torch.equal(ours.sequences_scores, hf.sequences_scores)
        else:
            torch.testing.assert_close(ours.sequences_scores.float(), hf.sequences_scores,
                                       rtol=1e-5, atol=1e-5)
        theirs = wrapped.compute_transition_scores(hf.sequences, hf.scores, hf.beam_indices)
    else:
        theirs = wrapped.compute_transition_scores(hf.sequences, hf.scores,
                                                   normalize_logits=True)
    # transformers leaves its scores of the padding after an end-of-sequence token in
    # place (greedy) or at 0 (beams); rnnfast's are 0: compare each row up to its length
    n = ours.token_log_probs.size(1)
    assert theirs.shape == (ours.sequences.size(0), n)
    mask = torch.arange(n).unsqueeze(0) < (ours.lengths - prompt_len).unsqueeze(1)
    # beams: transformers keeps the very log-probabilities it ranked by; greedy: it
    # recomputes them with a log_softmax over all steps at once (last-bit differences)
    tol = 0.0 if exact and beams else 1e-6 if exact else 1e-5
    torch.testing.assert_close(ours.token_log_probs.masked_fill(~mask, 0).float(),
                               theirs.masked_fill(~mask, 0).float(), rtol=tol, atol=tol)


def _compare(lm, prompt, n, exact=True, **kw):
    ours, hf, wrapped = _run_both(lm, prompt, n, **kw)
    assert torch.equal(ours.sequences, hf.sequences), (ours.sequences, hf.sequences)
    beams = kw.get("num_beams", 1) > 1
    if "seed" not in kw:
        _check_scores(ours, hf, wrapped, prompt.size(1), exact, beams)
    return ours


# --- greedy and sampling --------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_is_the_default_and_equals_transformers(cell, seed):
    lm = _lm(seed, cell)
    prompt = _prompt(seed)
    ours = _compare(lm, prompt, 10)                    # no do_sample: greedy, in both
    assert not ours.finished.any()
    assert torch.equal(generate(lm, prompt, 10), ours.sequences)


@pytest.mark.parametrize("pad", [None, PAD])
def test_greedy_with_eos_and_padding_equals_transformers(pad):
    lm = _lm(2, eos_bias=2.0)
    prompt = _prompt(5, B=6)
    ours = _compare(lm, prompt, 12, eos_token_id=EOS, pad_token_id=pad)
    gen = ours.sequences[:, prompt.size(1):]
    ends = ours.lengths - prompt.size(1)
    # rows end at different steps: some are padded
    assert ours.finished.any() and len(set(ends[ours.finished].tolist())) > 1
    for row, done, end in zip(gen, ours.finished, ends):
        if done:
            assert row[end - 1] == EOS
            assert torch.all(row[end:] == (EOS if pad is None else pad))


def test_sampling_equals_transformers_with_the_same_seed():
    lm = _lm(3, eos_bias=1.0)
    prompt = _prompt(4)
    for kw in (dict(), dict(temperature=0.7, top_k=5, top_p=0.9),
               dict(temperature=1.5, top_p=0.8, num_return_sequences=3),
               dict(top_k=0, suppress_tokens=[0, 1])):
        _compare(lm, prompt, 10, do_sample=True, eos_token_id=EOS, pad_token_id=PAD,
                 seed=11, **kw)
    # the draws decide: two seeds give different samples
    assert not torch.equal(_compare(lm, prompt, 10, do_sample=True, seed=12).sequences,
                           _compare(lm, prompt, 10, do_sample=True, seed=13).sequences)


def test_sampling_keeps_the_50_most_likely_tokens_by_default_as_transformers_does():
    vocab = 80
    lm = _lm(5, vocab=vocab)
    prompt = _prompt(5, vocab=vocab)
    ours = _compare(lm, prompt, 12, do_sample=True, temperature=3.0, seed=21).sequences
    # from the whole vocabulary the draws differ (temperature 3: the tail gets drawn)
    torch.manual_seed(21)
    whole = generate(lm, prompt, 12, do_sample=True, temperature=3.0, top_k=None)
    assert not torch.equal(whole, ours)


def test_sampling_arguments_without_do_sample_warn_as_in_transformers():
    lm = _lm(0)
    prompt = _prompt(0)
    greedy = generate(lm, prompt, 6)
    for kw in (dict(temperature=0.5), dict(top_k=3), dict(top_p=0.5)):
        with pytest.warns(UserWarning, match=f"do_sample is not True, so {next(iter(kw))}="):
            out = _compare(lm, prompt, 6, **kw).sequences      # transformers ignores them
        assert torch.equal(out, greedy)
    with pytest.warns(UserWarning, match="num_beams is 1, so length_penalty=2.0"):
        assert torch.equal(generate(lm, prompt, 6, length_penalty=2.0), greedy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # defaults and sampling: no warning
        generate(lm, prompt, 6, top_k=50, temperature=1.0, top_p=1.0)
        generate(lm, prompt, 6, do_sample=True, temperature=0.5, top_k=3, top_p=0.5)


# --- beam search ----------------------------------------------------------------------------


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("num_beams,num_return_sequences", [(2, 1), (4, 4), (5, 2)])
def test_beam_search_without_eos_equals_transformers(num_beams, num_return_sequences,
                                                     length_penalty):
    lm = _lm(4)
    prompt = _prompt(6)
    ours = _compare(lm, prompt, 7, num_beams=num_beams,
                    num_return_sequences=num_return_sequences, length_penalty=length_penalty)
    assert ours.sequences.shape == (3 * num_return_sequences, 4 + 7)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
def test_beam_search_with_eos_equals_transformers(length_penalty, early_stopping):
    n_checked = n_short = n_mixed = 0
    for seed in range(4):
        lm = _lm(10 + seed, cell="lstm" if seed % 2 else "gru", eos_bias=1.5)
        prompt = _prompt(20 + seed, B=3)
        for num_beams, num_return_sequences in ((3, 3), (4, 2)):
            ours = _compare(lm, prompt, 9, num_beams=num_beams,
                            num_return_sequences=num_return_sequences,
                            length_penalty=length_penalty, early_stopping=early_stopping,
                            eos_token_id=EOS, pad_token_id=PAD)
            n_checked += 1
            n_short += int(ours.sequences.size(1) < 4 + 9)
            n_mixed += int(ours.finished.any() and not ours.finished.all())
    # the comparisons covered hypotheses that end, early stops, and both kinds of rows
    assert n_checked == 8 and n_mixed > 0
    if early_stopping is True:
        assert n_short > 0


def test_beam_search_float64_model_equals_transformers():
    lm = _lm(7, dtype=torch.float64, eos_bias=1.5)
    prompt = _prompt(8)
    for kw in (dict(), dict(length_penalty=2.0, early_stopping=True),
               dict(length_penalty=0.0, early_stopping="never")):
        ours = _compare(lm, prompt, 8, exact=False, num_beams=4, num_return_sequences=3,
                        eos_token_id=EOS, pad_token_id=PAD, **kw)
        assert ours.sequences_scores.dtype == torch.float64


def test_beam_search_with_several_eos_ids_and_suppressed_tokens_equals_transformers():
    lm = _lm(9, eos_bias=2.0)
    with torch.no_grad():
        lm.decoder.bias[5] += 2.0
    prompt = _prompt(9)
    ours = _compare(lm, prompt, 8, num_beams=3, num_return_sequences=3,
                    eos_token_id=[EOS, 5], pad_token_id=PAD, suppress_tokens=[0, 2])
    last = ours.sequences.gather(1, (ours.lengths - 1).unsqueeze(1)).flatten()
    assert set(last[ours.finished].tolist()) == {EOS, 5}        # both ids end hypotheses
    assert not torch.isin(ours.sequences[:, 4:], torch.tensor([0, 2])).any()


def test_more_beams_than_hypotheses():
    # 2 tokens allowed, 1 step: 2 hypotheses. transformers fills the other beams with
    # copies of the prompt scored near -1e9 and returns them; rnnfast raises.
    lm = _lm(1)
    prompt = _prompt(1, B=2)
    others = [t for t in range(V) if t not in (4, 9)]
    kw = dict(num_beams=4, suppress_tokens=others)
    with pytest.raises(ValueError, match="found only 2 hypotheses for prompt row 0, fewer "
                                         "than num_return_sequences=3"):
        generate(lm, prompt, 1, num_return_sequences=3, **kw)
    wrapped = _AsCausalLM(_Recorder(lm)).eval()
    with torch.no_grad():
        hf = wrapped.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                              max_new_tokens=1, use_cache=False, return_dict_in_generate=True,
                              output_scores=True, num_return_sequences=3, **kw)
    assert hf.sequences_scores.view(2, 3)[:, 2].max() < -1e8        # a placeholder
    # the two real ones are transformers' two best
    _compare(lm, prompt, 1, num_return_sequences=2, **kw)
    # more beams than the vocabulary, but enough steps to fill them: same as transformers
    _compare(lm, prompt, 3, num_beams=2 * V, num_return_sequences=2 * V)
