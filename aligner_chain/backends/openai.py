"""An Aligner served by an OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, TGI).

The backend renders the Aligner prompt itself and calls ``POST {base_url}/completions`` (the plain
completions API, not chat: the Aligner prompt is a raw template), greedy by default. Requests run
concurrently (at most ``max_concurrency`` at a time), transient errors are retried with exponential
backoff, and every request gets its own result: one request failing never fails the others.

Control tokens: with ``tokenizer`` (the Aligner's tokenizer, a hub id or a local directory) the prompt
is sent as token ids encoded by :func:`aligner_chain.tokenization.encode_prompt`, so text such as
``</s>`` inside an answer stays text. Without it the prompt is sent as text and the server's tokenizer
decides; most servers then turn such text into control tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, Retrying

from aligner_chain.arguments import strict_keywords
from aligner_chain.backends.availability import check_source, local_files_only
from aligner_chain.backends.base import AlignerBackend, CorrectionRequest, CorrectionResult
from aligner_chain.backends.completions_api import (
    Payload,
    StreamDecoder,
    api_root,
    raise_if_transient,
    result_from_response,
)
from aligner_chain.backends.deadlines import DeadlineExceeded, abefore, aread_before, before
from aligner_chain.errors import CorrectionFailed
from aligner_chain.prompts import (
    DEFAULT_TEMPLATE,
    Granularity,
    format_completion,
    format_prompt,
    get_template,
)
from aligner_chain.retry import (
    TransientStatus,
    describe_error,
    is_transient_error,
    is_transient_status,
    retry_options,
)
from aligner_chain.tokenization import encode_prompt, encode_text

__all__ = ["API_KEY_ENV", "OpenAIBackend"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "ALIGNER_API_KEY"
_T = TypeVar("_T")
_text_prompt_warned = False


class OpenAIBackend(AlignerBackend):
    """Correct with an Aligner behind an OpenAI-compatible ``/v1/completions`` endpoint.

    Args:
        model: the model name the server serves (for vLLM, the ``--served-model-name`` or the path;
            a LoRA adapter is served under its ``--lora-modules`` name).
        base_url: the server's API root, e.g. ``http://localhost:8000/v1``; a bare
            ``http://host:port`` gets ``/v1`` appended.
        api_key: sent as a bearer token; default the ``ALIGNER_API_KEY`` environment variable.
        template: a template name or string; ``None`` means ``"aligner-v1"`` (a remote model has no
            local ``aligner_config.json`` to read).
        max_new_tokens: ``max_tokens`` of each request. When the server says the prompt plus that
            does not fit its context (and how long both are), the request is sent again with the
            room that is left, unless that is less than the answer itself takes (``"too_long"``,
            skipped). A correction cut off at its budget fails with reason ``"truncated"``.
        timeout: a total deadline in seconds for each attempt, from connecting to the last byte (a
            server that hangs or drips is cut off). Worst case per call: ``(max_retries + 1) *
            timeout`` plus at most ``max_retries * max_backoff`` of waiting between attempts.
        max_retries: retries after the first attempt, for transient errors (connection errors,
            timeouts, 408, 409, 425, 429, 5xx: :mod:`aligner_chain.retry`). Others are not retried.
        max_concurrency: requests in flight at once per batch (and connections per client).
        tokenizer: the Aligner's tokenizer (hub id, local directory, or a loaded tokenizer); when given,
            prompts go out as token ids so answer text can never become a control token (for servers
            that take token-id prompts: vLLM, SGLang).
        generation_kwargs: extra request fields (``temperature``, ``top_p``, ``seed``, ``stop``, ...)
            merged over the defaults ``temperature=0``.
        retry_backoff: first backoff in seconds (doubles per retry, with jitter).
        max_backoff: longest backoff in seconds (also caps a server's ``Retry-After``).
        trust_remote_code: passed to ``AutoTokenizer`` when ``tokenizer`` is a name or directory.

    Results: ``ok`` with the parsed correction; ``skipped("too_long")``; ``failed("truncated")``;
    ``failed("server_error")`` for an HTTP error (after retries where transient); ``failed("backend_error")``
    when the server cannot be reached, misses its deadline or its answer cannot be read.
    """

    @strict_keywords
    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        template: str | None = None,
        max_new_tokens: int = 1024,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 8,
        tokenizer: str | os.PathLike[str] | Any | None = None,
        generation_kwargs: Mapping[str, Any] | None = None,
        retry_backoff: float = 0.5,
        max_backoff: float = 8.0,
        trust_remote_code: bool = False,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the non-empty name the server serves the Aligner under")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        retry_options(max_retries=max_retries, backoff=retry_backoff, max_backoff=max_backoff)  # checks them
        self._model = model
        self.base_url = api_root(base_url)
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._template = get_template(template if template is not None else DEFAULT_TEMPLATE)
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.generation_kwargs: dict[str, Any] = {"temperature": 0.0, **(generation_kwargs or {})}
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self._tokenizer_source = tokenizer
        self._tokenizer: Any | None = None if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        self._trust_remote_code = trust_remote_code
        self._lock = threading.Lock()  # guards lazy set-up and the (not thread-safe) tokenizer
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self._model!r}, base_url={self.base_url!r})"

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def template_name(self) -> str:
        return self._template.name

    @property
    def granularity(self) -> Granularity:
        return self._template.granularity

    @property
    def endpoint(self) -> str:
        """The completions URL requests go to."""
        return self.base_url + "/completions"

    def served_models(self) -> list[str]:
        """The model names the server lists at ``GET {base_url}/models``.

        Raises:
            httpx.HTTPError: the server cannot be reached, or answers with an error status.
        """
        response = httpx.get(
            self.base_url + "/models", headers=self._headers(), timeout=min(self.timeout, 30)
        )
        response.raise_for_status()
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):  # not a model list: nothing listed
            return []
        models = data if isinstance(data, list) else []
        return [str(m["id"]) for m in models if isinstance(m, dict) and "id" in m]

    # -- requests ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _payload(self, request: CorrectionRequest, *, stream: bool) -> Payload:
        text = format_prompt(request.question, request.answer, self._template, prefix=request.prefix)
        if self._tokenizer_source is None:
            _note_text_prompts()
            return Payload(self._body(text, stream), text, request.answer, None)
        with self._lock:
            tokenizer = self._load_tokenizer()
            ids = encode_prompt(tokenizer, text)
            needed = len(encode_text(tokenizer, format_completion(request.answer))) + 1
        return Payload(self._body(ids, stream), text, request.answer, needed)

    def _body(self, prompt: str | list[int], stream: bool) -> dict[str, Any]:
        return {
            **self.generation_kwargs,
            "model": self._model,
            "prompt": prompt,
            "max_tokens": self.max_new_tokens,
            "stream": stream,
        }

    def _load_tokenizer(self) -> Any:
        # Called with self._lock held.
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            source = self._tokenizer_source
            assert isinstance(source, (str, os.PathLike))  # a loaded tokenizer is set in __init__
            name = os.fspath(source)
            check_source(name, field="tokenizer")
            self._tokenizer = AutoTokenizer.from_pretrained(
                name, trust_remote_code=self._trust_remote_code, local_files_only=local_files_only(name)
            )
        return self._tokenizer

    def _retry_options(self) -> dict[str, Any]:
        return retry_options(
            max_retries=self.max_retries,
            backoff=self.retry_backoff,
            max_backoff=self.max_backoff,
            describe="completions request",
        )

    # -- sync -------------------------------------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self.timeout,
                    headers=self._headers(),
                    limits=httpx.Limits(max_connections=self.max_concurrency),
                )
            return self._client

    def close(self) -> None:
        """Close the pooled HTTP connections (the backend reopens them if used again)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def correct(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        payloads = [self._payload(request, stream=False) for request in requests]
        if not payloads:
            return []
        client = self._sync_client()
        if len(payloads) == 1:
            return [self._post_one(client, payloads[0])]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return list(pool.map(lambda payload: self._post_one(client, payload), payloads))

    def _post_one(self, client: httpx.Client, payload: Payload) -> CorrectionResult:
        result = self._post_body(client, payload.body)
        retry = payload.with_room(result)
        return result if retry is None else self._post_body(client, retry)

    def _post_body(self, client: httpx.Client, body: dict[str, Any]) -> CorrectionResult:
        def attempt() -> tuple[int, bytes]:
            deadline = time.monotonic() + self.timeout
            with client.stream("POST", self.endpoint, json=body) as response:
                content = b"".join(before(deadline, response.iter_bytes()))
            raise_if_transient(response.status_code, response.headers, content)
            return response.status_code, content

        try:
            status, content = Retrying(**self._retry_options())(attempt)
        except Exception as err:
            return self._exhausted(err)
        return result_from_response(status, content)

    def stream(self, request: CorrectionRequest) -> Iterator[str]:
        payload = self._payload(request, stream=True)
        client = self._sync_client()
        deadline = 0.0

        def attempt() -> httpx.Response:
            nonlocal deadline
            deadline = time.monotonic() + self.timeout
            built = client.build_request("POST", self.endpoint, json=payload.body)
            response = client.send(built, stream=True)
            if is_transient_status(response.status_code):
                content = b"".join(before(deadline, response.iter_bytes()))
                response.close()
                raise_if_transient(response.status_code, response.headers, content)
            return response

        try:
            response = Retrying(**self._retry_options())(attempt)
        except Exception as err:
            self._exhausted(err).text_or_raise()
            raise  # not reached: an exhausted request is never ok
        try:
            if response.status_code >= 400:
                content = b"".join(before(deadline, response.iter_bytes()))
                result_from_response(response.status_code, content).text_or_raise()
            decoder = StreamDecoder()
            try:
                for line in before(deadline, response.iter_lines()):
                    if delta := decoder.feed(line):
                        yield delta
                    if decoder.done:
                        break
            except httpx.HTTPError as err:
                raise CorrectionFailed("backend_error", f"stream broke off: {describe_error(err)}") from err
            decoder.finish()
        finally:
            response.close()

    # -- async ------------------------------------------------------------------------------------

    def _async_client(self) -> httpx.AsyncClient:
        # One client per call: an AsyncClient's connections belong to the event loop that opened them.
        return httpx.AsyncClient(
            timeout=self.timeout,
            headers=self._headers(),
            limits=httpx.Limits(max_connections=self.max_concurrency),
        )

    async def acorrect(self, requests: Sequence[CorrectionRequest]) -> list[CorrectionResult]:
        payloads = [self._payload(request, stream=False) for request in requests]
        if not payloads:
            return []
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self._async_client() as client:

            async def one(payload: Payload) -> CorrectionResult:
                async with semaphore:
                    result = await self._apost_body(client, payload.body)
                    retry = payload.with_room(result)
                    return result if retry is None else await self._apost_body(client, retry)

            return list(await asyncio.gather(*(one(payload) for payload in payloads)))

    async def _apost_body(self, client: httpx.AsyncClient, body: dict[str, Any]) -> CorrectionResult:
        async def attempt() -> tuple[int, bytes]:
            try:
                response = await asyncio.wait_for(client.post(self.endpoint, json=body), self.timeout)
            except asyncio.TimeoutError as err:
                raise DeadlineExceeded(self.timeout) from err
            raise_if_transient(response.status_code, response.headers, response.content)
            return response.status_code, response.content

        try:
            status: int
            content: bytes
            status, content = await AsyncRetrying(**self._retry_options())(attempt)
        except Exception as err:
            return self._exhausted(err)
        return result_from_response(status, content)

    async def astream(self, request: CorrectionRequest) -> AsyncIterator[str]:
        payload = self._payload(request, stream=True)
        async with self._async_client() as client:
            deadline = 0.0

            async def attempt() -> httpx.Response:
                nonlocal deadline
                deadline = time.monotonic() + self.timeout
                built = client.build_request("POST", self.endpoint, json=payload.body)
                try:
                    response = await asyncio.wait_for(client.send(built, stream=True), self.timeout)
                except asyncio.TimeoutError as err:
                    raise DeadlineExceeded(self.timeout) from err
                if is_transient_status(response.status_code):
                    content = await aread_before(deadline, response)
                    await response.aclose()
                    raise_if_transient(response.status_code, response.headers, content)
                return response

            try:
                response: httpx.Response = await AsyncRetrying(**self._retry_options())(attempt)
            except Exception as err:
                self._exhausted(err).text_or_raise()
                raise  # not reached: an exhausted request is never ok
            try:
                if response.status_code >= 400:
                    content = await aread_before(deadline, response)
                    result_from_response(response.status_code, content).text_or_raise()
                decoder = StreamDecoder()
                try:
                    async for line in abefore(deadline, response.aiter_lines()):
                        if delta := decoder.feed(line):
                            yield delta
                        if decoder.done:
                            break
                except httpx.HTTPError as err:
                    raise CorrectionFailed(
                        "backend_error", f"stream broke off: {describe_error(err)}"
                    ) from err
                decoder.finish()
            finally:
                await response.aclose()

    # -- errors -----------------------------------------------------------------------------------

    def _exhausted(self, err: BaseException) -> CorrectionResult:
        """The result for a request that raised (after its retries, where the error was transient)."""
        attempts = f" after {self.max_retries + 1} attempts" if is_transient_error(err) else ""
        if isinstance(err, TransientStatus):
            return CorrectionResult.failed("server_error", f"{err}{attempts}")
        if isinstance(err, httpx.HTTPError):
            return CorrectionResult.failed(
                "backend_error", f"{describe_error(err)} calling {self.endpoint}{attempts}"
            )
        if isinstance(err, Exception):
            return CorrectionResult.failed("backend_error", describe_error(err))
        raise err


# -- helpers ----------------------------------------------------------------------------------------


def _note_text_prompts() -> None:
    global _text_prompt_warned
    if not _text_prompt_warned:
        _text_prompt_warned = True
        logger.info(
            "OpenAIBackend sends prompts as text: the server's tokenizer decides whether text such as "
            "'</s>' in an answer becomes a control token; pass tokenizer=... to send token ids instead"
        )
