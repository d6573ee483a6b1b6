"""The decoding modes of a local model and how one is chosen.

* :class:`DecodingOptions`: what a user sets: ``scheduling`` (``"static"`` batches or
  ``"continuous"`` batching), ``prompt_lookup`` (copy-aware drafting for rows decoded alone),
  ``compiled`` (static KV cache + ``torch.compile`` for rows decoded alone), ``threads`` (the
  decoding thread's torch pool) and the continuous-batching cache bounds. ``"auto"`` everywhere.
* :func:`plan_decoding`: the :class:`DecodingPlan` for the loaded model's device: continuous
  batching and compiled decoding on CUDA, static batches with prompt lookup elsewhere (on CPU the
  manager's long-lived thread slows the rest of the process; see the note it leaves), each choice
  with its reason.
* :class:`LoadedModel`: what every mode decodes with (model, tokenizer, ids, padding) and how a
  row's new tokens become a :class:`~aligner_chain.backends.generation.Generation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aligner_chain.backends.generation import FinishReason, Generation, Prompt

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONTINUOUS_GENERATION_KWARGS",
    "DecodingOptions",
    "DecodingPlan",
    "LoadedModel",
    "Scheduling",
    "Switch",
    "compiled_blockers",
    "continuous_blockers",
    "lookup_blockers",
    "plan_decoding",
]

Scheduling = Literal["auto", "static", "continuous"]
"""``"static"``: left-padded batches, one ``generate`` each; ``"continuous"``: transformers'
continuous-batching manager, rows joining and leaving the running batch every step."""
Switch = Literal["auto", "on", "off"]

CONTINUOUS_GENERATION_KWARGS = frozenset(
    {"do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id"}
)
"""The ``generation_kwargs`` the continuous-batching manager honours; it drops other logits
processors and has no stopping criteria, so any other key keeps a model on static batches."""

_SCHEDULING = ("auto", "static", "continuous")
_SWITCH = ("auto", "on", "off")


@dataclass(frozen=True)
class DecodingOptions:
    """How a local model decodes (see :class:`~aligner_chain.backends.transformers.TransformersBackend`)."""

    scheduling: Scheduling = "auto"
    prompt_lookup: Switch = "auto"
    compiled: Switch = "auto"
    threads: int | None = None
    continuous_batching_config: Mapping[str, Any] | None = None

    def check(self, generation_kwargs: Mapping[str, Any]) -> None:
        """Refuse values that are unknown or contradict ``generation_kwargs``.

        Raises:
            ValueError: naming the option and the fix.
        """
        for name, allowed in (("scheduling", _SCHEDULING), ("prompt_lookup", _SWITCH), ("compiled", _SWITCH)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an int >= 1 or None (by device), got {threads!r}")
        _check_continuous_config(self.continuous_batching_config)
        for name, value, blockers in (
            ("scheduling", "continuous", continuous_blockers(generation_kwargs)),
            ("prompt_lookup", "on", lookup_blockers(generation_kwargs)),
            ("compiled", "on", compiled_blockers(generation_kwargs)),
        ):
            if getattr(self, name) == value and blockers:
                raise ValueError(
                    f"{name}={value!r} cannot run with generation_kwargs {', '.join(blockers)}; "
                    f"leave {name}='auto' or drop those generation_kwargs"
                )


def lookup_blockers(generation_kwargs: Mapping[str, Any]) -> list[str]:
    """Why prompt lookup cannot serve these settings (empty: it can). It is exact for greedy
    search only, and checks stopping criteria once per accepted draft, so a stop string or
    criterion could let the output run past where plain decoding stops."""
    kwargs = generation_kwargs
    blockers = []
    if kwargs.get("do_sample"):
        blockers.append("do_sample=True")
    if (kwargs.get("num_beams") or 1) > 1:
        blockers.append("num_beams > 1")
    for key in ("stop_strings", "stopping_criteria", "assistant_model", "cache_implementation"):
        if kwargs.get(key):
            blockers.append(key)
    return blockers


def continuous_blockers(generation_kwargs: Mapping[str, Any]) -> list[str]:
    """The ``generation_kwargs`` continuous batching would drop (empty: it can serve them)."""
    return sorted(k for k in generation_kwargs if k not in CONTINUOUS_GENERATION_KWARGS)


def compiled_blockers(generation_kwargs: Mapping[str, Any]) -> list[str]:
    """Why compiled decoding (a static KV cache) cannot serve these settings."""
    kwargs = generation_kwargs
    blockers = [key for key in ("cache_implementation", "assistant_model") if kwargs.get(key)]
    if (kwargs.get("num_beams") or 1) > 1:
        blockers.append("num_beams > 1")
    return blockers


def _check_continuous_config(config: Mapping[str, Any] | None) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise ValueError(
            "continuous_batching_config must be a mapping of ContinuousBatchingConfig fields, e.g. "
            f"{{'num_blocks': 64, 'page_size': 32}}; got {type(config).__name__}"
        )
    from dataclasses import fields

    from transformers import ContinuousBatchingConfig

    known = {f.name for f in fields(ContinuousBatchingConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"continuous_batching_config has unknown fields {unknown}; ContinuousBatchingConfig takes "
            f"{sorted(known)}"
        )


@dataclass(frozen=True)
class DecodingPlan:
    """The modes a loaded model decodes with, each with the reason it was chosen (``notes``)."""

    device: str
    scheduling: Literal["static", "continuous"]
    prompt_lookup: Switch
    compiled: bool
    max_batch_size: int
    threads: int
    notes: tuple[str, ...] = ()


def plan_decoding(
    options: DecodingOptions,
    *,
    device: str,
    generation_kwargs: Mapping[str, Any],
    max_batch_size: int,
    threads: int,
    attn_implementation: str | None = None,
) -> DecodingPlan:
    """Resolve ``"auto"`` for ``device``: continuous batching and compiled decoding on CUDA (when
    ``generation_kwargs`` allow them), static batches elsewhere; prompt lookup wherever greedy
    search allows it, except for rows the compiled path takes."""
    kind = device.split(":")[0]
    notes: list[str] = []
    scheduling: Literal["static", "continuous"]
    if options.scheduling == "auto":
        blockers = continuous_blockers(generation_kwargs)
        attention_ok = attn_implementation in (None, "sdpa") or "flash" in str(attn_implementation)
        if kind != "cuda":
            scheduling = "static"
            notes.append(
                f"static batches: on {kind} the continuous-batching manager's thread and cache would live "
                "as long as the model (its idle thread pool slows other torch work in the process); "
                "scheduling='continuous' for a process that only serves the Aligner"
            )
        elif blockers or not attention_ok:
            scheduling = "static"
            why = f"generation_kwargs {blockers}" if blockers else f"attention {attn_implementation!r}"
            notes.append(f"static batches: continuous batching cannot serve {why}")
        else:
            scheduling = "continuous"
            notes.append("continuous batching: rows join and leave the running batch on CUDA")
    else:
        scheduling = "static" if options.scheduling == "static" else "continuous"
        notes.append(f"scheduling={options.scheduling!r} as asked")

    compiled = options.compiled == "on" or (
        options.compiled == "auto" and kind == "cuda" and not compiled_blockers(generation_kwargs)
    )
    if compiled:
        notes.append("compiled decoding (static KV cache + torch.compile) for rows decoded alone")
        if kind not in ("cuda", "xpu", "mps"):
            notes.append(
                f"compiled={options.compiled!r} on {kind}: transformers compiles on accelerators only, "
                "so the static-cache path runs eagerly here"
            )

    prompt_lookup: Switch = options.prompt_lookup
    if prompt_lookup == "auto" and lookup_blockers(generation_kwargs):
        prompt_lookup = "off"
        notes.append(f"no prompt lookup: generation_kwargs {lookup_blockers(generation_kwargs)}")
    elif prompt_lookup != "off":
        notes.append(f"prompt lookup ({prompt_lookup}) for rows decoded alone")
    return DecodingPlan(
        device=device,
        scheduling=scheduling,
        prompt_lookup=prompt_lookup,
        compiled=compiled,
        max_batch_size=max_batch_size,
        threads=threads,
        notes=tuple(notes),
    )


@dataclass
class LoadedModel:
    """A loaded causal LM with what decoding needs: its tokenizer, EOS and pad ids, context and the
    generation settings every call shares."""

    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    eos_ids: frozenset[int]
    pad_id: int
    context_length: int | None
    generation_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def stops_early(self) -> bool:
        """Whether stop strings or criteria may end a row before EOS or its budget."""
        kwargs = self.generation_kwargs
        return bool(kwargs.get("stop_strings") or kwargs.get("stopping_criteria"))

    def left_padded(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of the prompts, left-padded, on the model's device."""
        import torch

        width = max(len(p.ids) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt.ids) :] = torch.tensor(prompt.ids, dtype=torch.long)
            attention_mask[row, width - len(prompt.ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def finish(self, tokens: Sequence[int], budget: int) -> Generation:
        """The :class:`Generation` of a row's new tokens: the text up to the first EOS (``"stop"``),
        else up to the budget (``"length"``, or ``"stop"`` where a stop string or criterion ended it)."""
        tokens = list(tokens[:budget])  # never past the budget, whatever the decoder overshot
        end = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
        reason: FinishReason = "stop"
        if end is None:
            while tokens and tokens[-1] == self.pad_id:  # a row that stopped on a stop string
                tokens = tokens[:-1]
            end = len(tokens)
            if not self.stops_early or end >= budget:
                reason = "length"
        return Generation(self.tokenizer.decode(tokens[:end], skip_special_tokens=True), reason, tokens=end)
