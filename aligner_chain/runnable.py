"""``AlignerRunnable``: a trained Aligner as a LangChain runnable.

chain = llm | AlignerRunnable()                  # answer only (the Aligner sees no question)
chain = with_aligner(llm, AlignerRunnable())     # question-aware: same input as ``llm``

It owns the failure policy (``on_failure``) for every front end built on it: chains, the LangGraph
node and the agent middleware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langgraph.errors import GraphBubbleUp
from pydantic import PrivateAttr

from aligner_chain.backends.base import CorrectionResult, Outcome
from aligner_chain.correction import (
    Draft,
    answer_after,
    make_draft,
    outcome_of,
    outcome_of_chat,
    outcome_of_error,
)
from aligner_chain.errors import AlignerError
from aligner_chain.inputs import QUESTION_CONFIG_KEY, Item, parse_input
from aligner_chain.messages import split_conversation
from aligner_chain.options import AlignerOptions, OnFailure
from aligner_chain.reporting import annotate_run, report_outcome
from aligner_chain.sentence_stream import (
    SentenceStream,
    acorrect_drafts,
    astream_sentences,
    correct_drafts,
    stream_sentences,
)
from aligner_chain.streaming import add_chunk, as_chunks, is_streaming

if TYPE_CHECKING:
    from aligner_chain.chat_model import ChatAligner

__all__ = ["AlignerRunnable"]


class AlignerRunnable(AlignerOptions, RunnableSerializable[Any, Any]):
    """Correct an answer with a trained Aligner; a traced LangChain runnable.

    Input: an ``AIMessage``/``AIMessageChunk``, a ``str``, or ``{"question", "answer", "history"?}``
    (answer a message or a str; history a list of messages or ``(role, text)`` pairs, used when
    ``history_turns > 0``). Output follows the answer: a message gives an ``AIMessage`` (the original,
    content replaced, ``id``/``tool_calls``/``usage_metadata``/``name``/``response_metadata`` kept),
    a str gives a str.

    The question comes from the dict, else from ``config={"configurable": {"aligner_question": q}}``;
    without one the Aligner sees an empty question, which gives weaker corrections (use
    :func:`with_aligner` to pass the question along a chain).

    ``response_metadata["aligner"]`` reports ``status`` (``"corrected"``, ``"unchanged"``,
    ``"skipped"``, ``"failed"``), ``original``, ``model``, ``template``, and ``reason`` when skipped or
    failed. Answers that call tools, have no text, are too long for the Aligner or that ``skip``
    selects are returned untouched with status ``"skipped"``. On a backend failure,
    ``on_failure="passthrough"`` returns the original (status ``"failed"``, a warning logged) and
    ``on_failure="raise"`` raises :class:`~aligner_chain.errors.AlignerError` chained from the cause.

    ``batch``/``abatch`` make one backend call per batch. ``stream``/``transform`` buffer the upstream
    chunks and emit the correction once it is complete (a failed correction never leaks half-way); the
    aligner metadata rides on exactly one chunk. For token-by-token streaming of the Aligner's own
    generation use :class:`~aligner_chain.chat_model.ChatAligner`.

    A sentence-level Aligner (``granularity="sentence"`` in its ``aligner_config.json``, or a
    sentence-level ``template``) corrects each sentence after the corrected prefix
    (:mod:`aligner_chain.sentence_stream`): ``stream``/``transform`` emit each sentence as soon as the
    upstream has written it, ``invoke``/``batch`` run the same loop (one backend call per sentence
    round), and the metadata adds ``granularity`` and each sentence's outcome (``sentences``).
    """

    on_failure: OnFailure = "passthrough"
    """``"passthrough"``: keep the original answer (status ``"failed"``); ``"raise"``: raise."""

    _chat: ChatAligner | None = PrivateAttr(default=None)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    def with_options(self, **changes: Any) -> AlignerRunnable:
        """A copy with other policies (``on_failure``, ``history_turns``, ``skip``...) sharing this
        runnable's backend, so the model is loaded once."""
        copy = self.model_copy(update={"backend": self.get_backend(), **changes})
        copy._chat = None
        return copy

    # --- direct use by graph / middleware code ---------------------------------------------------

    def correct_message(
        self,
        message: AIMessage,
        question: str = "",
        history: Sequence[BaseMessage | tuple[str, str]] = (),
        config: RunnableConfig | None = None,
    ) -> AIMessage:
        """Correct one answer message (a traced run); returns an ``AIMessage`` with the same id."""
        out = self.invoke({"question": question, "answer": message, "history": list(history)}, config)
        return cast(AIMessage, out)

    async def acorrect_message(
        self,
        message: AIMessage,
        question: str = "",
        history: Sequence[BaseMessage | tuple[str, str]] = (),
        config: RunnableConfig | None = None,
    ) -> AIMessage:
        """Async twin of :meth:`correct_message`."""
        out = await self.ainvoke({"question": question, "answer": message, "history": list(history)}, config)
        return cast(AIMessage, out)

    def correct_final_answer(
        self, messages: Sequence[BaseMessage], config: RunnableConfig | None = None
    ) -> AIMessage:
        """Correct the last message of a conversation (an ``AIMessage`` answering the last human
        message). When the caller is streamed (``stream_mode="messages"``, ``astream_events``) the
        correction streams token by token as a :class:`~aligner_chain.chat_model.ChatAligner` run."""
        question, history, answer = split_conversation(messages)
        draft = self._streamed_draft(answer, question, history, config)
        if draft is None:
            return self.correct_message(answer, question, history, config)
        try:
            result = self._chat_aligner().invoke(list(messages), config)
        except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
            raise
        except Exception as err:
            return self._finish_chat(draft, err)
        return self._finish_chat(draft, result)

    async def acorrect_final_answer(
        self, messages: Sequence[BaseMessage], config: RunnableConfig | None = None
    ) -> AIMessage:
        """Async twin of :meth:`correct_final_answer`."""
        question, history, answer = split_conversation(messages)
        draft = self._streamed_draft(answer, question, history, config)
        if draft is None:
            return await self.acorrect_message(answer, question, history, config)
        try:
            result = await self._chat_aligner().ainvoke(list(messages), config)
        except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
            raise
        except Exception as err:
            return self._finish_chat(draft, err)
        return self._finish_chat(draft, result)

    def _finish_chat(self, draft: Draft, result: BaseMessage | Exception) -> AIMessage:
        """The answer after a :class:`ChatAligner` run (its message, or what it raised)."""
        if isinstance(result, Exception):
            return cast(
                AIMessage, self._finish(Item("message", draft), outcome_of_error(draft, result), result)
            )
        return cast(AIMessage, self._finish(Item("message", draft), outcome_of_chat(draft, result)))

    def _streamed_draft(
        self, answer: AIMessage, question: str, history: Any, config: RunnableConfig | None
    ) -> Draft | None:
        """The draft to stream as a chat model run, or ``None`` for a plain traced call (also for a
        sentence-level Aligner, which corrects a finished answer in sentence rounds)."""
        if not is_streaming(config) or self._sentence_level():
            return None
        draft = make_draft(answer, question, history, self)
        return draft if draft.skip is None else None  # a skip answers at once: nothing to stream

    def _chat_aligner(self) -> ChatAligner:
        if self._chat is None:
            from aligner_chain.chat_model import ChatAligner

            self._chat = ChatAligner(
                backend=self.get_backend(), history_turns=self.history_turns, skip=self.skip
            )
        return self._chat

    # --- invoke / batch ----------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Correct many answers with ONE backend call, order kept."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async twin of :meth:`batch` (one backend call per batch)."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _invoke(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        return _raise_or_return(self._run([self._parse(input, config, run_manager)])[0])

    async def _ainvoke(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        return _raise_or_return((await self._arun([self._parse(input, config, run_manager)]))[0])

    def _batch(
        self, inputs: list[Any], run_manager: list[CallbackManagerForChainRun], config: list[RunnableConfig]
    ) -> list[Any]:
        return self._run(self._parse_all(inputs, config, run_manager))

    async def _abatch(
        self,
        inputs: list[Any],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        return await self._arun(self._parse_all(inputs, config, run_manager))

    # --- stream / transform ------------------------------------------------------------------------

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Buffer the upstream chunks, correct the whole answer, then emit it as chunks; with a
        sentence-level Aligner, correct and emit each sentence as soon as it is complete."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async twin of :meth:`transform`."""
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        if self._sentence_level():  # corrected sentence by sentence as the chunks arrive
            yield from stream_sentences(self._sentence_stream(config, run_manager), chunks)
            return
        total: Any = None
        for chunk in chunks:
            total = add_chunk(total, chunk)
        if total is None:
            return
        yield from as_chunks(_raise_or_return(self._run([self._parse(total, config, run_manager)])[0]))

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[Any]:
        if self._sentence_level():
            async for piece in astream_sentences(self._sentence_stream(config, run_manager), chunks):
                yield piece
            return
        total: Any = None
        async for chunk in chunks:
            total = add_chunk(total, chunk)
        if total is None:
            return
        out = (await self._arun([self._parse(total, config, run_manager)]))[0]
        for piece in as_chunks(_raise_or_return(out)):
            yield piece

    def _sentence_level(self) -> bool:
        """Whether the Aligner corrects sentence by sentence (the whole-answer path reports a
        backend that cannot be built)."""
        try:
            return self.get_backend().granularity == "sentence"
        except Exception:
            return False

    def _sentence_stream(self, config: RunnableConfig, run_manager: Any) -> SentenceStream:
        question = ((config or {}).get("configurable") or {}).get(QUESTION_CONFIG_KEY)
        return SentenceStream(self, question=question, run=run_manager)

    # --- the correction ----------------------------------------------------------------------------

    def _parse_all(
        self, inputs: list[Any], configs: list[RunnableConfig], runs: list[Any]
    ) -> list[Item | Exception]:
        items: list[Item | Exception] = []
        for input, config, run in zip(inputs, configs, runs, strict=True):
            try:
                items.append(self._parse(input, config, run))
            except GraphBubbleUp:
                raise
            except Exception as err:  # one bad input never sinks the batch (return_exceptions)
                items.append(err)
        return items

    def _parse(self, input: Any, config: RunnableConfig | None, run: Any = None) -> Item:
        return parse_input(input, config, self, run)

    def _run(self, items: list[Item | Exception]) -> list[Any]:
        todo = _todo(items)
        results: list[CorrectionResult] | list[Outcome | Exception] | Exception = []
        if todo:
            try:
                if self._sentence_level():
                    results = correct_drafts(self, [item.draft for item in todo.values()])
                else:
                    results = self.get_backend().correct([item.draft.request() for item in todo.values()])
            except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
                raise
            except Exception as err:
                results = err
        return self._finish_all(items, todo, results)

    async def _arun(self, items: list[Item | Exception]) -> list[Any]:
        todo = _todo(items)
        results: list[CorrectionResult] | list[Outcome | Exception] | Exception = []
        if todo:
            try:
                if self._sentence_level():
                    results = await acorrect_drafts(self, [item.draft for item in todo.values()])
                else:
                    results = await self.get_backend().acorrect(
                        [item.draft.request() for item in todo.values()]
                    )
            except GraphBubbleUp:  # interrupts and Command(graph=PARENT) belong to the graph
                raise
            except Exception as err:
                results = err
        return self._finish_all(items, todo, results)

    def _finish_all(
        self,
        items: list[Item | Exception],
        todo: dict[int, Item],
        results: list[CorrectionResult] | list[Outcome | Exception] | Exception,
    ) -> list[Any]:
        if isinstance(results, list) and len(results) != len(todo):
            results = AlignerError(f"the backend returned {len(results)} results for {len(todo)} requests")
        by_index = dict(zip(todo, results, strict=True)) if isinstance(results, list) else {}
        outputs: list[Any] = []
        for i, item in enumerate(items):
            if isinstance(item, Exception):
                outputs.append(item)
                continue
            try:
                if item.draft.skip is not None:
                    outputs.append(self._finish(item, Outcome("skipped", item.draft.text, item.draft.skip)))
                elif isinstance(results, Exception):
                    outputs.append(self._finish(item, outcome_of_error(item.draft, results), results))
                elif isinstance(result := by_index[i], Exception):  # on_failure="raise", sentence level
                    outputs.append(result)
                else:
                    outputs.append(self._finish(item, outcome_of(item.draft, result)))
            except Exception as err:  # on_failure="raise": reported per item
                outputs.append(err)
        return outputs

    def _finish(self, item: Item, outcome: Outcome, cause: BaseException | None = None) -> Any:
        """The output for one item: the failure policy applied, the outcome logged and put on the
        traced run."""
        model, template = self.describe_backend()
        if outcome.status == "failed" and self.on_failure == "raise":
            annotate_run(item.run, outcome)
            detail = f" ({outcome.detail})" if outcome.detail else ""
            raise AlignerError(f"the Aligner ({model}) failed: {outcome.reason}{detail}") from (
                cause or outcome.error()
            )
        report_outcome(item.run, outcome, model)
        if item.kind == "str":
            return outcome.text
        return answer_after(item.draft, outcome, model=model, template=template)


# --- helpers -------------------------------------------------------------------------------------


def _todo(items: list[Item | Exception]) -> dict[int, Item]:
    """The items to send to the backend, by position."""
    return {i: item for i, item in enumerate(items) if isinstance(item, Item) and item.draft.skip is None}


def _raise_or_return(out: Any) -> Any:
    if isinstance(out, Exception):
        raise out
    return out
