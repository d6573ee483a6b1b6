"""A tiny causal LM whose output length and copying are set by its input, for decoding tests and
benchmarks (built offline, saved with ``save_pretrained`` like any model).

Every attention ``o_proj`` and MLP ``down_proj`` of a random Llama is zeroed (the layers still run,
so a token costs what it costs in a random Llama of that size, but add nothing), so the next token
depends on the last token alone; ``lm_head`` is then rebuilt so that greedy decoding walks a fixed
chain: word token ``words[i]`` is followed by ``words[i + 1]``, and the last word by EOS. So:

* a prompt ending in ``words[j]`` generates exactly ``len(words) - 1 - j`` tokens, then EOS
  (:meth:`CopyModel.marker` picks the word for a wanted length);
* an answer written along the chain (:meth:`CopyModel.chain_text`) is what the model generates
  after it: the output copies the answer, and prompt-lookup drafts are all accepted.

Words are tokens of a leading space and ASCII letters that encode back to themselves, so any run of
them is text that tokenizes to the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CopyModel", "build_copy_model", "load_copy_model_words"]

_WORDS_FILE = "copy_chain.json"


@dataclass(frozen=True)
class CopyModel:
    """A built copy model: its directory and its chain of word token ids (ending before EOS)."""

    path: Path
    words: tuple[int, ...]
    texts: tuple[str, ...]

    @property
    def longest(self) -> int:
        """The longest output (tokens before EOS) the chain allows."""
        return len(self.words) - 1

    def marker(self, length: int) -> str:
        """The word (text, with its leading space) after which the model generates ``length``
        tokens and then EOS."""
        if not 0 <= length <= self.longest:
            raise ValueError(f"length must be within 0..{self.longest}, got {length}")
        return self.texts[self.longest - length]

    def chain_text(self, length: int) -> str:
        """An answer the model copies: ``length`` chain words, then the marker that starts them
        (the output is the answer without its last word, then EOS)."""
        start = self.longest - length
        return "".join(self.texts[start + 1 :]) + self.texts[start]


def build_copy_model(
    output_dir: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 2048,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    scale: float = 30.0,
    device: str = "cpu",
    dtype: str = "float32",
) -> CopyModel:
    """Train a byte-level BPE tokenizer on ``corpus``, build the chain model on it (on ``device``,
    in ``dtype``: a model of a billion parameters is built on a GPU in seconds), save both (and the
    chain) to ``output_dir``."""
    import torch
    from transformers import LlamaForCausalLM

    from training.demo.tiny_model import build_tiny_tokenizer, tiny_llama_config

    output = Path(output_dir)
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=vocab_size)
    tokenizer.model_max_length = max_position_embeddings
    vocab = len(tokenizer)
    config = tiny_llama_config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    generator = torch.Generator().manual_seed(seed + 1)
    eos = int(tokenizer.eos_token_id)
    specials = set(tokenizer.all_special_ids)
    words = [t for t in range(vocab) if t not in specials and _is_word(tokenizer, t)]
    words = [words[i] for i in torch.randperm(len(words), generator=generator).tolist()]
    others = [t for t in range(vocab) if t != eos and t not in set(words)]
    cycle = [*words, eos, *others]  # one cycle through every token: the words, then EOS, then the rest
    following = {cycle[i]: cycle[(i + 1) % len(cycle)] for i in range(len(cycle))}
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        # The layers add nothing now: a token's last hidden state is the final norm of its embedding.
        hidden = model.model.norm(model.model.embed_tokens.weight).float()
        hidden = torch.nan_to_num(hidden / hidden.norm(dim=-1, keepdim=True))
        tokens = torch.tensor(list(following), device=hidden.device)
        successors = torch.tensor(list(following.values()), device=hidden.device)
        head = torch.zeros(vocab, hidden_size, device=hidden.device)
        head[successors] = hidden[tokens] * scale
        model.lm_head.weight.copy_(head)
        logits = model.model.norm(model.model.embed_tokens.weight) @ model.lm_head.weight.T
        predicted = logits.argmax(-1).tolist()
        sample = torch.tensor(words[:32], device=hidden.device).unsqueeze(1)  # and through the layers
        ran = model(input_ids=sample).logits[:, -1].argmax(-1).tolist()
    wrong = [t for t in words if predicted[t] != following[t]]
    wrong += [t for t, p in zip(words[:32], ran, strict=False) if p != following[t]]
    if wrong:
        raise RuntimeError(
            f"the chain model mispredicts {len(wrong)} of {len(words)} words; raise hidden_size"
        )
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    texts = [str(tokenizer.decode([t])) for t in words]
    (output / _WORDS_FILE).write_text(json.dumps({"words": words, "texts": texts}) + "\n")
    return CopyModel(output, tuple(words), tuple(texts))


def load_copy_model_words(path: str | Path) -> CopyModel:
    """The :class:`CopyModel` of a directory written by :func:`build_copy_model`."""
    data = json.loads((Path(path) / _WORDS_FILE).read_text())
    return CopyModel(Path(path), tuple(data["words"]), tuple(data["texts"]))


def _is_word(tokenizer: object, token: int) -> bool:
    """A leading space and ASCII letters, encoding back to this one token."""
    text = tokenizer.decode([token])  # type: ignore[attr-defined]
    if len(text) < 2 or text[0] != " " or not text[1:].isascii() or not text[1:].isalpha():
        return False
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return bool(ids == [token])
