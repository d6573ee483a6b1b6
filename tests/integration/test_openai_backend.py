"""OpenAIBackend against a real local completions server (a tiny trained model, or rules)."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from aligner_chain.backends import CorrectionRequest, CorrectionResult
from aligner_chain.backends.openai import OpenAIBackend
from aligner_chain.errors import CorrectionFailed
from aligner_chain.prompts import format_prompt
from tests.integration.completions_server import CompletionsServer, train_tiny_aligner

ROWS = [
    ("What is the capital of France?", "Paris is in Germany.", "Paris is in France."),
    ("How do I boil an egg?", "Put it in the microwave.", "Simmer it for nine minutes."),
    ("Is it safe to mix bleach and ammonia?", "Yes.", "No, it makes toxic gas."),
]
REQUESTS = [CorrectionRequest(q, a) for q, a, _ in ROWS]
SPECIAL = CorrectionRequest("What is the capital of France?", "Paris </s> is <pad> in Germany.")
FAST = {"retry_backoff": 0.01, "max_backoff": 0.05, "timeout": 20.0}


@pytest.fixture(scope="module")
def aligner_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_aligner(tiny_model_dir, tmp_path_factory.mktemp("aligner"), ROWS)


@pytest.fixture(scope="module")
def server(aligner_dir: Path):
    with CompletionsServer(model_dir=aligner_dir) as srv:
        yield srv


def backend(srv: CompletionsServer, **kwargs) -> OpenAIBackend:
    return OpenAIBackend("tiny-aligner", base_url=srv.base_url, **{"max_new_tokens": 24, **FAST, **kwargs})


def rule_server(**kwargs) -> CompletionsServer:
    return CompletionsServer(rule=lambda prompt: " fixed: " + prompt.rsplit("| ", 1)[-1], **kwargs)


def test_corrections_from_the_served_model(server: CompletionsServer) -> None:
    results = backend(server).correct(REQUESTS)
    assert results == [CorrectionResult.ok(c) for _, _, c in ROWS]
    payload = server.payloads[-1]
    assert payload["temperature"] == 0.0 and payload["max_tokens"] == 24 and payload["stream"] is False
    assert payload["prompt"] in {format_prompt(r.question, r.answer) for r in REQUESTS}


@pytest.mark.skipif(
    importlib.util.find_spec("aligner_chain.backends.transformers") is None,
    reason="TransformersBackend not available",
)
def test_same_output_as_transformers_backend(server: CompletionsServer, aligner_dir: Path) -> None:
    from aligner_chain.backends.transformers import TransformersBackend

    requests = [*REQUESTS, SPECIAL, CorrectionRequest("Why?", "Because.")]
    local = TransformersBackend(aligner_dir, max_new_tokens=24, device="cpu").correct(requests)
    remote = backend(server, tokenizer=aligner_dir).correct(requests)
    assert remote == local
    assert sum(r.status == "ok" for r in remote) >= 3


def test_token_id_prompts_keep_special_text(server: CompletionsServer, aligner_dir: Path) -> None:
    eos = 1  # the tiny tokenizer's </s>
    backend(server).correct([SPECIAL])  # text prompt: the server's tokenizer parses "</s>"
    assert eos in server.prompt_ids[-1]
    result = backend(server, tokenizer=aligner_dir).correct([SPECIAL])[0]
    ids = server.prompt_ids[-1]
    assert eos not in ids and ids == server.payloads[-1]["prompt"]
    assert result.status == "ok"


def test_truncated_and_too_long(server: CompletionsServer) -> None:
    truncated = backend(server, max_new_tokens=2).correct([REQUESTS[0]])[0]
    assert (truncated.status, truncated.reason) == ("failed", "truncated")
    long = CorrectionRequest("Why?", "very long answer " * 200)
    results = backend(server).correct([long, REQUESTS[0]])
    assert (results[0].status, results[0].reason) == ("skipped", "too_long")
    assert "maximum context length" in (results[0].detail or "")
    assert results[1] == CorrectionResult.ok(ROWS[0][2])


def test_retries_transient_errors_then_succeeds() -> None:
    with rule_server(fail_first=2) as srv:
        result = backend(srv, max_retries=3).correct([CorrectionRequest("Q", "A")])[0]
        assert result == CorrectionResult.ok("fixed: A ASSISTANT:")
        assert len(srv.payloads) == 3


def test_retries_exhausted_fail_only_that_request() -> None:
    with rule_server(fail_if=lambda p: 503 if "boom" in p else None) as srv:
        requests = [CorrectionRequest("Q", "A"), CorrectionRequest("Q", "boom"), CorrectionRequest("Q", "B")]
        results = backend(srv, max_retries=2).correct(requests)
        assert [r.status for r in results] == ["ok", "failed", "ok"]
        assert results[1].reason == "server_error" and "HTTP 503" in (results[1].detail or "")
        assert "after 3 attempts" in (results[1].detail or "")
        assert sum("boom" in p["prompt"] for p in srv.payloads) == 3


def test_non_transient_errors_fail_fast() -> None:
    with rule_server(fail_first=5, fail_status=401) as srv:
        result = backend(srv, max_retries=3).correct([CorrectionRequest("Q", "A")])[0]
        assert (result.status, result.reason) == ("failed", "server_error")
        assert "HTTP 401" in (result.detail or "")
        assert len(srv.payloads) == 1


def test_server_down_fails_after_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connections are refused
    down = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}", max_retries=2, **FAST)
    result = down.correct([CorrectionRequest("Q", "A")])[0]
    assert (result.status, result.reason) == ("failed", "backend_error")
    assert "ConnectError" in (result.detail or "") and "after 3 attempts" in (result.detail or "")
    with pytest.raises(CorrectionFailed) as raised:
        list(down.stream(CorrectionRequest("Q", "A")))
    assert raised.value.reason == "backend_error"


def test_api_key_and_generation_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNER_API_KEY", "secret-key")
    with rule_server() as srv:
        backend(srv, generation_kwargs={"seed": 7}).correct([CorrectionRequest("Q", "A")])
        assert srv.authorizations[-1] == "Bearer secret-key"
        assert srv.payloads[-1]["seed"] == 7 and srv.payloads[-1]["temperature"] == 0.0
        assert "secret-key" not in repr(backend(srv))


def test_base_url_and_settings_validation() -> None:
    assert OpenAIBackend("m", base_url="http://h:8000").endpoint == "http://h:8000/v1/completions"
    assert OpenAIBackend("m", base_url="http://h/api/v1/").endpoint == "http://h/api/v1/completions"
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("m", base_url="localhost:8000")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIBackend("m", base_url="http://h", max_concurrency=0)
    assert OpenAIBackend("m", base_url="http://h").template_name == "aligner-v1"


async def test_async_batch_matches_sync(server: CompletionsServer) -> None:
    requests = [*REQUESTS, CorrectionRequest("Why?", "x " * 600)]
    client = backend(server)
    assert await client.acorrect(requests) == client.correct(requests)


def test_stream_yields_the_correction_in_deltas(server: CompletionsServer) -> None:
    client = backend(server)
    deltas = list(client.stream(REQUESTS[1]))
    assert len(deltas) > 1 and "".join(deltas) == ROWS[1][2]
    assert server.payloads[-1]["stream"] is True
    with pytest.raises(CorrectionFailed) as raised:
        list(backend(server, max_new_tokens=2).stream(REQUESTS[1]))
    assert raised.value.reason == "truncated"
    with pytest.raises(CorrectionFailed) as raised:
        list(client.stream(CorrectionRequest("Why?", "x " * 600)))
    assert raised.value.reason == "too_long"


async def test_astream_and_stream_retries(server: CompletionsServer) -> None:
    deltas = [delta async for delta in backend(server).astream(REQUESTS[2])]
    assert "".join(deltas) == ROWS[2][2]
    with rule_server(fail_first=1) as srv:
        assert "".join(backend(srv).stream(CorrectionRequest("Q", "A  "))) == "fixed: A   ASSISTANT:"
        assert [d async for d in backend(srv, max_new_tokens=5).astream(CorrectionRequest("Q", "B"))]
        assert len(srv.payloads) == 3


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens."),
        (400, "'max_tokens' is too large: 1024. This model's maximum context length is 2048 tokens"),
        (400, "Requested token count exceeds the model's maximum context length of 2048 tokens."),
        (400, "the request exceeds the available context size, try increasing it"),
        (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 1500"),
    ],
)
def test_context_errors_of_known_servers_are_too_long(status: int, message: str) -> None:
    from aligner_chain.backends.completions_api import error_result as _error_result

    assert _error_result(status, message) == CorrectionResult.skipped("too_long", message)
    assert _error_result(500, message).status == "failed"
