"""rnnfast.lm: a language-model toolkit on rnnfast's recurrent layers.

    from rnnfast.lm import RNNLM, CharTokenizer, generate, perplexity

``import rnnfast`` does not load this package; ``import rnnfast.lm`` does. One concern per
module:

* :mod:`~rnnfast.lm.model` — :class:`RNNLM` (embedding, LSTM/GRU, linear), ``save_lm`` /
  ``load_lm``, ``detach_state``
* :mod:`~rnnfast.lm.text` — character- and word-level tokenizers
* :mod:`~rnnfast.lm.protocol` — the ``model(input_ids, state) -> (logits, state)``
  protocol that generation and scoring use a model by, and its state plumbing
* :mod:`~rnnfast.lm.generation` — :func:`generate` (greedy, sampling, beam search) and
  :func:`stream`
* :mod:`~rnnfast.lm.beam` — beam search, as HuggingFace transformers does it
* :mod:`~rnnfast.lm.decoding` — what decoding and beam search share: the checked options,
  :class:`GenerateOutput`
* :mod:`~rnnfast.lm.scoring` — :func:`sequence_log_prob`, :func:`perplexity`
* :mod:`~rnnfast.lm.checks` — argument checks shared by the modules above
* :mod:`~rnnfast.lm.demo` — ``python -m rnnfast demo`` / ``sample`` (not imported here)
"""
from .decoding import GenerateOutput
from .generation import TokenStream, generate, stream
from .model import RNNLM, detach_state, load_lm, save_lm
from .scoring import perplexity, sequence_log_prob
from .text import EOS, UNK, CharTokenizer, Tokenizer, WordTokenizer, load_tokenizer

__all__ = ["RNNLM", "detach_state", "save_lm", "load_lm",
           "Tokenizer", "CharTokenizer", "WordTokenizer", "load_tokenizer", "UNK", "EOS",
           "generate", "stream", "TokenStream", "GenerateOutput",
           "sequence_log_prob", "perplexity"]
