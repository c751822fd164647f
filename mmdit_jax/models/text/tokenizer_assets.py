"""Build the offline default tokenizers from the ``shapes`` caption corpus, deterministically.

* CLIP: a byte-level BPE with CLIP's normaliser, pre-tokeniser and ``</w>`` word suffix (the pipeline of
  transformers' ``CLIPTokenizer``, from the ``tokenizers`` library); merges learned greedily with a
  deterministic tie-break; saved as vocab.json + merges.txt.
* T5: a sentencepiece unigram model with T5's ids (pad 0, eos 1, unk 2, no bos), single-threaded.

Regenerate with ``python -m mmdit_jax.models.text.tokenizer_assets`` (writes ``mmdit_jax/models/text/assets``);
a test rebuilds them and checks the committed files are identical.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections import Counter

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
CLIP_DIR, T5_DIR = os.path.join(ASSETS, "clip"), os.path.join(ASSETS, "t5")
# The toy CLIP text towers pretrained on `shapes` (mmdit_jax/study/toy_clip.py), with this tokenizer copied in;
# see assets/toy_clip/summary.json for how they were produced and their zero-shot retrieval accuracy.
TOY_CLIP_DIRS = {k: os.path.join(ASSETS, "toy_clip", k) for k in ("clip_l", "clip_g")}


def _clip_pretokenizer():
    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                       normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return normalizer, pre, pre_tokenizers.ByteLevel.alphabet()


def learn_bpe_merges(words: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on word counts; ties broken lexicographically, so the result is deterministic.

    (The ``tokenizers`` trainer breaks ties in hash-map order, which differs from run to run.)
    """
    vocab = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in words.items()}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, n in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = {}
        for symbols, n in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        vocab = merged
    return merges


def build_clip_bpe(lines: list[str], out_dir: str, num_merges: int = 512) -> None:
    normalizer, pre, alphabet = _clip_pretokenizer()
    words: Counter = Counter()
    for line in lines:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    merges = [f"{a} {b}" for a, b in learn_bpe_merges(words, num_merges)]
    # CLIP's layout: every byte, every byte + </w>, the merges, then the two special tokens.
    vocab = {}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    for ch in sorted(alphabet):
        vocab.setdefault(ch + "</w>", len(vocab))
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0, sort_keys=False)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f, indent=1)


def build_t5_spm(lines: list[str], out_dir: str, vocab_size: int = 128) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, character_coverage=1.0,
        shuffle_input_sentence=False, hard_vocab_limit=False, minloglevel=2)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "model_max_length": 256, "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0}, f, indent=1)


def build_all(out: str = ASSETS) -> None:
    from mmdit_jax.data.captions import corpus

    lines = corpus()
    build_clip_bpe(lines, os.path.join(out, "clip"))
    build_t5_spm(lines, os.path.join(out, "t5"))


if __name__ == "__main__":
    build_all(sys.argv[1] if len(sys.argv) > 1 else ASSETS)
