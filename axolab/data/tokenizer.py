"""The recipe's tokenizer: a pretrained Hugging Face one, or a byte-level BPE trained on the corpus."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .recipe import RecipeError, TokenizerSpec

TRAINED_EOS = "<|endoftext|>"


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained with ``tokenizers``, as a transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[TRAINED_EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=TRAINED_EOS,
                                   bos_token=TRAINED_EOS, unk_token=None)


def load_tokenizer(spec: TokenizerSpec, source: str | None, texts: Iterable[str] | None = None):
    """The tokenizer and its separator id; checks the vocabulary against the recipe."""
    from transformers import AutoTokenizer

    if spec.train_bpe_vocab is not None:
        tok = train_byte_level_bpe(texts or [], spec.train_bpe_vocab)
    else:
        path = Path(spec.path).expanduser()
        if not path.is_absolute() and source and (Path(source) / path).is_dir():
            path = Path(source) / path
        try:
            tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec.path)
        except (OSError, ValueError) as e:
            raise RecipeError(f"tokenizer.path {spec.path!r} could not be loaded: {e}") from e
    eos = spec.eos_token or tok.eos_token
    if eos is None:
        raise RecipeError("tokenizer has no eos token to separate documents; set tokenizer.eos_token")
    eos_id = tok.convert_tokens_to_ids(eos)
    if eos_id is None or eos_id == tok.unk_token_id:
        raise RecipeError(f"tokenizer.eos_token {eos!r} is not in the tokenizer's vocabulary")
    if tok.eos_token != eos:
        # The separator the build writes is the tokenizer's eos in the saved dataset, so that
        # whatever reads it back (evaluation, the goldfish loss's document boundaries) finds
        # the same token as ``eos_token_id``. Naming a token eos does not change encoding.
        tok.eos_token = eos
    if spec.expect_vocab_size is not None and len(tok) != spec.expect_vocab_size:
        raise RecipeError(f"tokenizer has {len(tok)} tokens but tokenizer.expect_vocab_size is "
                          f"{spec.expect_vocab_size} (the model's embedding would not match)")
    return tok, eos_id
