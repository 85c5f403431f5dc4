"""What NeMo 2 does with a Cosmos vocabulary: `python tests/conformance_nemo.py OUT.json` builds NeMo's own
`GPTConfig.configure_model` (tiny width, one layer, one gloo rank) with make_vocab_size_divisible_by = 128 and the
vocabulary given as Cosmos gives it (config.vocab_size set, no tokenizer) and as a tokenizer would give it, and
records the embedding rows NeMo allocates."""

from __future__ import annotations

import json
import sys


class _Tokenizer:
    vocab_size = 64_064


def main(out: str) -> None:
    from nemo.collections.llm.gpt.model.base import GPTConfig

    from harness.cosmos import parallel

    parallel.init(1)
    rows = {}
    for label, vocab, tokenizer in (("config 64064", 64_064, None), ("config 64000", 64_000, None),
                                    ("tokenizer 64064", None, _Tokenizer())):
        config = GPTConfig(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, seq_length=16,
                           vocab_size=vocab, make_vocab_size_divisible_by=128, use_cpu_initialization=True)
        rows[label] = int(config.configure_model(tokenizer).embedding.word_embeddings.weight.shape[0])
    with open(out, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    parallel.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
