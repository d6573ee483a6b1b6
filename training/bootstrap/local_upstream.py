"""A local causal LM as a LangChain chat model: the upstream that bootstrapping trains and re-runs.

The prompt format is one shared contract between :mod:`training.bootstrap.upstream_trainer` (which writes
``upstream_config.json`` next to the trained weights) and :class:`LocalUpstream` (which reads it),
so a trained upstream is always served the way it was trained:

* ``"plain"``: ``"Question: {question}\\nAnswer:"`` (or your template) and the answer after a space,
  ending with EOS; for base models without a chat template. Only the last human message is used.
* ``"chat"``: the tokenizer's own chat template over the whole conversation.

Generation is greedy, through the same local-model worker as the Aligner
(:mod:`aligner_chain.backends.local_model`).
"""

from __future__ import annotations

import json
import string
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

from aligner_chain.backends.generation import Generation, GenerationRequest
from aligner_chain.backends.local_model import LocalModel
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


class LocalUpstream(BaseChatModel):
    """A local (or hub) causal LM answering greedily, as a LangChain chat model.

    ``model`` is a directory or hub id; a directory holding ``adapter_config.json`` is loaded as a
    PEFT adapter on its base. ``prompt_format=None`` reads ``upstream_config.json`` from the model
    directory, else picks the chat template when the tokenizer has one, else the plain template.
    Generation goes through :class:`~aligner_chain.backends.local_model.LocalModel`: concurrent calls
    are batched by its one worker thread.
    """

    model: str
    max_new_tokens: int = 256
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 8
    prompt_format: UpstreamFormat | None = None
    trust_remote_code: bool = False

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _engine: LocalModel | None = PrivateAttr(default=None)
    _format: UpstreamFormat | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

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
                )
            engine = self._engine
        engine.load()
        if self._format is None:
            path = Path(self.model)
            fmt = self.prompt_format or (load_upstream_format(path) if path.is_dir() else None)
            self._format = fmt or resolve_upstream_format(engine.tokenizer)
        return engine, self._format

    def _generate_batch(self, batch: list[list[BaseMessage]]) -> list[str]:
        """Answer several conversations (one request each to the model's worker)."""
        engine, fmt = self._loaded()
        requests = [GenerationRequest(partial(_encode, fmt=fmt, messages=messages)) for messages in batch]
        return [_answer(generation) for generation in engine.submit(requests).result()]

    def answer_batch(self, questions: list[str]) -> list[str]:
        """Answer several questions in one batched ``generate`` (no LangChain run)."""
        return self._generate_batch([[HumanMessage(q)] for q in questions])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        (text,) = self._generate_batch([list(messages)])
        for token in stop or ():
            cut = text.find(token)
            if cut >= 0:
                text = text[:cut]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


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
