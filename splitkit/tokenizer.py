"""Byte-level BPE tokenizer (HF ``tokenizers``), trained on the training split only.

Byte-level BPE round-trips any unicode string exactly, needs no unknown token, and HF's Rust trainer
learns a 4096-token vocabulary from 25 MB in seconds on two cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import TokenizerConfig

EOT = "<|endoftext|>"


def train_tokenizer(texts, cfg: TokenizerConfig) -> Tokenizer:
    """Train on an iterable of strings; ``EOT`` (id 0) separates documents."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def encode_documents(tok: Tokenizer, texts: list[str], batch_docs: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents into one token stream with ``EOT`` before each document.

    Returns ``tokens: [n_tokens]`` (uint16 when the vocabulary fits) and ``doc_starts: [n_docs]``.
    """
    eot = tok.token_to_id(EOT)
    dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.uint32
    parts, lengths = [], []
    # batches of documents: the tokenizer's Encoding objects (offsets, strings) of a whole 150 MB
    # corpus at once would take several GB
    for b0 in range(0, len(texts), batch_docs):
        for e in tok.encode_batch(texts[b0 : b0 + batch_docs]):
            ids = np.empty(len(e.ids) + 1, dtype=dtype)
            ids[0] = eot
            ids[1:] = e.ids
            parts.append(ids)
            lengths.append(len(ids))
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return out, starts


def decode_tokens(tok: Tokenizer, ids) -> list[str]:
    """Per-token strings (for top-token tables in reports)."""
    return [tok.decode([int(i)]) for i in ids]
