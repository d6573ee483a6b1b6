"""LocalUpstream as a chat model: usage, model name, streaming, stop and max_tokens per call."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from aligner_chain.tokenization import encode_prompt
from training.bootstrap.local_upstream import PLAIN_TEMPLATE, LocalUpstream


@pytest.fixture(scope="module")
def upstream(tiny_model_dir: Path) -> LocalUpstream:
    return LocalUpstream(
        model=str(tiny_model_dir), max_new_tokens=12, device="cpu", generation_kwargs={"min_new_tokens": 12}
    )


def test_usage_and_model_name_are_the_models_own(upstream: LocalUpstream, tiny_model_dir: Path) -> None:
    answer = upstream.invoke("Hello")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_tokens = len(encode_prompt(tokenizer, PLAIN_TEMPLATE.format(question="Hello")))
    assert answer.text
    assert answer.usage_metadata == {
        "input_tokens": prompt_tokens,
        "output_tokens": 12,  # min_new_tokens = max_new_tokens: exactly 12 generated
        "total_tokens": prompt_tokens + 12,
    }
    assert answer.response_metadata == {"model_name": str(tiny_model_dir), "finish_reason": "length"}


def test_stream_gives_the_same_answer_and_usage_once(upstream: LocalUpstream) -> None:
    chunks = list(upstream.stream("Hello"))
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    invoked = upstream.invoke("Hello")
    assert total.text == invoked.text
    assert total.usage_metadata == invoked.usage_metadata


def test_stop_and_max_tokens_cut_invoke_and_stream_alike(upstream: LocalUpstream) -> None:
    full = upstream.invoke("Hello").text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = upstream.invoke("Hello", stop=[stop])
    assert cut.text == full[: full.index(stop)]
    assert "".join(c.text for c in upstream.stream("Hello", stop=[stop])) == cut.text
    short = upstream.invoke("Hello", max_tokens=3)
    assert full.startswith(short.text) and len(short.text) < len(full)
    assert short.usage_metadata["output_tokens"] == 3 and short.response_metadata["finish_reason"] == "length"
    assert "".join(c.text for c in upstream.stream("Hello", max_tokens=3)) == short.text
    assert upstream.invoke("Hello", max_tokens=100).text == full  # at most the model's own budget


def test_bad_call_arguments_are_refused(upstream: LocalUpstream) -> None:
    with pytest.raises(ValueError, match="decodes greedily"):
        upstream.invoke("Hello", temperature=0.7)
    with pytest.raises(TypeError, match="unexpected call argument"):
        upstream.invoke("Hello", top_k=3)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        upstream.invoke("Hello", max_tokens=0)
