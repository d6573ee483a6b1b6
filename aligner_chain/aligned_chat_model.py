"""``AlignedChatModel``: any chat model, corrected by an Aligner, as a drop-in chat model.

    model = AlignedChatModel(ChatOpenAI(model="gpt-4o-mini"), AlignerRunnable("runs/my-aligner"))
    agent = create_agent(model=model, tools=[...])

It answers with the upstream and corrects the final text answers with the Aligner (an
:class:`~aligner_chain.runnable.AlignerRunnable`: its options and failure policy apply). Streamed, a
sentence-level Aligner corrects each sentence as soon as the upstream has written it
(:mod:`aligner_chain.sentence_stream`); a whole-answer Aligner streams its correction token by token
once the upstream's answer is complete. Turns that call tools, structured output and answers asked for
with ``response_format`` are the upstream's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.constants import TAG_NOSTREAM
from pydantic import ConfigDict, Field

from aligner_chain.aligned_batch import acorrect_batch, correct_batch
from aligner_chain.aligned_streaming import astream_whole, stream_whole
from aligner_chain.arguments import check_keywords
from aligner_chain.messages import ALIGNER_KEY, aligner_metadata, question_and_history, with_metadata
from aligner_chain.read_ahead import aread_ahead, read_ahead
from aligner_chain.runnable import AlignerRunnable
from aligner_chain.sentence_stream import SentenceStream, astream_sentences, stream_sentences

__all__ = ["AlignedChatModel"]

_TOOL_OPTIONS = ("tool_choice", "parallel_tool_calls", "strict", "response_format")
"""Call options that belong to ``bind_tools``: handed to the upstream's own ``bind_tools``."""


class AlignedChatModel(BaseChatModel):
    """A chat model that answers with ``upstream`` and corrects its final text answers with
    ``aligner``.

    * The Aligner sees the conversation's last human message as the question (earlier turns per the
      aligner's ``history_turns``); its ``skip``, ``on_failure`` and model options apply.
    * The answer keeps the upstream's ``id``, ``usage_metadata`` (the upstream's tokens) and
      ``response_metadata``, plus ``response_metadata["aligner"]`` (see ``AlignerRunnable``; at
      sentence level also ``granularity`` and each sentence's outcome in ``sentences``).
    * ``bind_tools`` binds the upstream's tools; a turn that calls tools is returned and streamed
      untouched. ``with_structured_output`` is the upstream's (the structured answer is not
      rewritten; with ``include_raw=True`` the raw message says so in its metadata), and so is an
      answer asked for with ``response_format`` (its message reports ``skipped``,
      ``"structured_output"``). The capability ``profile`` is the upstream's.
    * ``stream``/``astream``/``astream_events``: with a sentence-level Aligner each sentence is
      corrected and streamed as soon as the upstream has written it (the upstream is read ahead in
      the background meanwhile; a sentence that fails or is skipped streams as written and is
      flagged). With a whole-answer Aligner the correction streams token by token after the
      upstream's answer; a correction that fails before its first token streams the original
      (flagged), one that fails after it raises ``AlignerError`` (streamed text cannot be taken back).
      A turn whose text comes before its tool calls has that text corrected when streamed
      sentence by sentence (it was shown as it arrived); ``invoke`` returns such turns untouched.
    * ``batch``/``abatch`` run the upstream's batch, then ONE Aligner batch (at sentence level: one
      backend call per sentence round); each input is its own traced run.
    * ``stop``, ``temperature`` and ``max_tokens`` are passed to the upstream on every call when set
      (``None``: the upstream's own settings); transport settings (timeouts, retries, keys) belong to
      the upstream model, and any other keyword is a ``TypeError``.
    """

    upstream: BaseChatModel
    """The chat model that answers (any LangChain chat model)."""
    aligner: AlignerRunnable = Field(default_factory=AlignerRunnable)
    """The Aligner that corrects the answers (its options and failure policy apply)."""
    streaming: bool = False
    """``True``: ``invoke`` streams internally (LangChain's standard meaning)."""
    stop: list[str] | None = None
    """Stop sequences passed to the upstream on every call (a call's own ``stop`` wins)."""
    temperature: float | None = None
    """Passed to the upstream as a call argument when set."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Passed to the upstream as a call argument when set."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    def __init__(
        self,
        upstream: BaseChatModel | None = None,
        aligner: AlignerRunnable | None = None,
        /,
        **kwargs: Any,
    ) -> None:
        for name, value in (("upstream", upstream), ("aligner", aligner)):
            if value is not None:
                if name in kwargs:
                    raise TypeError(f"{name} given twice (positionally and as {name}=)")
                kwargs[name] = value
        check_keywords(type(self).__name__, kwargs, type(self).model_fields)
        if "upstream" not in kwargs:
            raise TypeError("AlignedChatModel needs upstream= (the chat model that answers)")
        if not isinstance(kwargs["upstream"], BaseChatModel):
            raise TypeError(
                "upstream must be a LangChain chat model (a BaseChatModel), got "
                f"{type(kwargs['upstream']).__name__}"
            )
        if kwargs.get("aligner") is not None and not isinstance(kwargs["aligner"], AlignerRunnable):
            raise TypeError(f"aligner must be an AlignerRunnable, got {type(kwargs['aligner']).__name__}")
        super().__init__(**kwargs)

    # --- what it is ---------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "aligned-chat-model"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False  # it holds live model objects

    @property
    def _identifying_params(self) -> dict[str, Any]:
        model, template = self.aligner.describe_backend()
        return {
            "upstream": self.upstream._llm_type,
            **self.upstream._identifying_params,
            "aligner_model": model,
            "aligner_template": template,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The upstream's tracing parameters (provider, model, call options)."""
        call = {**self._call_defaults(), **kwargs}
        return self.upstream._get_ls_params(stop=stop if stop is not None else self.stop, **call)

    def _resolve_model_profile(self) -> Any:
        return self.upstream.profile

    # --- tools and structured output ---------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools for the upstream (OpenAI-format tool dicts in the binding's ``kwargs``, as
        LangGraph reads them). Raises ``NotImplementedError`` when the upstream has no tool calling."""
        if type(self.upstream).bind_tools is BaseChatModel.bind_tools:
            raise NotImplementedError(
                f"the upstream {type(self.upstream).__name__} does not support tool calling"
            )
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        self.upstream.bind_tools(formatted, tool_choice=tool_choice, **kwargs)  # the upstream's checks, now
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """The upstream's structured output, unaligned (a structured answer is not rewritten); with
        ``include_raw=True`` the raw message reports ``skipped``/``"structured_output"``."""
        structured = self.upstream.with_structured_output(schema, include_raw=include_raw, **kwargs)
        if not include_raw:
            return structured
        return structured | RunnableLambda(self._flag_raw, name="aligner_not_applied")

    def _flag_raw(self, output: Any) -> Any:
        if isinstance(output, dict) and isinstance(output.get("raw"), AIMessage):
            return {**output, "raw": self._structured(output["raw"])}
        return output

    def _structured(self, message: AIMessage) -> AIMessage:
        model, template = self.aligner.describe_backend()
        meta = aligner_metadata(
            "skipped", original=message.text, model=model, template=template, reason="structured_output"
        )
        return with_metadata(message, meta)

    # --- the upstream call -------------------------------------------------------------------------

    def _call_defaults(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in (("temperature", self.temperature), ("max_tokens", self.max_tokens))
            if value is not None
        }

    def _upstream_call(
        self, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Runnable[Any, Any], dict[str, Any], bool]:
        """``(runnable, call kwargs, structured)``: the upstream with its tools bound, what to pass
        to each call, and whether the answer is structured output (never corrected)."""
        call = {**self._call_defaults(), **kwargs}
        tools = call.pop("tools", None)
        options = {k: call.pop(k) for k in _TOOL_OPTIONS if k in call}
        runnable: Runnable[Any, Any] = self.upstream
        if tools is not None:
            runnable = self.upstream.bind_tools(tools, **options)
        elif options:
            runnable = self.upstream.bind(**options)
        stop = stop if stop is not None else self.stop
        if stop:
            call["stop"] = stop
        return runnable, call, options.get("response_format") is not None

    @staticmethod
    def _child_config(
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> RunnableConfig:
        """The config of the upstream and Aligner runs: children of this run when its run manager is
        known (LangChain does not pass it to ``_stream``; then the ambient config), always tagged
        ``nostream`` so LangGraph's ``stream_mode="messages"`` shows this model's corrected tokens,
        not the upstream's raw ones."""
        if run_manager is None:
            config = ensure_config()
            return {"tags": [*config.get("tags", []), TAG_NOSTREAM]}
        manager_class = (
            AsyncCallbackManager
            if isinstance(run_manager, AsyncCallbackManagerForLLMRun)
            else CallbackManager
        )
        manager = manager_class(handlers=[], parent_run_id=run_manager.run_id)
        manager.set_handlers(run_manager.inheritable_handlers)
        manager.add_tags(run_manager.inheritable_tags)
        manager.add_metadata(run_manager.inheritable_metadata)
        manager.add_tags([TAG_NOSTREAM], inherit=False)
        return {"callbacks": manager}

    def _sentence_level(self) -> bool:
        return self.aligner._sentence_level()

    # --- one answer --------------------------------------------------------------------------------

    def _after(
        self, answer: AIMessage, messages: list[BaseMessage], structured: bool, config: RunnableConfig
    ) -> AIMessage:
        if structured:
            return self._structured(answer)
        if answer.tool_calls or answer.invalid_tool_calls:
            return answer
        question, history = question_and_history(messages)
        return self.aligner.correct_message(answer, question, history, config)

    async def _aafter(
        self, answer: AIMessage, messages: list[BaseMessage], structured: bool, config: RunnableConfig
    ) -> AIMessage:
        if structured:
            return self._structured(answer)
        if answer.tool_calls or answer.invalid_tool_calls:
            return answer
        question, history = question_and_history(messages)
        return await self.aligner.acorrect_message(answer, question, history, config)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        runnable, call, structured = self._upstream_call(stop, kwargs)
        config = self._child_config(run_manager)
        answer = runnable.invoke(messages, config, **call)
        return _result(self._after(answer, messages, structured, config))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        runnable, call, structured = self._upstream_call(stop, kwargs)
        config = self._child_config(run_manager)
        answer = await runnable.ainvoke(messages, config, **call)
        return _result(await self._aafter(answer, messages, structured, config))

    # --- streaming -----------------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        runnable, call, structured = self._upstream_call(stop, kwargs)
        config = self._child_config(run_manager)
        chunks = runnable.stream(messages, config, **call)
        if structured:
            pieces: Iterator[Any] = self._passed_through(chunks)
        elif self._sentence_level():
            question, history = question_and_history(messages)
            stream = SentenceStream(self.aligner, question=question, history=history)
            pieces = stream_sentences(stream, read_ahead(chunks))
        else:
            pieces = stream_whole(self.aligner, messages, chunks)
        for piece in pieces:
            chunk = ChatGenerationChunk(message=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        runnable, call, structured = self._upstream_call(stop, kwargs)
        config = self._child_config(run_manager)
        chunks = runnable.astream(messages, config, **call)
        if structured:
            pieces: AsyncIterator[Any] = self._apassed_through(chunks)
        elif self._sentence_level():
            question, history = question_and_history(messages)
            stream = SentenceStream(self.aligner, question=question, history=history)
            pieces = astream_sentences(stream, aread_ahead(chunks))
        else:
            pieces = astream_whole(self.aligner, messages, chunks)
        async for piece in pieces:
            chunk = ChatGenerationChunk(message=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    def _passed_through(self, chunks: Iterator[AIMessageChunk]) -> Iterator[AIMessageChunk]:
        total: AIMessageChunk | None = None
        for chunk in chunks:
            total = chunk if total is None else total + chunk
            yield chunk
        yield self._structured_closing(total)

    async def _apassed_through(self, chunks: AsyncIterator[AIMessageChunk]) -> AsyncIterator[AIMessageChunk]:
        total: AIMessageChunk | None = None
        async for chunk in chunks:
            total = chunk if total is None else total + chunk
            yield chunk
        yield self._structured_closing(total)

    def _structured_closing(self, total: AIMessageChunk | None) -> AIMessageChunk:
        """A closing chunk that only says the structured answer was not rewritten."""
        meta = self._structured(AIMessage(content=total.text if total is not None else ""))
        return AIMessageChunk(
            content="",
            id=total.id if total is not None else None,
            response_metadata={ALIGNER_KEY: meta.response_metadata[ALIGNER_KEY]},
            chunk_position="last",
        )

    # --- batch ---------------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """The upstream's batch, then ONE Aligner batch for every answer to correct, order kept."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async twin of :meth:`batch`."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _batch(
        self,
        inputs: list[LanguageModelInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:
        return correct_batch(self, inputs, config, kwargs)

    async def _abatch(
        self,
        inputs: list[LanguageModelInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:
        return await acorrect_batch(self, inputs, config, kwargs)


def _result(message: AIMessage) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=message)])
