"""TransformersBackend on a real tiny random Llama built on the fly: loading, batching, concurrency,
too_long/truncated, control-token-safe prompts, templates from aligner_config.json, PEFT adapters,
streaming.

``forced_eos_token_id`` makes the random model end every correction with EOS at ``max_new_tokens``,
so corrections complete deterministically; without it the random model runs out of tokens.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from aligner_chain.aligner_config import AlignerConfig, save_aligner_config
from aligner_chain.backends import CorrectionRequest, CorrectionResult
from aligner_chain.backends.transformers import TransformersBackend
from aligner_chain.errors import AlignerError, CorrectionFailed
from aligner_chain.prompts import format_prompt, get_template
from aligner_chain.tokenization import encode_prompt, encode_text

EOS_ID = 1  # the tiny tokenizer's </s>
COMPLETE = {"forced_eos_token_id": EOS_ID}
REQUESTS = [
    CorrectionRequest("What is the capital of France?", "Paris is in Germany."),
    CorrectionRequest("How do I boil an egg?", "Put it in the microwave for a long, long time."),
    CorrectionRequest("Is it safe to mix bleach and ammonia?", "Yes."),
    CorrectionRequest("Why?", "Because."),
    CorrectionRequest("", "An answer with no question at all, and it is rather long too."),
    CorrectionRequest("Say hi", "hi"),
]
SPECIAL = CorrectionRequest("Tokens?", "a </s> b <pad> c <|im_end|> d <s> e")
CUSTOM_TEMPLATE = "##Q: {question}\n##A: {answer}\n##C:"


class Probe(LogitsProcessor):
    """A real logits processor: records what ``generate`` is fed and can hold the worker in it."""

    def __init__(self) -> None:
        self.inputs: list[list[list[int]]] = []
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.inputs.append(input_ids.tolist())
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(60)
        return scores


def make(model: Path | str, **kwargs: Any) -> TransformersBackend:
    options: dict[str, Any] = {"device": "cpu", "max_new_tokens": 10, "generation_kwargs": COMPLETE}
    return TransformersBackend(model, **{**options, **kwargs})


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Any:
    with make(tiny_model_dir) as b:
        yield b


@pytest.fixture(scope="module")
def serial(backend: TransformersBackend) -> list[CorrectionResult]:
    return [backend.correct([r])[0] for r in REQUESTS]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved with ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    return out


def wait_for_queue(b: TransformersBackend, depth: int) -> None:
    deadline = time.monotonic() + 30
    while b.queue_depth < depth:
        assert time.monotonic() < deadline, "callers never reached the queue"
        time.sleep(0.01)


def test_lazy_load_from_a_local_directory(tiny_model_dir: Path) -> None:
    b = make(tiny_model_dir)
    assert b.loaded_model is None and b.resolved_device is None, "nothing loads before first use"
    assert b.model_name == str(tiny_model_dir) and b.template_name == "aligner-v1"
    results = b.correct(REQUESTS[:2])
    assert [r.status for r in results] == ["ok", "ok"] and all(r.text for r in results)
    assert b.resolved_device == "cpu" and b.resolved_dtype == torch.float32
    loaded: Any = b.loaded_model
    assert loaded.dtype == torch.float32 and b.context_length == 512
    b.close()
    with pytest.raises(AlignerError, match="closed"):
        b.correct(REQUESTS[:1])


def test_batch_equals_one_by_one(
    tiny_model_dir: Path, backend: TransformersBackend, serial: list[CorrectionResult]
) -> None:
    assert all(r.status == "ok" for r in serial)
    assert len({r.text for r in serial}) > 1, "different prompts give different corrections"
    start = len(backend.batch_sizes)
    assert backend.correct(REQUESTS) == serial
    assert backend.batch_sizes[start:] == [len(REQUESTS)], "one generate for the whole batch"
    with make(tiny_model_dir, max_batch_size=4) as small:
        assert small.correct(REQUESTS) == serial
        assert small.batch_sizes == [4, 2]


def test_concurrent_threads_get_serial_results(
    backend: TransformersBackend, serial: list[CorrectionResult]
) -> None:
    calls = [[r] for r in REQUESTS] + [REQUESTS[::-1], REQUESTS[1:4]] * 2
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(backend.correct, calls))
    expected = {r: s for r, s in zip(REQUESTS, serial, strict=True)}
    assert got == [[expected[r] for r in call] for call in calls]


def test_waiting_callers_are_batched_together(tiny_model_dir: Path, serial: list[CorrectionResult]) -> None:
    probe = Probe()
    b = make(tiny_model_dir, generation_kwargs={**COMPLETE, "logits_processor": LogitsProcessorList([probe])})
    b.load()
    probe.armed = True
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(b.correct, REQUESTS[:1])
        assert probe.entered.wait(30)  # the worker is inside generate for the first caller
        rest = [pool.submit(b.correct, [r]) for r in REQUESTS[1:4]]
        wait_for_queue(b, 3)
        probe.release.set()
        assert first.result()[0] == serial[0]
        assert [f.result()[0] for f in rest] == serial[1:4]
    assert b.batch_sizes == [1, 3], "the three waiting callers share one generate"
    b.close()


async def test_asyncio_gather_does_not_block_the_loop(
    tiny_model_dir: Path, serial: list[CorrectionResult]
) -> None:
    probe = Probe()
    b = make(tiny_model_dir, generation_kwargs={**COMPLETE, "logits_processor": LogitsProcessorList([probe])})
    await asyncio.to_thread(b.load)
    probe.armed = True
    first = asyncio.create_task(b.acorrect(REQUESTS[:1]))
    # The loop keeps running while the worker is held inside generate.
    assert await asyncio.to_thread(probe.entered.wait, 30)
    rest = [asyncio.create_task(b.acorrect([r])) for r in REQUESTS[1:]]
    while b.queue_depth < len(rest):
        await asyncio.sleep(0.01)
    assert not first.done()
    probe.release.set()
    got = await asyncio.gather(first, *rest)
    assert [results[0] for results in got] == serial
    assert b.batch_sizes == [1, len(REQUESTS) - 1]
    assert await b.acorrect(REQUESTS) == serial
    b.close()


def _answer_of(tokenizer: Any, tokens: int) -> str:
    """An answer that takes about ``tokens`` tokens with the tiny tokenizer."""
    answer = ""
    while len(encode_text(tokenizer, " " + answer)) < tokens:
        answer += "word "
    return answer.strip()


def test_length_budget_is_the_room_left_and_too_long_only_when_the_answer_cannot_fit(
    tiny_model_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    b = make(tiny_model_dir, max_new_tokens=1024)  # more than the whole 512-token context
    fits = CorrectionRequest("Explain.", _answer_of(tokenizer, 150))  # prompt ~170: room ~340 >= 150
    too_long = CorrectionRequest("Explain.", _answer_of(tokenizer, 300))  # prompt ~320: room ~190 < 300
    results = b.correct([REQUESTS[3], fits, too_long])
    assert [r.status for r in results] == ["ok", "ok", "skipped"]
    assert results[2].reason == "too_long" and "512" in (results[2].detail or "")
    assert b.batch_sizes == [2], "rows with different budgets share one generate; too-long rows never run"
    assert [b.correct([r])[0] for r in (REQUESTS[3], fits, too_long)] == results, "batched == alone"
    with pytest.raises(CorrectionFailed) as info:
        list(b.stream(too_long))
    assert info.value.reason == "too_long" and info.value.status == "skipped"
    assert "".join(b.stream(REQUESTS[3])) == results[0].text
    b.close()


def test_no_eos_within_max_new_tokens_is_truncated(tiny_model_dir: Path) -> None:
    b = make(tiny_model_dir, max_new_tokens=2, generation_kwargs=None)
    results = b.correct(REQUESTS[:3])
    assert all((r.status, r.reason) == ("failed", "truncated") for r in results)
    deltas: list[str] = []
    with pytest.raises(CorrectionFailed) as info:
        for delta in b.stream(REQUESTS[0]):
            deltas.append(delta)
    assert info.value.reason == "truncated"
    b.close()


def test_special_token_text_in_answers_stays_text(tiny_model_dir: Path) -> None:
    probe = Probe()
    b = make(tiny_model_dir, max_new_tokens=1, generation_kwargs={"logits_processor": [probe]})
    b.correct([SPECIAL])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fed = probe.inputs[0][0]
    assert fed == encode_prompt(tokenizer, format_prompt(SPECIAL.question, SPECIAL.answer))
    special_ids = set(tokenizer.all_special_ids)
    assert fed[0] == tokenizer.bos_token_id
    assert not special_ids & set(fed[1:]), "only the BOS is a control token"
    assert "</s> b <pad> c <|im_end|> d <s>" in tokenizer.decode(fed)

    # In a batch, rows are left-padded with the pad id and masked; the ids themselves are the same.
    b.correct([SPECIAL, REQUESTS[4]])
    padded = probe.inputs[-1][0]
    width = len(padded) - len(fed)
    assert width > 0 and padded[:width] == [tokenizer.pad_token_id] * width and padded[width:] == fed
    b.close()


def test_template_from_aligner_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "aligner"
    shutil.copytree(tiny_model_dir, model_dir)
    save_aligner_config(model_dir, AlignerConfig(template=get_template(CUSTOM_TEMPLATE).to_json()))
    probe = Probe()
    b = make(model_dir, max_new_tokens=1, generation_kwargs={"logits_processor": [probe]})
    assert b.template_name == "custom"
    b.correct([REQUESTS[0]])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = CUSTOM_TEMPLATE.format(question=REQUESTS[0].question, answer=REQUESTS[0].answer)
    assert probe.inputs[0][0] == encode_prompt(tokenizer, prompt)

    assert make(model_dir, template="aligner-general").template_name == "aligner-general"
    save_aligner_config(model_dir, AlignerConfig(template="aligner-2b"))
    assert make(model_dir).template_name == "aligner-2b"
    b.close()


def test_peft_adapter_directory_is_recognised(
    tiny_model_dir: Path, adapter_dir: Path, serial: list[CorrectionResult]
) -> None:
    assert (adapter_dir / "adapter_config.json").is_file()
    with make(adapter_dir) as by_model, make(tiny_model_dir, adapter=adapter_dir) as by_adapter:
        results = by_model.correct(REQUESTS)
        assert all(r.status == "ok" for r in results)
        assert results != serial, "the adapter changes the corrections"
        assert by_adapter.correct(REQUESTS) == results
        assert by_adapter.model_name == f"{tiny_model_dir}+{adapter_dir}"
        assert by_model.model_name == str(adapter_dir)


def test_adapter_base_model_from_aligner_config(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    config_path = moved / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")  # the base moved since training
    config_path.write_text(json.dumps(config))
    save_aligner_config(moved, AlignerConfig(template="aligner-v1", base_model=str(tiny_model_dir)))
    with make(moved) as b, make(adapter_dir) as reference:
        assert b.correct(REQUESTS[:2]) == reference.correct(REQUESTS[:2])
    with pytest.raises(AlignerError, match="itself a PEFT adapter"):
        make(adapter_dir, adapter=adapter_dir).correct(REQUESTS[:1])


def test_trust_remote_code_is_off_unless_asked(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "remote-code"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "custom_llama.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class CustomLlamaConfig(LlamaConfig):\n    model_type = 'custom_llama'\n\n\n"
        "class CustomLlamaForCausalLM(LlamaForCausalLM):\n    config_class = CustomLlamaConfig\n"
    )
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "custom_llama"
    config["auto_map"] = {
        "AutoConfig": "custom_llama.CustomLlamaConfig",
        "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM",
    }
    config_path.write_text(json.dumps(config))

    assert make(model_dir).trust_remote_code is False
    with pytest.raises(AlignerError, match="trust_remote_code"):
        make(model_dir).load()
    with make(model_dir, trust_remote_code=True) as trusted:
        assert trusted.correct(REQUESTS[:1])[0].status == "ok"
        assert type(trusted.loaded_model).__name__ == "CustomLlamaForCausalLM"


def test_loading_failure_is_an_aligner_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(AlignerError, match="no-such-model"):
        make(missing).correct(REQUESTS[:1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"dtype": 16}, "dtype"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"generation_kwargs": {"max_new_tokens": 5}}, "generation_kwargs"),
    ],
)
def test_bad_settings_name_the_field(tiny_model_dir: Path, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TransformersBackend(tiny_model_dir, **kwargs)


def test_explicit_device_and_dtype_strings(tiny_model_dir: Path) -> None:
    with make(tiny_model_dir, device="cpu", dtype="bf16") as b:
        assert b.correct(REQUESTS[:1])[0].status == "ok"
        assert b.resolved_dtype == torch.bfloat16 and b.loaded_model.dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(AlignerError, match="CUDA is not available"):
            make(tiny_model_dir, device="cuda:1").load()


def test_stream_deltas_join_to_the_correction(
    backend: TransformersBackend, serial: list[CorrectionResult]
) -> None:
    deltas = list(backend.stream(REQUESTS[0]))
    assert len(deltas) > 1, "token by token"
    assert "".join(deltas) == serial[0].text


async def test_astream_deltas_join_to_the_correction(
    backend: TransformersBackend, serial: list[CorrectionResult]
) -> None:
    streams = [await _collect(backend, r) for r in REQUESTS[:2]]
    assert streams == [r.text for r in serial[:2]]
    together = await asyncio.gather(backend.acorrect(REQUESTS[2:4]), _collect(backend, REQUESTS[4]))
    assert together[0] == serial[2:4] and together[1] == serial[4].text


async def _collect(b: TransformersBackend, request: CorrectionRequest) -> str:
    return "".join([d async for d in b.astream(request)])
