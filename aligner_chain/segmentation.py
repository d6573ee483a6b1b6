"""Sentence units of streamed markdown text, for sentence-level correction.

    segmenter = StreamSegmenter()
    for chunk in upstream_text_chunks:
        for unit in segmenter.feed(chunk):      # units that are surely complete
            ...
    for unit in segmenter.flush():              # the rest, at the end of the stream
        ...

Sentence boundaries come from `sentencex <https://pypi.org/project/sentencex/>`_ (Wikimedia's
maintained, lossless segmenter: ``"".join(segment(t)) == t``). sentencex splits finished text; the
incremental and markdown rules around it are written here because no maintained library segments a
stream as it arrives or knows markdown blocks:

* Lossless and chunking-independent: ``"".join(u.text for u in units)`` is everything fed, and the
  units do not depend on how the text was chunked.
* Markdown blocks: a fenced code block (``` or ~~~, any indent) and a pipe table (all its rows) are one
  unit each, emitted whole; a heading and a horizontal rule are one unit each; a list item or a quote
  line starts a new unit (its marker rides on the first sentence as :attr:`Unit.marker`); a line break
  always ends a unit; blank lines are units of their own. Prose within a line is split by sentencex,
  with inline code spans masked so it never splits inside ``code.like.this()``.
* When a sentence is complete: the current line is split up to its last whitespace (so the splitter
  always sees the next word whole), every segment but the last is committed, and the last one at the
  newline or at :meth:`StreamSegmenter.flush`. A segment ending in an opening quote or bracket waits
  for more text. The splitter always sees the line from its start (sentencex looks left too).

Not handled: indented (unfenced) code blocks and list items that span several lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["PROSE_KINDS", "StreamSegmenter", "Unit", "UnitKind", "segment"]

UnitKind = Literal["sentence", "code", "table", "heading", "rule", "blank"]
PROSE_KINDS: frozenset[UnitKind] = frozenset({"sentence", "heading"})
"""Units that are text to correct; the others (code, tables, rules, blank lines) pass through."""

_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_LIST = re.compile(r"^([ \t]*)([-*+]|\d{1,9}[.)])([ \t]+)")
_LIST_MAYBE = re.compile(r"^[ \t]*(\d{1,9}[.)]?|[-*+])$")  # could still become a marker
_QUOTE = re.compile(r"^([ \t]*(?:>[ \t]?)+)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_HEADING_MARKER = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*")
_HR = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_TABLE_DELIM = re.compile(
    r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*$|^[ \t]*\|[ \t]*:?-+:?[ \t]*\|[ \t]*$"
)
# A segment ending in an *opening* quote or bracket: the splitter has not seen the closing one yet
# (sentencex glues the quote to the previous sentence, and changes its mind once it is closed).
_OPEN_QUOTE_END = re.compile("(^|\\s)[\"'\u201c\u2018\u00ab(\\[{]+\\s*$")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")

Splitter = Callable[[str], list[str]]


@dataclass(frozen=True)
class Unit:
    """One unit of the text: ``text`` is its exact source (marker, trailing whitespace and newline
    included); ``marker`` the list/quote marker that starts it (``"1. "``, ``"> "``), when any;
    ``line_start`` whether it begins a line."""

    kind: UnitKind
    text: str
    marker: str = ""
    line_start: bool = True

    @property
    def lead(self) -> str:
        """What comes before :attr:`body`: the marker (a heading's ``#`` too) and indentation."""
        rest = self.text
        head = self.marker
        if self.kind == "heading" and (m := _HEADING_MARKER.match(rest)):
            head = m.group(0)
        rest = rest[len(head) :]
        return head + rest[: len(rest) - len(rest.lstrip())]

    @property
    def body(self) -> str:
        """The text to correct: no marker, no surrounding whitespace."""
        return self.text[len(self.lead) :].strip()

    @property
    def trail(self) -> str:
        """The whitespace (newline included) after :attr:`body`."""
        return self.text[len(self.text.rstrip()) :] if self.text.strip() else ""

    @property
    def is_prose(self) -> bool:
        """Whether the unit is text to correct (a sentence or a heading with words)."""
        return self.kind in PROSE_KINDS and bool(self.body)


def _sentencex(language: str) -> Splitter:
    import sentencex

    def split(text: str) -> list[str]:
        return list(sentencex.segment(language, text))

    return split


def _mask_inline_code(text: str) -> str:
    """Inline code spans replaced by same-length filler, so offsets are kept."""
    return _INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), text)


def segment(text: str, language: str = "en") -> list[Unit]:
    """All units of a finished text (what streaming it in any chunks gives)."""
    return list(StreamSegmenter(language).stream([text]))


class StreamSegmenter:
    """Incremental markdown-aware sentence segmenter; ``language`` is a sentencex language code."""

    def __init__(self, language: str = "en") -> None:
        self._split = _sentencex(language)
        self._buf = ""  # text not yet emitted
        self._line_started = True  # is _buf[0] at a line start?
        self._mode: Literal["normal", "fence", "table"] = "normal"
        self._fence = ""  # opening fence (``` or ~~~ ...)
        self._block = ""  # text of the fence or table so far
        self._held: str | None = None  # a prose line with "|": a table header if a delimiter follows
        self._line_done = ""  # body text of the current line already emitted
        self._line_emitted = False  # has the current (incomplete) line produced a unit?
        self._prefix = ""  # a marker ("1. ", "> ") waiting for the line's first sentence

    def feed(self, chunk: str) -> list[Unit]:
        """Add text; the units it completes."""
        self._buf += chunk
        return list(self._drain(final=False))

    def flush(self) -> list[Unit]:
        """End of the text: every unit still open."""
        out = list(self._drain(final=True))
        if self._mode in ("fence", "table") and self._block:
            out.append(Unit("code" if self._mode == "fence" else "table", self._block))
        elif self._held is not None:
            out.extend(self._prose_line(self._held, final_line=True))
        self._mode, self._block, self._held = "normal", "", None
        return out

    def stream(self, chunks: Iterable[str]) -> Iterator[Unit]:
        """Units of the chunks, as each completes."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.flush()

    # -- lines ------------------------------------------------------------------------------------

    def _drain(self, final: bool) -> Iterator[Unit]:
        while True:
            nl = self._buf.find("\n")
            if nl >= 0:
                line, self._buf = self._buf[: nl + 1], self._buf[nl + 1 :]
                started, self._line_started = self._line_started, True
                yield from self._complete_line(line, started)
                continue
            if not self._buf:
                return
            if final:  # the last line has no newline
                line, self._buf = self._buf, ""
                started, self._line_started = self._line_started, True
                yield from self._complete_line(line, started)
                return
            if self._mode == "normal" and self._held is None:
                yield from self._partial_prose()
            return

    def _complete_line(self, line: str, at_line_start: bool) -> Iterator[Unit]:
        if not at_line_start:  # the rest of a line already taken as prose while incomplete
            if not self._line_emitted:
                # nothing emitted yet: handle it as if the line had arrived whole
                line, self._prefix = self._prefix + line, ""
            else:
                yield from self._prose_body(line, final_line=True)
                return
        if self._mode == "fence":
            self._block += line
            stripped = line.strip()
            if stripped.startswith(self._fence[0] * len(self._fence)) and set(stripped) == {self._fence[0]}:
                yield Unit("code", self._block)
                self._mode, self._block = "normal", ""
            return
        if self._mode == "table":
            if "|" in line and line.strip():
                self._block += line
                return
            yield Unit("table", self._block)
            self._mode, self._block = "normal", ""
        if self._held is not None:  # the previous line had a pipe: a table header?
            held, self._held = self._held, None
            if _TABLE_DELIM.match(line.rstrip("\n")):
                self._mode, self._block = "table", held + line
                return
            yield from self._prose_line(held, final_line=True)
        yield from self._start_line(line)

    def _start_line(self, line: str) -> Iterator[Unit]:
        body = line.rstrip("\n")
        if not body.strip():
            yield Unit("blank", line)
        elif m := _FENCE_OPEN.match(body):
            self._mode, self._fence, self._block = "fence", m.group(1), line
        elif body.lstrip().startswith("|"):
            self._mode, self._block = "table", line
        elif _HR.match(body):
            yield Unit("rule", line)
        elif _HEADING.match(body):
            yield Unit("heading", line)
        elif "|" in body:
            self._held = line  # decided by the next line (a table header without a leading pipe)
        else:
            yield from self._prose_line(line, final_line=True)

    def _classify_partial(self, text: str) -> str | None:
        """The kind of a line from its beginning; ``None``: wait for the whole line."""
        t = text.lstrip(" \t")
        if not t or _marker(text) == text:  # a marker alone may still grow ("1." + " ", ">" + " ")
            return None
        if t[0] in "`~":  # maybe a fence
            return None if len(t) < 3 or t[:3] in ("```", "~~~") else "prose"
        if t[0] in "|#" or "|" in text:  # table row, heading, or maybe a table header
            return None
        if t[0] in "-*+_":  # a bullet, or maybe a horizontal rule ("- - -", "***")
            return None if set(t) <= set("-*_+ \t") else "prose"
        if _LIST_MAYBE.match(text):  # "1", "12.", "3)": the marker is not complete yet
            return None
        return "prose"

    def _partial_prose(self) -> Iterator[Unit]:
        if self._line_started:
            if self._classify_partial(self._buf) != "prose":
                return
            # peel off the list/quote marker so the splitter never sees "1. "
            self._prefix = _marker(self._buf)
            self._buf = self._buf[len(self._prefix) :]
            self._line_started = False
            self._line_emitted = False
            self._line_done = ""
        yield from self._prose_body(None, final_line=False)

    def _prose_line(self, line: str, final_line: bool) -> Iterator[Unit]:
        self._prefix, self._line_done = _marker(line), ""
        self._line_emitted = False
        yield from self._prose_body(line[len(self._prefix) :], final_line)

    # -- sentences --------------------------------------------------------------------------------

    def _prose_body(self, text: str | None, final_line: bool) -> Iterator[Unit]:
        """Split prose; ``text=None`` means the incomplete line in the buffer. The splitter sees the
        line's body from its start (what was emitted + the new text), never just the tail."""
        prior = self._line_done
        if text is None:
            src = self._buf
            cut = max(src.rfind(" "), src.rfind("\t"))
            if cut <= 0:
                return
            head = src[: cut + 1]
            masked = _mask_inline_code(prior + head)  # never commit inside an open code span
            if "`" in masked[len(prior) :]:
                head = head[: masked.index("`", len(prior)) - len(prior)]
        else:
            head = text
        full = prior + head
        bounds = self._bounds(full) if head else []
        if not final_line:
            bounds = [b for b in bounds if b < len(full)]  # the last segment may still grow
        done: list[str] = []
        start = len(prior)
        for b in (b for b in bounds if b > len(prior)):
            piece = full[start:b]
            if not final_line and _OPEN_QUOTE_END.search(piece):
                break
            done.append(piece)
            start = b
        if final_line and start < len(full):  # e.g. a splitter boundary inside prior
            done.append(full[start:])
        if final_line and not done and self._prefix:
            done = [""]  # a bare marker ("- ") is never lost
        for piece in done:
            marker, self._prefix = self._prefix, ""
            line_start = not self._line_emitted
            self._line_emitted = True
            yield Unit("sentence", marker + piece, marker=marker, line_start=line_start)
        consumed = sum(len(x) for x in done)
        self._line_done = "" if final_line else prior + head[:consumed]
        if text is None:  # keep the uncommitted tail in the buffer
            self._buf = self._buf[consumed:]

    def _bounds(self, full: str) -> list[int]:
        lengths = [len(x) for x in self._split(_mask_inline_code(full))]
        if sum(lengths) != len(full):  # sentencex is lossless; anything else is a bug to surface
            raise ValueError("the sentence splitter lost text: ''.join(split(t)) != t")
        bounds, pos = [], 0
        for n in lengths:
            pos += n
            if n:
                bounds.append(pos)
        return bounds


def _marker(line: str) -> str:
    if m := _LIST.match(line):
        return m.group(0)
    if m := _QUOTE.match(line):
        return m.group(0)
    return ""
