"""Copy-aware decoding for a row decoded alone: prompt lookup drafts, verified by transformers.

An Aligner mostly copies the answer it corrects, so the next tokens are often already in the
prompt. Prompt-lookup decoding (``generate(prompt_lookup_num_tokens=k)``, transformers' assisted
generation loop) proposes up to ``k`` tokens found after the last n-gram and verifies them all in one
forward pass; greedy output is exactly plain greedy output, only with fewer forward passes.

* :class:`AnswerLookup` drafts from the answer (plus what was generated so far) instead of the whole
  prompt, continuing where its last accepted draft ended, and stops drafting for a while inside a
  call after repeated misses. transformers has no public option for a custom drafter, so it is
  installed through the private ``_get_candidate_generator`` hook, only on the transformers versions
  it is tested with (:func:`answer_drafting_supported`); elsewhere the built-in lookup (drafts from
  the whole prompt) runs.
* :class:`ForwardCounter` is a streamer that counts tokens per forward pass (each ``put`` after the
  prompt is one forward), the public measure of how many drafts are accepted.
* :class:`LookupPolicy` keeps a moving average of it and backs off (rows decoded plain for a
  doubling number of calls) when drafts rarely pay: a model that does not copy ran at about 0.8x
  plain speed with lookup, since every rejected draft costs a wider forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.streamers import BaseStreamer

from aligner_chain.backends.decoding import LoadedModel, Switch
from aligner_chain.backends.generation import Prompt

__all__ = [
    "DRAFT_TOKENS",
    "AnswerLookup",
    "ForwardCounter",
    "LookupPolicy",
    "answer_drafting_supported",
    "generate_with_lookup",
]

DRAFT_TOKENS = 10
"""Tokens proposed per draft (``prompt_lookup_num_tokens``)."""
_HOOK_TESTED = {(5, 25)}  # transformers (major, minor) whose private drafter hook is tested here


def answer_drafting_supported(model: Any) -> bool:
    """Whether :class:`AnswerLookup` can be installed: the private ``_get_candidate_generator`` hook
    exists with the tested signature on a tested transformers version."""
    try:
        version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    except ValueError:
        return False
    method = getattr(type(model), "_get_candidate_generator", None)
    if version not in _HOOK_TESTED or not callable(method):
        return False
    parameters = inspect.signature(method).parameters
    return {"generation_config", "input_ids", "model_kwargs"} <= parameters.keys()


class ForwardCounter(BaseStreamer):
    """A streamer that counts forward passes and the tokens they produced, passing every ``put``
    on to ``inner`` (``generate`` puts the prompt first, then each forward's accepted tokens)."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.puts = 0
        self.tokens = 0

    @property
    def forwards(self) -> int:
        return max(0, self.puts - 1)

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts > 1:
            self.tokens += int(value.numel())
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


class LookupPolicy:
    """Whether the next row decoded alone drafts with prompt lookup (``mode``: ``"on"``, ``"off"``
    or ``"auto"``). ``"auto"`` backs off when the moving average of tokens per forward pass falls
    below :attr:`threshold`: the next ``backoff`` rows decode plain, ``backoff`` doubling (up to
    :attr:`max_backoff`) while drafts keep failing and resetting once they pay again."""

    threshold = 1.3
    """Tokens per forward below which drafting costs more than it saves (a forward that verifies
    ``k`` drafts costs about 1.25 plain forwards on CPU)."""
    smoothing = 0.3
    min_tokens = 8
    base_backoff = 4
    max_backoff = 256

    def __init__(self, mode: Switch = "auto") -> None:
        self.mode = mode
        self.tokens_per_forward: float | None = None
        self.calls = 0
        self.skipped = 0
        self._skip = 0
        self._backoff = self.base_backoff

    def should_draft(self) -> bool:
        if self.mode == "off":
            return False
        if self.mode == "auto" and self._skip > 0:
            self._skip -= 1
            self.skipped += 1
            return False
        return True

    def record(self, tokens: int, forwards: int) -> None:
        """One drafting call's outcome: ``tokens`` generated in ``forwards`` forward passes."""
        self.calls += 1
        if forwards <= 0 or tokens < self.min_tokens:
            return
        rate = tokens / forwards
        average = self.tokens_per_forward
        average = rate if average is None else self.smoothing * rate + (1 - self.smoothing) * average
        self.tokens_per_forward = average
        if self.mode != "auto":
            return
        if average < self.threshold:
            self._skip = self._backoff
            self._backoff = min(self._backoff * 2, self.max_backoff)
        else:
            self._backoff = self.base_backoff


class AnswerLookup(CandidateGenerator):
    """Drafts the ``num_tokens`` tokens that followed the last n-gram (``max_ngram`` down to 1) in
    ``source`` + the tokens generated so far, preferring the place its last accepted draft ended.
    After ``patience`` fully rejected drafts in a row it stops drafting for ``cooldown`` steps
    (doubling while misses continue). Drafts never reach past ``max_length`` nor include EOS."""

    def __init__(
        self,
        source: Sequence[int],
        *,
        prompt_length: int,
        max_length: int,
        eos_ids: Sequence[int],
        device: Any,
        num_tokens: int = DRAFT_TOKENS,
        max_ngram: int = 3,
        patience: int = 3,
        cooldown: int = 4,
        max_cooldown: int = 64,
    ) -> None:
        self.source = torch.tensor(list(source), dtype=torch.long, device=device)
        self.prompt_length = prompt_length
        self.max_length = max_length
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.patience = patience
        self.base_cooldown = self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.drafted = self.accepted = 0
        self._misses = self._skip = 0
        self._start: int | None = None  # where in the haystack the last draft began
        self._cursor: int | None = None  # where the next token sits in the haystack if copying goes on
        self._last_draft = 0

    @property
    def num_drafting_tokens(self) -> int:  # read by transformers' assisted loop
        return self.num_tokens

    def get_candidates(  # type: ignore[override]  # no logits: drafts are verified by the model
        self, input_ids: torch.LongTensor, **kwargs: Any
    ) -> tuple[torch.LongTensor, None]:
        self._last_draft = 0
        room = min(self.num_tokens, self.max_length - 1 - input_ids.shape[1])
        if self._skip > 0:
            self._skip -= 1
            return input_ids, None
        if room <= 0:
            return input_ids, None
        sequence = input_ids[0]
        haystack = torch.cat([self.source, sequence[self.prompt_length :]])
        start = self._find(sequence, haystack)
        if start is None:
            return input_ids, None
        end = start + room
        if start < len(self.source):  # a draft from the answer stops where the answer does
            end = min(end, len(self.source))
        draft = haystack[start:end]
        if len(self.eos):
            stops = torch.isin(draft, self.eos).nonzero()
            if len(stops):
                draft = draft[: int(stops[0])]
        if not len(draft):
            return input_ids, None
        self._start, self._last_draft = start, len(draft)
        self.drafted += len(draft)
        return torch.cat([input_ids, draft.unsqueeze(0)], dim=1), None  # type: ignore[return-value]

    def _find(self, sequence: torch.Tensor, haystack: torch.Tensor) -> int | None:
        """Where the draft starts in ``haystack``: after the last n-gram of ``sequence``."""
        cursor = self._cursor
        for n in range(min(self.max_ngram, len(sequence), len(haystack) - 1), 0, -1):
            tail = sequence[-n:]
            continues = cursor is not None and n <= cursor < len(haystack)
            if continues and torch.equal(haystack[cursor - n : cursor], tail):  # type: ignore[operator]
                return cursor
            windows = haystack[:-1].unfold(0, n, 1)  # every n-gram that has a next token
            hits = (windows == tail).all(dim=1).nonzero().flatten().tolist()
            if not hits:
                continue
            ahead = [h for h in hits if cursor is None or h + n >= cursor]
            in_source = [h for h in ahead if h + n < len(self.source)]
            return (in_source[0] if in_source else hits[-1]) + n
        return None

    def update_candidate_strategy(
        self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int
    ) -> None:
        matches = int(num_matches)
        self.accepted += matches
        if not self._last_draft:
            if self._cursor is not None:
                self._cursor += 1  # one plain token: copying may still go on in step
            return
        assert self._start is not None
        self._cursor = self._start + matches + 1
        if matches:
            self._misses, self.cooldown = 0, self.base_cooldown
            return
        self._misses += 1
        if self._misses >= self.patience:
            self._skip, self._misses = self.cooldown, 0
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)


def generate_with_lookup(
    loaded: LoadedModel,
    prompt: Prompt,
    *,
    policy: LookupPolicy,
    streamer: Any = None,
    criteria: Sequence[Any] = (),
    num_tokens: int = DRAFT_TOKENS,
) -> list[int]:
    """One row, greedy, with prompt-lookup drafts; its new token ids. Records the tokens per
    forward pass in ``policy``."""
    from transformers import StoppingCriteriaList

    model = loaded.model
    input_ids, attention_mask = loaded.left_padded([prompt])
    counter = ForwardCounter(streamer)
    kwargs: dict[str, Any] = {"pad_token_id": loaded.pad_id, **loaded.generation_kwargs}
    kwargs.update(prompt_lookup_num_tokens=num_tokens, streamer=counter)
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(list(criteria))
    drafter = None
    if answer_drafting_supported(model):
        drafter = AnswerLookup(
            prompt.draft if prompt.draft else prompt.ids,
            prompt_length=len(prompt.ids),
            max_length=len(prompt.ids) + prompt.budget,
            eos_ids=sorted(loaded.eos_ids),
            device=input_ids.device,
            num_tokens=num_tokens,
        )
        model._get_candidate_generator = lambda *args, **kw: drafter  # shadows the private method
    else:
        kwargs["max_matching_ngram_size"] = 3
    try:
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=prompt.budget, **kwargs
            )
    finally:
        if drafter is not None:
            del model._get_candidate_generator
    policy.record(counter.tokens, counter.forwards)
    tokens: list[int] = output[0, input_ids.shape[1] :].tolist()
    return tokens
