"""LocalModel, the engine under every local model: per-row token budgets in one batch."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from aligner_chain.backends.generation import Prompt
from aligner_chain.backends.local_model import LocalModel
from aligner_chain.tokenization import encode_prompt

EOS_ID = 1  # the tiny tokenizer's </s>


def test_each_row_stops_at_its_own_budget_in_a_shared_batch(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LocalModel(
        tiny_model_dir, device="cpu", max_new_tokens=9, generation_kwargs={"suppress_tokens": [EOS_ID]}
    )
    model.load()
    prompts = [
        Prompt(encode_prompt(tokenizer, "What is the capital of France?"), 3),
        Prompt(encode_prompt(tokenizer, "How do I boil an egg?"), 9),
        Prompt(encode_prompt(tokenizer, "Yes."), 5),
    ]
    together = model.generate(prompts)
    alone = [model.generate([p])[0] for p in prompts]
    assert together == alone, "a row's result does not depend on its batch"
    assert [g.finish_reason for g in together] == ["length"] * 3  # EOS suppressed: each hit its budget
    assert len({g.text for g in together}) == 3 and len(together[0].text) < len(together[1].text)
    assert model.batch_sizes == [3, 1, 1, 1]
    model.close()
