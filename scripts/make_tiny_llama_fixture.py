#!/usr/bin/env python3
"""Writes the tokenizer files of tests/fixtures/tiny_llama/, a tiny Llama-shaped HF model folder
used by the conversion tests (the tests write its model.safetensors themselves).

Usage: python scripts/make_tiny_llama_fixture.py [OUTPUT_DIR]   (needs: pip install tokenizers)
The tokenizer is a byte-level BPE with 256 byte tokens, a few merges and <s> </s> <unk> <pad>,
trained on a fixed text so that the output is reproducible.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Kite turns a trained model into an engine and runs it.",
    "Hello world! Hello tokenizer, hello engine.",
]


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures",
                                                                  "tiny_llama")
    os.makedirs(output, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    tokenizer.save(os.path.join(output, "tokenizer.json"))
    with open(os.path.join(output, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "<pad>", "model_max_length": 256,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    with open(os.path.join(output, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, f, indent=2)
    print(f"wrote tokenizer files to {output} (vocabulary {tokenizer.get_vocab_size()})")


if __name__ == "__main__":
    main()
