"""The local backend's decoding modes on real tiny models built on the fly.

* prompt lookup: same greedy output as plain decoding with fewer forward passes on a model that
  copies; drafts from the answer (the transformers hook) or the built-in lookup; backs off where
  drafts do not pay; kept out where stop rules could be overshot;
* the worker thread's own torch pool (and its early exit on CPU);
* scheduling: callers that come back share full batches, rows of similar length share a batch,
  the batch size chosen for the device;
* compiled decoding's static-cache path (it compiles on accelerators only) and the plan per device.

The copy model (``copy_model`` in conftest) makes lengths exact: a prompt ending in
``marker(n)`` generates ``n`` words then EOS, and it copies an answer written along its chain.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from aligner_chain.backends import CorrectionRequest
from aligner_chain.backends import prompt_lookup as lookup_module
from aligner_chain.backends.capacity import BATCH_TARGETS, continuous_bounds, default_batch_size
from aligner_chain.backends.decoding import DecodingOptions, LoadedModel, plan_decoding
from aligner_chain.backends.prompt_lookup import AnswerLookup, LookupPolicy, answer_drafting_supported
from aligner_chain.backends.threads import own_thread_pool
from aligner_chain.backends.transformers import TransformersBackend
from tests.conftest import COPY_TEMPLATE

EOS_ID = 1


def copy_backend(copy_model: Any, **kwargs: Any) -> TransformersBackend:
    options: dict[str, Any] = {"template": COPY_TEMPLATE, "device": "cpu", "max_new_tokens": 96}
    return TransformersBackend(copy_model.path, **{**options, **kwargs})


def copying(copy_model: Any, lengths: list[int]) -> list[CorrectionRequest]:
    """Answers the model copies (its output: the answer without its last word)."""
    return [CorrectionRequest(f"Question {n}?", copy_model.chain_text(n)) for n in lengths]


def rewriting(copy_model: Any, lengths: list[int]) -> list[CorrectionRequest]:
    """Answers the model does not copy: ``n`` chain words follow, then EOS."""
    return [
        CorrectionRequest(f"Question {n}?", "How do I boil an egg? Simmer it." + copy_model.marker(n))
        for n in lengths
    ]


class ThreadProbe(LogitsProcessor):
    """Records the torch thread count and thread of whoever runs ``generate``."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.seen.add((torch.get_num_threads(), threading.current_thread().name))
        return scores


class Batches(LogitsProcessor):
    """Records the unpadded prompts of each ``generate`` call, and can hold the worker in one."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.calls: list[list[list[int]]] = []
        self._last: torch.Tensor | None = None
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last = self._last
        goes_on = (
            last is not None and input_ids.shape[1] > last.shape[1] and input_ids.shape[0] == last.shape[0]
        )
        if not (goes_on and torch.equal(input_ids[:, : last.shape[1]], last)):  # type: ignore[union-attr]
            self.calls.append([[t for t in row if t != self.pad_id] for row in input_ids.tolist()])
        self._last = input_ids.clone()
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(60)
        return scores


# -- prompt lookup ---------------------------------------------------------------------------------


def test_prompt_lookup_keeps_greedy_output_with_fewer_forward_passes(copy_model: Any) -> None:
    copies = copying(copy_model, [20, 35, 50, 60])
    with (
        copy_backend(copy_model, prompt_lookup="off") as plain,
        copy_backend(copy_model, prompt_lookup="on") as fast,
    ):
        expected = [plain.correct([r])[0] for r in copies]
        got = [fast.correct([r])[0] for r in copies]
        assert all(r.status == "ok" for r in expected)
        assert [r.text for r in expected] == [
            r.answer[: -len(copy_model.marker(n))].strip()
            for r, n in zip(copies, [20, 35, 50, 60], strict=True)
        ], "the model copies the answer"
        assert got == expected
        assert plain.engine.modes == {"plain": 4} and fast.engine.modes == {"prompt_lookup": 4}
        lookup = fast.engine.lookup
        assert lookup is not None and lookup.tokens_per_forward is not None
        assert lookup.tokens_per_forward > 3, "most drafts accepted: several tokens per forward pass"
        assert "".join(fast.stream(copies[1])) == expected[1].text
        assert fast.engine.modes["prompt_lookup"] == 5, "a stream is a row decoded alone too"
        others = rewriting(copy_model, [5, 30])
        assert [fast.correct([r])[0] for r in others] == [plain.correct([r])[0] for r in others]


def test_drafts_come_from_the_answer_and_respect_eos_and_length() -> None:
    answer = [10, 11, 12, 13, 14, 15]
    question = [30, 10, 11, 77, 78, 31]  # holds the answer's first words, then something else
    prompt = [2, *question, *answer]
    drafter = AnswerLookup(
        answer, prompt_length=len(prompt), max_length=len(prompt) + 20, eos_ids=[1], device="cpu"
    )
    ids = torch.tensor([[*prompt, 10, 11]])
    draft, _ = drafter.get_candidates(ids)
    assert draft[0, ids.shape[1] :].tolist() == [12, 13, 14, 15], "from the answer, not the question's 77 78"
    drafter.update_candidate_strategy(draft, torch.zeros(1), 2)  # 12 13 accepted, then the model said 99
    ids = torch.tensor([[*prompt, 10, 11, 12, 13, 99]])
    assert drafter.get_candidates(ids)[0].shape == ids.shape, "nothing follows 99: no draft"

    with_eos = AnswerLookup([5, 6, 7, 1, 8, 9], prompt_length=3, max_length=100, eos_ids=[1], device="cpu")
    assert with_eos.get_candidates(torch.tensor([[2, 3, 5]]))[0][0, 3:].tolist() == [6, 7], "stops before EOS"
    short = AnswerLookup(list(range(20, 40)), prompt_length=2, max_length=7, eos_ids=[1], device="cpu")
    assert short.get_candidates(torch.tensor([[2, 20, 21]]))[0].shape[1] == 6, "never past max_length - 1"

    missing = AnswerLookup(
        [5, 6, 7, 8], prompt_length=2, max_length=100, eos_ids=[1], device="cpu", patience=2
    )
    ids = torch.tensor([[2, 3, 5]])
    for _ in range(2):  # two drafts fully rejected
        assert missing.get_candidates(ids)[0].shape[1] > ids.shape[1]
        missing.update_candidate_strategy(ids, torch.zeros(1), 0)
    assert missing.get_candidates(ids)[0].shape == ids.shape, "backs off inside the call"


def test_the_drafter_hook_is_used_where_tested_else_the_built_in_lookup(
    copy_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = copying(copy_model, [30, 45])
    with copy_backend(copy_model, prompt_lookup="off") as plain:
        expected = [plain.correct([r])[0] for r in copies]
        assert answer_drafting_supported(plain.loaded_model), "the pinned transformers has the hook"
        monkeypatch.setattr(lookup_module, "_HOOK_TESTED", set())  # as on an untested transformers
        assert not answer_drafting_supported(plain.loaded_model)
    with copy_backend(copy_model, prompt_lookup="on") as built_in:
        assert [built_in.correct([r])[0] for r in copies] == expected
        lookup = built_in.engine.lookup
        assert lookup is not None and (lookup.tokens_per_forward or 0) > 2
        assert "_get_candidate_generator" not in vars(built_in.loaded_model), "nothing left on the model"


def test_auto_lookup_backs_off_where_drafts_do_not_pay_and_resumes_where_they_do(copy_model: Any) -> None:
    others, copies = rewriting(copy_model, [24] * 12), copying(copy_model, [40] * 8)
    with copy_backend(copy_model, prompt_lookup="off") as plain, copy_backend(copy_model) as auto:
        assert [auto.correct([r])[0] for r in others] == [plain.correct([r])[0] for r in others]
        lookup = auto.engine.lookup
        assert lookup is not None and lookup.skipped > 0
        assert auto.engine.modes["plain"] >= 8 and auto.engine.modes["prompt_lookup"] <= 4
        drafted = auto.engine.modes["prompt_lookup"]
        assert [auto.correct([r])[0] for r in copies] == [plain.correct([r])[0] for r in copies]
        assert auto.engine.modes["prompt_lookup"] - drafted >= 5, "drafting resumes once it pays"
        assert (lookup.tokens_per_forward or 0) >= LookupPolicy.threshold


def test_lookup_policy_backs_off_doubling_and_resets() -> None:
    policy = LookupPolicy("auto")
    assert policy.should_draft()
    policy.record(tokens=40, forwards=40)  # 1 token per forward: drafts never accepted
    assert [policy.should_draft() for _ in range(5)] == [False] * 4 + [True]
    policy.record(tokens=40, forwards=40)
    assert [policy.should_draft() for _ in range(9)] == [False] * 8 + [True]
    policy.record(tokens=400, forwards=40)  # copying again
    assert policy.should_draft() and policy._backoff == LookupPolicy.base_backoff
    always, never = LookupPolicy("on"), LookupPolicy("off")
    always.record(tokens=40, forwards=40)
    assert always.should_draft() and not never.should_draft()


class StopAfter(StoppingCriteria):
    def __init__(self, width: int, count: int) -> None:
        self.width, self.count = width, count

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - self.width >= self.count)  # type: ignore[return-value]


def test_stop_rules_keep_prompt_lookup_out(copy_model: Any) -> None:
    from transformers import AutoTokenizer

    from aligner_chain.tokenization import encode_prompt

    (request,) = copying(copy_model, [40])
    tokenizer = AutoTokenizer.from_pretrained(copy_model.path)
    width = len(
        encode_prompt(tokenizer, COPY_TEMPLATE.format(question=request.question, answer=request.answer))
    )
    stop = {"stopping_criteria": StoppingCriteriaList([StopAfter(width, 5)])}
    with copy_backend(copy_model, generation_kwargs=stop) as b:
        result = b.correct([request])[0]
        assert b.decoding_plan is not None and b.decoding_plan.prompt_lookup == "off"
        assert "prompt_lookup" not in b.engine.modes
        assert result.status == "ok" and len(result.text.split()) == 5, "stopped exactly, no draft overshoot"
    with pytest.raises(ValueError, match=r"prompt_lookup='on'.*stopping_criteria"):
        copy_backend(copy_model, prompt_lookup="on", generation_kwargs=stop)


def test_a_row_never_passes_its_budget(copy_model: Any) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(copy_model.path)
    loaded = LoadedModel(None, tokenizer, "cpu", torch.float32, frozenset({EOS_ID}), 2, 1024)
    words = list(copy_model.words[:8])
    overshot = loaded.finish([*words, EOS_ID], budget=5)  # a decoder ran 4 tokens past the budget
    assert overshot.finish_reason == "length" and overshot.text == tokenizer.decode(words[:5])
    assert loaded.finish([*words[:3], EOS_ID], budget=5).finish_reason == "stop"


def test_a_stream_whose_reader_leaves_stops_and_frees_the_worker(copy_model: Any) -> None:
    (long_one,) = copying(copy_model, [90])
    with copy_backend(copy_model, prompt_lookup="on") as b:
        stream = b.stream(long_one)
        assert next(stream)
        stream.close()  # the reader left: the generation stops at its next step
        assert b.correct(copying(copy_model, [10]))[0].status == "ok"


# -- threads ---------------------------------------------------------------------------------------


def test_streams_that_wait_together_share_one_batch(copy_model: Any) -> None:
    """Streams queued while the worker is busy decode in one batch, each row's text routed to its own
    reader and ending at its own EOS; a reader that leaves stops only its row."""
    requests = copying(copy_model, [5, 30, 50]) + rewriting(copy_model, [12])
    leaving = copying(copy_model, [80])[0]
    with copy_backend(copy_model, prompt_lookup="off") as reference:
        expected = [r.text for r in reference.correct(requests)]
    probe = Batches(pad_id=2)
    with copy_backend(copy_model, generation_kwargs={"logits_processor": [probe]}) as b:
        b.load()
        probe.armed = True
        with ThreadPoolExecutor(6) as pool:
            blocker = pool.submit(b.correct, copying(copy_model, [3]))
            assert probe.entered.wait(30), "the worker is busy"
            streams = [pool.submit(lambda r=r: "".join(b.stream(r))) for r in requests]

            def leave() -> str:
                stream = b.stream(leaving)
                first = next(stream)
                stream.close()  # the reader leaves after one piece
                return first

            left = pool.submit(leave)
            deadline = time.monotonic() + 30
            while b.queue_depth < len(requests) + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            probe.release.set()
            assert blocker.result()[0].status == "ok"
            assert [f.result(timeout=60) for f in streams] == expected
            assert left.result(timeout=60)
        assert b.batch_sizes == [1, len(requests) + 1], "the waiting streams shared one batch"
        assert [r.text for r in b.correct(requests)] == expected, "and the worker goes on"


def test_the_worker_thread_owns_its_torch_pool(tiny_model_dir: Any) -> None:
    def fresh_thread_default() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    main, fresh = torch.get_num_threads(), fresh_thread_default()
    probe = ThreadProbe()
    options = {"device": "cpu", "max_new_tokens": 4, "generation_kwargs": {"logits_processor": [probe]}}
    with TransformersBackend(tiny_model_dir, threads=1, **options) as one:
        one.correct([CorrectionRequest("Why?", "Because.")])
        assert {count for count, _ in probe.seen} == {1}
        assert {name for _, name in probe.seen} == {one.engine.worker_thread.name}  # type: ignore[union-attr]
        assert torch.get_num_threads() == main and fresh_thread_default() == fresh, "others keep theirs"
        assert one.engine.idle_exit_s() == 60.0, "a one-thread worker holds no OpenMP team: it may linger"
    probe.seen.clear()
    with TransformersBackend(tiny_model_dir, threads=2, **options) as two:
        two.correct([CorrectionRequest("Why?", "Because.")])
        assert {count for count, _ in probe.seen} == {2}
        deadline = time.monotonic() + 10
        while two.engine.worker_thread is not None:  # its idle team would slow the caller's torch work
            assert time.monotonic() < deadline, "an idle CPU worker with a pool exits soon"
            time.sleep(0.05)
        assert two.correct([CorrectionRequest("Why?", "Because.")])[0].status in ("ok", "failed")
        assert torch.get_num_threads() == main and fresh_thread_default() == fresh


def test_own_thread_pool_restores_the_default_for_new_threads() -> None:
    seen: list[int] = []

    def worker() -> None:
        default = own_thread_pool(1)
        seen.extend([torch.get_num_threads(), default])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    after: list[int] = []
    probe = threading.Thread(target=lambda: after.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    assert seen[0] == 1 and after == [seen[1]]


# -- scheduling ------------------------------------------------------------------------------------


def test_callers_that_come_back_share_full_batches(copy_model: Any) -> None:
    requests = rewriting(copy_model, [3, 4, 5, 6])
    with copy_backend(copy_model, prompt_lookup="off") as reference:
        expected = {r: reference.correct([r])[0] for r in requests}
    probe = Batches(pad_id=2)
    b = copy_backend(copy_model, max_batch_size=4, generation_kwargs={"logits_processor": [probe]})
    b.load()
    worker = b.engine._worker
    worker.gather_share, worker.gather_max_s, worker.gather_quiet_s = 1000.0, 5.0, 1.0  # a slow machine
    probe.armed = True

    def caller(request: CorrectionRequest) -> list[Any]:
        return [b.correct([request])[0] for _ in range(3)]

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(caller, requests[0])
        assert probe.entered.wait(30)  # the first caller's lone row is being generated
        rest = [pool.submit(caller, r) for r in requests[1:]]
        deadline = time.monotonic() + 30
        while b.queue_depth < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        probe.release.set()
        results = [first.result(), *[f.result() for f in rest]]
    assert results == [[expected[r]] * 3 for r in requests]
    assert b.batch_sizes == [1, 4, 4, 3], "the first caller rejoins the others: no 3/1 alternation"
    b.close()


def test_rows_of_similar_length_share_a_batch(copy_model: Any) -> None:
    short, long = "Simmer it.", "Simmer it for nine minutes, then cool it in cold water for two more."
    requests = [
        CorrectionRequest(f"Q{i}?", (short if i % 2 == 0 else long) + copy_model.marker(4)) for i in range(4)
    ]
    probe = Batches(pad_id=2)
    with copy_backend(copy_model, prompt_lookup="off") as reference:
        expected = [reference.correct([r])[0] for r in requests]
    with copy_backend(copy_model, max_batch_size=2, generation_kwargs={"logits_processor": [probe]}) as b:
        assert b.correct(requests) == expected
        assert b.batch_sizes == [2, 2]
        lengths = [sorted(len(row) for row in call) for call in probe.calls]
        assert lengths[0][1] - lengths[0][0] < 5 and lengths[1][1] - lengths[1][0] < 5, lengths
        assert max(lengths[0]) < min(lengths[1]), "the short rows together, then the long ones"


def test_the_batch_size_is_chosen_for_the_device_and_bounded_by_memory(tiny_model_dir: Any) -> None:
    with TransformersBackend(tiny_model_dir, device="cpu", max_new_tokens=4) as b:
        assert b.max_batch_size == BATCH_TARGETS["cpu"], "the device's target before loading"
        b.load()
        assert b.max_batch_size == BATCH_TARGETS["cpu"], "a tiny model fits the target"
        assert b.decoding_plan is not None and b.decoding_plan.max_batch_size == b.max_batch_size
    with TransformersBackend(tiny_model_dir, device="cpu", max_batch_size=3) as fixed:
        fixed.load()
        assert fixed.max_batch_size == 3
    kv = 2 * 32 * 8 * 128 * 2  # a 7B-class model in bf16: 128 KiB per token
    assert default_batch_size("cuda", kv_per_token=kv, row_tokens=2048, free_bytes=None) == 64
    assert default_batch_size("cuda", kv_per_token=kv, row_tokens=2048, free_bytes=8 << 30) == 8
    assert default_batch_size("cpu", kv_per_token=kv, row_tokens=2048, free_bytes=1 << 20) == 1
    bounds = continuous_bounds("cpu", kv_per_token=kv, free_bytes=64 << 30, context_length=4096)
    assert bounds.num_blocks * bounds.page_size * kv <= (1 << 30) + 4096 * kv, "CPU: at most 1 GiB"
    assert bounds.capacity_tokens >= 4096, "always room for one full-context request"


# -- compiled decoding and the plan -------------------------------------------------------------


def test_compiled_path_keeps_results_and_is_warmed_at_load(copy_model: Any) -> None:
    requests = [*copying(copy_model, [20, 40]), *rewriting(copy_model, [10])]
    with copy_backend(copy_model, prompt_lookup="off") as plain, copy_backend(copy_model, compiled="on") as b:
        b.load()
        compiled = b.engine.compiled
        assert compiled is not None and compiled.warmed_up, "warmed up at load, in the worker thread"
        assert compiled.generation_kwargs()["cache_implementation"] == "static"
        assert "compile_config" not in compiled.generation_kwargs(), "transformers compiles on accelerators"
        assert compiled.cache_length == 1024
        assert [b.correct([r])[0] for r in requests] == [plain.correct([r])[0] for r in requests]
        assert b.engine.modes["compiled"] == 3 and "prompt_lookup" not in b.engine.modes
        assert b.engine.idle_exit_s() is None, "compiled graphs belong to the worker thread"


def test_the_plan_follows_the_device() -> None:
    greedy = {"do_sample": False}
    auto = DecodingOptions()
    cuda = plan_decoding(auto, device="cuda", generation_kwargs=greedy, max_batch_size=64, threads=1)
    assert (cuda.scheduling, cuda.compiled, cuda.prompt_lookup) == ("continuous", True, "auto")
    cpu = plan_decoding(auto, device="cpu", generation_kwargs=greedy, max_batch_size=32, threads=2)
    assert (cpu.scheduling, cpu.compiled, cpu.prompt_lookup) == ("static", False, "auto")
    forced = {**greedy, "forced_eos_token_id": 1}
    kept = plan_decoding(auto, device="cuda", generation_kwargs=forced, max_batch_size=64, threads=1)
    assert kept.scheduling == "static" and any("forced_eos_token_id" in note for note in kept.notes)
    sampled = plan_decoding(
        auto, device="cpu", generation_kwargs={"do_sample": True}, max_batch_size=8, threads=1
    )
    assert sampled.prompt_lookup == "off", "prompt lookup is exact for greedy search only"
    eager = plan_decoding(
        auto,
        device="cuda",
        generation_kwargs=greedy,
        max_batch_size=8,
        threads=1,
        attn_implementation="eager",
    )
    assert eager.scheduling == "static"
    chosen = DecodingOptions(scheduling="static", compiled="off", prompt_lookup="off")
    overridden = plan_decoding(chosen, device="cuda", generation_kwargs=greedy, max_batch_size=8, threads=1)
    assert (overridden.scheduling, overridden.compiled, overridden.prompt_lookup) == ("static", False, "off")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scheduling": "fast"}, "scheduling"),
        ({"prompt_lookup": "yes"}, "prompt_lookup"),
        ({"compiled": True}, "compiled"),
        ({"threads": 0}, "threads"),
        ({"continuous_batching_config": {"blocks": 3}}, "continuous_batching_config"),
        ({"scheduling": "continuous", "generation_kwargs": {"forced_eos_token_id": 1}}, "scheduling"),
        ({"generation_kwargs": {"prompt_lookup_num_tokens": 5}}, "prompt_lookup="),
    ],
)
def test_bad_decoding_options_name_the_field(tiny_model_dir: Any, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TransformersBackend(tiny_model_dir, **kwargs)


def test_decoding_options_reach_the_backend_and_stay_local() -> None:
    from aligner_chain.options import AlignerOptions

    options = AlignerOptions("some/model", scheduling="static", prompt_lookup="off", compiled="on")
    backend = options.get_backend()
    assert isinstance(backend, TransformersBackend)
    assert backend.engine.decoding == DecodingOptions("static", "off", "on")
    with pytest.raises(ValueError, match="scheduling='continuous' is for a local model"):
        AlignerOptions("served", base_url="http://localhost:1/v1", scheduling="continuous")
    with pytest.raises(ValueError, match="prompt_lookup"):
        AlignerOptions("some/model", prompt_lookup="sometimes")
