"""``AlignedChatModel`` batches: the upstream's batch, then ONE Aligner batch for every answer to
correct (a tool-calling turn and a structured answer are not sent), order kept, an exception per
failed input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from aligner_chain.messages import question_and_history

if TYPE_CHECKING:
    from aligner_chain.aligned_chat_model import AlignedChatModel

__all__ = ["acorrect_batch", "correct_batch"]


def _prepare(
    model: AlignedChatModel,
    inputs: list[LanguageModelInput],
    config: list[RunnableConfig],
    kwargs: dict[str, Any],
) -> tuple[list[list[BaseMessage]], Runnable[Any, Any], dict[str, Any], bool, list[RunnableConfig]]:
    conversations = [model._convert_input(value).to_messages() for value in inputs]
    stop = kwargs.pop("stop", None)
    runnable, call, structured = model._upstream_call(stop, kwargs)
    configs = [cast(RunnableConfig, {**c, "tags": [*c.get("tags", []), TAG_NOSTREAM]}) for c in config]
    return conversations, runnable, call, structured, configs


def correct_batch(
    model: AlignedChatModel,
    inputs: list[LanguageModelInput],
    config: list[RunnableConfig],
    kwargs: dict[str, Any],
) -> list[AIMessage | Exception]:
    """The answers to ``inputs`` (each input's ``config`` is its traced run's child)."""
    conversations, runnable, call, structured, configs = _prepare(model, inputs, config, kwargs)
    answers = runnable.batch(conversations, configs, return_exceptions=True, **call)
    plan = _Plan(model, conversations, answers, structured)
    if plan.todo:
        plan.put(model.aligner.batch(plan.aligner_inputs(), plan.configs(configs), return_exceptions=True))
    return plan.outputs


async def acorrect_batch(
    model: AlignedChatModel,
    inputs: list[LanguageModelInput],
    config: list[RunnableConfig],
    kwargs: dict[str, Any],
) -> list[AIMessage | Exception]:
    """Async twin of :func:`correct_batch`."""
    conversations, runnable, call, structured, configs = _prepare(model, inputs, config, kwargs)
    answers = await runnable.abatch(conversations, configs, return_exceptions=True, **call)
    plan = _Plan(model, conversations, answers, structured)
    if plan.todo:
        aligner_inputs = plan.aligner_inputs()
        plan.put(await model.aligner.abatch(aligner_inputs, plan.configs(configs), return_exceptions=True))
    return plan.outputs


class _Plan:
    """A batch's upstream answers and which of them go to the Aligner."""

    def __init__(
        self,
        model: AlignedChatModel,
        conversations: list[list[BaseMessage]],
        answers: list[Any],
        structured: bool,
    ) -> None:
        self.conversations = conversations
        self.outputs: list[AIMessage | Exception] = []
        self.todo: list[int] = []
        for i, answer in enumerate(answers):
            if isinstance(answer, AIMessage) and structured:
                answer = model._structured(answer)
            elif isinstance(answer, AIMessage) and not (answer.tool_calls or answer.invalid_tool_calls):
                self.todo.append(i)
            self.outputs.append(answer)

    def aligner_inputs(self) -> list[dict[str, Any]]:
        inputs = []
        for i in self.todo:
            question, history = question_and_history(self.conversations[i])
            inputs.append({"question": question, "history": history, "answer": self.outputs[i]})
        return inputs

    def configs(self, configs: list[RunnableConfig]) -> list[RunnableConfig]:
        return [configs[i] for i in self.todo]

    def put(self, corrected: list[Any]) -> None:
        for i, out in zip(self.todo, corrected, strict=True):
            self.outputs[i] = out
