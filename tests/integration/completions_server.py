"""A real OpenAI-compatible ``/v1/completions`` server for tests, on 127.0.0.1 and an ephemeral port.

It generates greedily with a real transformers model (``model_dir``) or with a rule function, takes
text or token-id prompts, streams Server-Sent Events, and can be told to misbehave: fail the first N
requests with a status, reject every prompt as too long, or always stop at the length limit.

Like vLLM, a text prompt is tokenized with the tokenizer's defaults, so text such as ``</s>`` in it
becomes a control token; a token-id prompt is used as it is.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["CompletionsServer", "Generation", "train_tiny_aligner"]


@dataclass
class Generation:
    """What the server generated: text pieces (one per token) and why it stopped."""

    pieces: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)


Rule = Callable[[Any], str]


class CompletionsServer:
    """Serve completions until :meth:`stop` (or the end of a ``with`` block).

    Args:
        model_dir: a transformers model directory to generate with (greedy).
        rule: instead of a model, ``rule(prompt) -> completion text`` (prompt as received).
        fail_first: answer the first N requests with ``fail_status`` (to test retries).
        fail_status: the status used by ``fail_first``.
        context_limit: reject prompts whose length plus ``max_tokens`` exceeds it with vLLM's 400
            message (tokens with a model, characters with a rule); ``0`` rejects everything.
        force_length: always report ``finish_reason: "length"``.
        fail_if: ``fail_if(prompt) -> status | None``: answer that prompt with that status, every time.
        retry_after: with ``fail_first``, the ``Retry-After`` header (seconds) of those answers.
        fault: misbehave on every request: ``"hang"`` (never answer), ``"drip"`` (send a whole answer
            one byte every 0.2 s), ``"malformed"`` (200 with a body that is not JSON) or ``"drop"``
            (close the connection without a word).
    """

    def __init__(
        self,
        *,
        model_dir: str | Path | None = None,
        rule: Rule | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        context_limit: int | None = None,
        force_length: bool = False,
        fail_if: Callable[[Any], int | None] | None = None,
        retry_after: float | None = None,
        fault: str | None = None,
    ) -> None:
        if (model_dir is None) == (rule is None):
            raise ValueError("give exactly one of model_dir and rule")
        self.rule = rule
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.context_limit = context_limit
        self.force_length = force_length
        self.fail_if = fail_if
        self.retry_after = retry_after
        self.fault = fault
        self.released = threading.Event()  # set on stop: hanging handlers return
        self.payloads: list[dict[str, Any]] = []  # every request body received, in order
        self.prompt_ids: list[list[int]] = []  # with a model: the token ids each prompt became
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        if model_dir is not None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self._model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
            if context_limit is None:
                self.context_limit = int(self._model.config.max_position_embeddings)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> CompletionsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> CompletionsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- generation --------------------------------------------------------------------------------

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return True
            return False

    def prompt_length(self, prompt: Any) -> int:
        if self._tokenizer is None:
            return len(prompt)
        return len(self._encode(prompt))

    def _encode(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list):
            if not all(isinstance(i, int) for i in prompt):
                raise ValueError("prompt lists must hold token ids (one prompt per request here)")
            return list(prompt)
        ids: list[int] = self._tokenizer(prompt)["input_ids"]  # a server's default: specials parsed
        return ids

    def generate(self, prompt: Any, max_tokens: int) -> Generation:
        if self._model is None:
            assert self.rule is not None
            text = self.rule(prompt)
            pieces = [text[i : i + 3] for i in range(0, len(text), 3)] or [""]
            return Generation(pieces, "length" if self.force_length else "stop")
        import torch

        ids = self._encode(prompt)
        with self._lock:  # one generate at a time, like one model on one device
            self.prompt_ids.append(ids)
            output = self._model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self._tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
        eos = self._tokenizer.eos_token_id
        stopped = bool(output) and output[-1] == eos
        tokens = output[:-1] if stopped else output
        pieces, previous = [], ""
        for n in range(1, len(tokens) + 1):  # incremental decode, as servers stream
            decoded = self._tokenizer.decode(tokens[:n], skip_special_tokens=True)
            pieces.append(decoded[len(previous) :])
            previous = decoded
        reason = "stop" if stopped and not self.force_length else "length"
        return Generation(pieces, reason)


def _make_handler(server: CompletionsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            payload = json.loads(body)
            with server._lock:
                server.payloads.append(payload)
                server.authorizations.append(self.headers.get("Authorization"))
            if server.fault is not None:
                self._misbehave(server.fault, payload)
                return
            if server._take_failure():
                headers = {"Retry-After": f"{server.retry_after:g}"} if server.retry_after is not None else {}
                self._json(
                    server.fail_status, {"error": {"message": "server overloaded, try later"}}, headers
                )
                return
            status = server.fail_if(payload["prompt"]) if server.fail_if is not None else None
            if status is not None:
                self._json(status, {"error": {"message": f"refused with {status}"}})
                return
            prompt, max_tokens = payload["prompt"], int(payload.get("max_tokens", 16))
            limit = server.context_limit
            if limit is not None:
                length = server.prompt_length(prompt)
                if length + max_tokens > limit:
                    message = (
                        f"This model's maximum context length is {limit} tokens. However, you requested "
                        f"{length + max_tokens} tokens ({length} in the messages, {max_tokens} in the "
                        "completion). Please reduce the length of the messages or completion."
                    )
                    self._json(400, {"object": "error", "message": message, "type": "BadRequestError"})
                    return
            generation = server.generate(prompt, max_tokens)
            if payload.get("stream"):
                self._stream(generation)
            else:
                choice = {"index": 0, "text": generation.text, "finish_reason": generation.finish_reason}
                self._json(200, {"object": "text_completion", "model": payload["model"], "choices": [choice]})

        def _misbehave(self, fault: str, payload: dict[str, Any]) -> None:
            if fault == "hang":
                server.released.wait(60)
                self.close_connection = True
            elif fault == "drop":
                self.close_connection = True  # no status line, no body
            elif fault == "malformed":
                raw = b"<html>502 Bad Gateway</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            elif fault == "drip":
                choice = {"index": 0, "text": " fixed", "finish_reason": "stop"}
                raw = json.dumps({"object": "text_completion", "choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                for byte in raw:
                    if server.released.wait(0.2):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                raise ValueError(f"unknown fault {fault!r}")

        def _json(self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _stream(self, generation: Generation) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for event in _events(generation.pieces, generation.finish_reason):
                self.wfile.write(f"data: {event}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def _events(pieces: Sequence[str], finish_reason: str) -> Iterator[str]:
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice = {"index": 0, "text": piece, "finish_reason": finish_reason if last else None}
        yield json.dumps({"object": "text_completion", "choices": [choice]})
    if not pieces:
        yield json.dumps(
            {
                "object": "text_completion",
                "choices": [{"index": 0, "text": "", "finish_reason": finish_reason}],
            }
        )


def train_tiny_aligner(
    base_dir: str | Path, output_dir: str | Path, rows: Sequence[tuple[str, str, str]], *, steps: int = 40
) -> Path:
    """Fit a tiny random model on (question, answer, correction) rows until it reproduces them and
    stops with EOS, so corrections come back ``ok`` (a random model never stops). About a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aligner_chain.prompts import format_completion, format_prompt
    from aligner_chain.tokenization import encode_completion, encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy 2-core machine is far faster on one thread
    try:
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        examples = []
        for question, answer, correction in rows:
            prompt = encode_prompt(tokenizer, format_prompt(question, answer))
            completion = encode_completion(tokenizer, format_completion(correction))
            examples.append(
                (torch.tensor([prompt + completion]), torch.tensor([[-100] * len(prompt) + completion]))
            )
        for _ in range(steps):
            for input_ids, labels in examples:
                model(input_ids=input_ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    output = Path(output_dir)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    return output
