"""Keyword arguments are checked by name: a misspelled or unknown one is refused with a ``TypeError``
that names it and the closest valid names, never accepted and ignored."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from difflib import get_close_matches
from typing import ParamSpec, TypeVar

__all__ = ["check_keywords", "strict_keywords"]

P = ParamSpec("P")
R = TypeVar("R")


def check_keywords(owner: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ``TypeError`` when ``given`` holds a name that is not in ``valid``.

    >>> check_keywords("AlignerRunnable", ["on_faliure"], ["on_failure", "model"])
    Traceback (most recent call last):
    TypeError: AlignerRunnable got an unknown keyword argument 'on_faliure' (did you mean 'on_failure'?)
    """
    names = sorted(set(valid))
    unknown = [name for name in given if name not in set(names)]
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    plural = "s" if len(unknown) > 1 else ""
    message = f"{owner} got {'an ' if not plural else ''}unknown keyword argument{plural} {', '.join(parts)}"
    if not all(get_close_matches(name, names, n=1, cutoff=0.6) for name in unknown):
        message += f"; valid names: {', '.join(names)}"
    raise TypeError(message)


def strict_keywords(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function or ``__init__`` so an unknown keyword is refused by :func:`check_keywords`
    (Python's own message names no alternative)."""
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise TypeError(f"{fn.__qualname__} takes **kwargs: check its keywords where they are used")
    valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    owner = fn.__qualname__.removesuffix(".__init__")

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        check_keywords(owner, kwargs, valid)
        return fn(*args, **kwargs)

    return checked
