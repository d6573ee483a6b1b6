"""A local causal LM as a LangChain chat model: the upstream that bootstrapping trains and re-runs.

The prompt format is one shared contract between :mod:`training.bootstrap.upstream_trainer` (which writes
``upstream_config.json`` next to the trained weights) and :class:`LocalUpstream` (which reads it),
so a trained upstream is always served the way it was trained:

* ``"plain"``: ``"Question: {question}\\nAnswer:"`` (or your template) and the answer after a space,
  ending with EOS; for base models without a chat template. Only the last human message is used.
* ``"chat"``: the tokenizer's own chat template over the whole conversation.

Generation is greedy, through the same local-model worker as the Aligner
(:mod:`aligner_chain.backends.local_model`). As a chat model it reports ``usage_metadata`` and
``response_metadata["model_name"]``, streams its answer as it is generated, and takes ``stop`` and a
``max_tokens`` at most ``max_new_tokens`` per call.
"""

from __future__ import annotations

import json
import string
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from aligner_chain.backends.generation import Generation, GenerationRequest
from aligner_chain.backends.local_model import LocalModel
from aligner_chain.backends.model_sources import load_tokenizer
from aligner_chain.tokenization import encode_prompt

__all__ = [
    "PLAIN_TEMPLATE",
    "UPSTREAM_CONFIG_NAME",
    "LocalUpstream",
    "UpstreamFormat",
    "load_upstream_format",
    "resolve_upstream_format",
    "save_upstream_format",
]

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
UPSTREAM_CONFIG_NAME = "upstream_config.json"


@dataclass(frozen=True)
class UpstreamFormat:
    """How an upstream model sees a question: ``kind`` ``"plain"`` (``template`` with ``{question}``)
    or ``"chat"`` (the tokenizer's chat template)."""

    kind: Literal["plain", "chat"] = "plain"
    template: str = PLAIN_TEMPLATE

    def __post_init__(self) -> None:
        if self.kind not in ("plain", "chat"):
            raise ValueError(f"upstream format kind must be 'plain' or 'chat', got {self.kind!r}")
        if self.kind == "plain":
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
            if fields != {"question"}:
                raise ValueError(
                    "upstream prompt template must contain exactly the field {question}, got "
                    f"{sorted(fields)}"
                )
            if self.template != self.template.rstrip():
                raise ValueError(
                    "upstream prompt template ends with whitespace; end it on a token boundary such as "
                    "'Answer:' (the answer starts with a space)"
                )

    def render(self, question: str) -> str:
        """The plain prompt for ``question``."""
        return self.template.format(question=question)

    def sft_row(self, question: str, completion: str) -> dict[str, Any]:
        """A TRL prompt-completion row (standard for ``plain``, conversational for ``chat``)."""
        if self.kind == "chat":
            return {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": completion}],
            }
        return {"prompt": self.render(question), "completion": " " + completion}

    def preference_row(self, question: str, chosen: str, rejected: str) -> dict[str, Any]:
        """A TRL preference row (standard for ``plain``, conversational for ``chat``)."""
        if self.kind == "chat":
            return {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        return {"prompt": self.render(question), "chosen": " " + chosen, "rejected": " " + rejected}


def resolve_upstream_format(
    tokenizer: Any, use_chat_template: bool | None = None, template: str | None = None
) -> UpstreamFormat:
    """``use_chat_template=None`` picks ``"chat"`` when the tokenizer has a chat template."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has_chat:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template; pass False (plain)")
    chat = has_chat if use_chat_template is None else use_chat_template
    return UpstreamFormat("chat") if chat else UpstreamFormat("plain", template or PLAIN_TEMPLATE)


def save_upstream_format(directory: str | Path, fmt: UpstreamFormat, **facts: Any) -> Path:
    """Write ``upstream_config.json`` (the format plus free-form training facts) into ``directory``."""
    path = Path(directory) / UPSTREAM_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(fmt), "extra": facts}, indent=2, ensure_ascii=False) + "\n")
    return path


def load_upstream_format(directory: str | Path) -> UpstreamFormat | None:
    """The format recorded in ``directory``'s ``upstream_config.json``; ``None`` when absent."""
    path = Path(directory) / UPSTREAM_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return UpstreamFormat(kind=data["kind"], template=data.get("template", PLAIN_TEMPLATE))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid {UPSTREAM_CONFIG_NAME} ({err}); it needs a 'kind'") from err


_CALL_OPTIONS = frozenset({"max_tokens", "temperature"})


class LocalUpstream(BaseChatModel):
    """A local (or hub) causal LM answering greedily, as a LangChain chat model.

    ``model`` is a directory or hub id; a directory holding ``adapter_config.json`` is loaded as a
    PEFT adapter on its base. ``prompt_format=None`` reads ``upstream_config.json`` from the model
    directory, else picks the chat template when the tokenizer has one, else the plain template.
    Generation goes through :class:`~aligner_chain.backends.local_model.LocalModel`: concurrent calls
    are batched by its one worker thread. ``generation_kwargs`` are extra ``generate`` arguments
    (e.g. ``min_new_tokens``).

    Answers carry ``usage_metadata`` (the prompt's tokens and the tokens generated) and
    ``response_metadata`` ``model_name`` and ``finish_reason`` (``"stop"``, or ``"length"`` when cut
    at the token budget). ``stream`` yields
    the answer as it is generated. Per call: ``stop`` cuts the answer before the first stop string,
    ``max_tokens`` lowers the token budget (at most ``max_new_tokens``), ``temperature`` may only be
    ``0`` (decoding is greedy); other call arguments are a ``TypeError``.
    """

    model: str
    max_new_tokens: int = Field(default=256, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int | None = Field(default=None, gt=0)
    prompt_format: UpstreamFormat | None = None
    trust_remote_code: bool = False
    generation_kwargs: dict[str, Any] | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _engine: LocalModel | None = PrivateAttr(default=None)
    _format: UpstreamFormat | None = PrivateAttr(default=None)
    _counter: Any = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _count_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "aligner-chain-local-upstream"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_new_tokens": self.max_new_tokens}

    def _loaded(self) -> tuple[LocalModel, UpstreamFormat]:
        with self._load_lock:
            if self._engine is None:
                self._engine = LocalModel(
                    self.model,
                    max_new_tokens=self.max_new_tokens,
                    device=self.device,
                    dtype=self.dtype,
                    trust_remote_code=self.trust_remote_code,
                    max_batch_size=self.max_batch_size,
                    generation_kwargs=self.generation_kwargs,
                )
            engine = self._engine
        engine.load()
        if self._format is None:
            path = Path(self.model)
            fmt = self.prompt_format or (load_upstream_format(path) if path.is_dir() else None)
            self._format = fmt or resolve_upstream_format(engine.tokenizer)
        return engine, self._format

    def _count(self, text: str) -> list[int]:
        """Token ids of ``text`` by a copy of the tokenizer (the worker's own is not thread-safe),
        to cut an answer at a call's ``max_tokens``."""
        with self._count_lock:
            if self._counter is None:
                engine, _ = self._loaded()
                self._counter = load_tokenizer(
                    engine.sources(), revision=None, trust_remote_code=self.trust_remote_code
                )
            ids: list[int] = self._counter(text, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
            return ids

    def _cut_to(self, text: str, budget: int) -> str:
        ids = self._count(text)
        if len(ids) <= budget:
            return text
        with self._count_lock:
            cut: str = self._counter.decode(ids[:budget], skip_special_tokens=True)
        return cut

    def _generate_batch(self, batch: list[list[BaseMessage]]) -> list[_Answered]:
        """Answer several conversations (one request each to the model's worker; raises when the
        model could not answer one)."""
        engine, fmt = self._loaded()
        prompts = [_Prompt(fmt, messages) for messages in batch]
        generations = engine.submit([GenerationRequest(prompt) for prompt in prompts]).result()
        return [_Answered(_answer(g), g, p.tokens) for g, p in zip(generations, prompts, strict=True)]

    def answer_batch(self, questions: list[str]) -> list[str]:
        """Answer several questions in one batched ``generate`` (no LangChain run)."""
        return [answered.text for answered in self._generate_batch([[HumanMessage(q)] for q in questions])]

    def _budget(self, kwargs: dict[str, Any]) -> int:
        """The call's token budget; checks the call arguments."""
        unknown = sorted(set(kwargs) - _CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"LocalUpstream got unexpected call argument(s) {unknown}; it takes stop, max_tokens "
                "and temperature=0"
            )
        if kwargs.get("temperature") not in (None, 0, 0.0):
            raise ValueError(
                f"LocalUpstream decodes greedily; temperature={kwargs['temperature']!r} is not supported "
                "(pass generation_kwargs={'do_sample': True, 'temperature': ...} when creating it)"
            )
        max_tokens = kwargs.get("max_tokens")
        if max_tokens is None:
            return self.max_new_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        return min(max_tokens, self.max_new_tokens)

    def _message_fields(self, prompt_tokens: int, output_tokens: int, finish_reason: str) -> dict[str, Any]:
        return {
            "usage_metadata": cast(
                UsageMetadata,
                {
                    "input_tokens": prompt_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": prompt_tokens + output_tokens,
                },
            ),
            "response_metadata": {"model_name": self.model, "finish_reason": finish_reason},
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        budget = self._budget(kwargs)
        (answered,) = self._generate_batch([list(messages)])
        text, generation, prompt_tokens = answered.text, answered.generation, answered.prompt_tokens
        finish, tokens = ("length" if generation.finish_reason == "length" else "stop"), generation.tokens
        if budget < self.max_new_tokens and (cut := self._cut_to(text, budget)) != text:
            text, finish, tokens = cut, "length", budget
        text, stopped = _cut_at_stop(text, stop)
        finish = "stop" if stopped else finish
        message = AIMessage(content=text, **self._message_fields(prompt_tokens, tokens, finish))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        budget = self._budget(kwargs)
        engine, fmt = self._loaded()
        prompt = _Prompt(fmt, list(messages))
        job = engine.open_stream(GenerationRequest(prompt))
        raw, sent, finish, done = "", "", "stop", False
        try:
            for piece in job.streamer:
                raw += piece
                text, finish, done = self._so_far(raw, budget, stop)
                ready = text if done else _held_back(text.rstrip(), stop)
                if len(ready) > len(sent):
                    yield self._delta(ready[len(sent) :], run_manager)
                    sent = ready
                if done:
                    break
        finally:
            job.cancelled.set()  # a stop string or the call's budget ends the generation here
        generation = job.future.result()
        if not done:
            _answer(generation)  # raises when the model could not answer
            finish = "length" if generation.finish_reason == "length" else "stop"
            text = self._so_far(raw, budget, stop)[0].rstrip()
            if len(text) > len(sent):
                yield self._delta(text[len(sent) :], run_manager)
                sent = text
        tokens = budget if finish == "length" and budget < self.max_new_tokens else generation.tokens
        fields = self._message_fields(prompt.tokens, tokens, finish)
        yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last", **fields))

    def _so_far(self, raw: str, budget: int, stop: list[str] | None) -> tuple[str, str, bool]:
        """``(text, finish_reason, done)`` of the answer generated so far, as ``_generate`` cuts it."""
        text, finish, done = raw.lstrip(), "stop", False
        if budget < self.max_new_tokens and (cut := self._cut_to(text, budget)) != text:
            text, finish, done = cut, "length", True
        text, stopped = _cut_at_stop(text, stop)
        return (text, "stop", True) if stopped else (text, finish, done)

    @staticmethod
    def _delta(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager:
            run_manager.on_llm_new_token(text, chunk=chunk)
        return chunk


@dataclass(frozen=True)
class _Answered:
    """An answer's text, the generation it came from and its prompt's length in tokens."""

    text: str
    generation: Generation
    prompt_tokens: int


class _Prompt:
    """Encodes a conversation in the worker thread and remembers how many tokens it took."""

    def __init__(self, fmt: UpstreamFormat, messages: list[BaseMessage]) -> None:
        self.fmt = fmt
        self.messages = messages
        self.tokens = 0

    def __call__(self, tokenizer: Any) -> list[int]:
        ids = _encode(tokenizer, fmt=self.fmt, messages=self.messages)
        self.tokens = len(ids)
        return ids


def _held_back(text: str, stop: list[str] | None) -> str:
    """``text`` without an ending that may be the start of a stop string still arriving."""
    hold = max(
        (k for token in stop or () for k in range(1, len(token)) if text.endswith(token[:k])),
        default=0,
    )
    return text[: len(text) - hold]


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for token in stop or () if token and (i := text.find(token)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _encode(tokenizer: Any, *, fmt: UpstreamFormat, messages: list[BaseMessage]) -> list[int]:
    if fmt.kind == "chat":
        turns = convert_to_openai_messages(messages, text_format="string")
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    if not humans:
        raise ValueError("LocalUpstream needs a human message (the question) in its input")
    return encode_prompt(tokenizer, fmt.render(str(humans[-1].text)))


def _answer(generation: Generation) -> str:
    """The answer's text (cut at ``max_new_tokens`` when it ran that long)."""
    if generation.finish_reason in ("too_long", "failed"):
        why = generation.reason or generation.finish_reason
        raise RuntimeError(f"the upstream could not answer ({why}): {generation.detail}")
    return generation.text.strip()
