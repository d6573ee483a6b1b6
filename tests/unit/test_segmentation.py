"""The incremental markdown-aware sentence segmenter (sentencex underneath)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from aligner_chain.segmentation import StreamSegmenter, Unit, segment

DOC = """# Title

Dr. Smith arrived at 3.14 p.m. yesterday. He said "Hello!" and left... Then e.g. this happened. See https://example.com/a.b?x=1.2 for more. Use `os.path.join("a. B", c)` here. Done!

1. Install the package. It takes e.g. 5 min.
2. Run `make test`.
- Bullet one, i.e. the first.
- Bullet two? Yes.

> Quoted text. Second quoted sentence.

```python
x = 3.14  # Dr. Who. Not a sentence split.

print("Hello. World.")
```

| Name | Value |
|------|-------|
| pi   | 3.14  |

Name | Age
---|---
Bob | 3

---
~~~
``` not a closer
~~~
Final sentence without newline"""  # noqa: E501


def collect(chunks: list[str]) -> list[Unit]:
    return list(StreamSegmenter().stream(chunks))


def chunkings(text: str, seed: int = 0) -> Iterator[tuple[str, list[str]]]:
    rnd = random.Random(seed)
    yield "whole", [text]
    yield "chars", list(text)
    yield "words", [w for w in text.split(" ") for w in (w, " ")][:-1]
    for k in range(3):
        out, i = [], 0
        while i < len(text):
            n = rnd.randint(1, 12)
            out.append(text[i : i + n])
            i += n
        yield f"random{k}", out


@pytest.mark.parametrize(("name", "chunks"), list(chunkings(DOC)))
def test_lossless_and_independent_of_the_chunking(name: str, chunks: list[str]) -> None:
    units = collect(chunks)
    assert "".join(u.text for u in units) == DOC
    assert units == segment(DOC)


def test_markdown_blocks_and_sentences() -> None:
    got = [(u.kind, u.text.strip()) for u in segment(DOC) if u.kind != "blank"]
    assert got == [
        ("heading", "# Title"),
        ("sentence", "Dr. Smith arrived at 3.14 p.m. yesterday."),
        ("sentence", 'He said "Hello!" and left...'),
        ("sentence", "Then e.g. this happened."),
        ("sentence", "See https://example.com/a.b?x=1.2 for more."),
        ("sentence", 'Use `os.path.join("a. B", c)` here.'),
        ("sentence", "Done!"),
        ("sentence", "1. Install the package."),
        ("sentence", "It takes e.g. 5 min."),
        ("sentence", "2. Run `make test`."),
        ("sentence", "- Bullet one, i.e. the first."),
        ("sentence", "- Bullet two?"),
        ("sentence", "Yes."),
        ("sentence", "> Quoted text."),
        ("sentence", "Second quoted sentence."),
        ("code", '```python\nx = 3.14  # Dr. Who. Not a sentence split.\n\nprint("Hello. World.")\n```'),
        ("table", "| Name | Value |\n|------|-------|\n| pi   | 3.14  |"),
        ("table", "Name | Age\n---|---\nBob | 3"),
        ("rule", "---"),
        ("code", "~~~\n``` not a closer\n~~~"),
        ("sentence", "Final sentence without newline"),
    ]


def test_lead_body_and_trail_put_a_unit_back_together() -> None:
    units = segment("## A title\n1. Install it. It is quick.\n> Quoted.\n  Indented line.\n")
    parts = [(u.lead, u.body, u.trail, u.line_start, u.is_prose) for u in units]
    assert parts == [
        ("## ", "A title", "\n", True, True),
        ("1. ", "Install it.", " ", True, True),
        ("", "It is quick.", "\n", False, True),
        ("> ", "Quoted.", "\n", True, True),
        ("  ", "Indented line.", "\n", True, True),
    ]
    assert all(u.lead + u.body + u.trail == u.text for u in units)
    blank, code = segment("\n```\nx = 1\n```\n")
    assert not blank.is_prose and not code.is_prose and code.body == "```\nx = 1\n```"


def test_sentences_come_out_before_the_stream_ends() -> None:
    seg = StreamSegmenter()
    assert seg.feed("First sentence here. Second") == []  # "Second" may still grow
    out = seg.feed(" sentence")  # the next word is complete: the first sentence is safe
    assert [u.text for u in out] == ["First sentence here. "]
    assert seg.feed(" is longer. Third") == []
    assert [u.text for u in seg.feed(" one")] == ["Second sentence is longer. "]
    assert [u.text for u in seg.flush()] == ["Third one"]


def test_an_abbreviation_at_a_chunk_edge_is_not_a_boundary() -> None:
    pieces = ["We met Dr", ". ", "Smith at 3", ".", "14 p", ".m. ", "Then ", "we left."]
    assert [u.body for u in collect(pieces)] == ["We met Dr. Smith at 3.14 p.m.", "Then we left."]


def test_a_code_block_is_one_unit_emitted_at_its_closing_fence() -> None:
    seg = StreamSegmenter()
    assert seg.feed("```\nfoo. Bar.\n\nbaz\n") == []
    assert seg.feed("```\n") == [Unit("code", "```\nfoo. Bar.\n\nbaz\n```\n")]


def test_an_unclosed_fence_is_flushed_as_code() -> None:
    seg = StreamSegmenter()
    assert [u.text for u in seg.feed("Intro.\n```js\nlet a = 1. \n")] == ["Intro.\n"]
    assert seg.flush() == [Unit("code", "```js\nlet a = 1. \n")]


def test_an_indented_fence_inside_a_list_item() -> None:
    text = "1. Step one:\n   ```bash\n   pip install x. y\n   ```\n2. Step two.\n"
    units = collect(list(text))
    assert [u.kind for u in units] == ["sentence", "code", "sentence"]
    assert units[1].text == "   ```bash\n   pip install x. y\n   ```\n"


def test_a_table_is_emitted_when_a_line_is_not_a_row() -> None:
    seg = StreamSegmenter()
    assert seg.feed("| a | b |\n|---|---|\n| 1 | 2 |\n") == []
    assert [u.kind for u in seg.feed("\n")] == ["table", "blank"]


def test_an_open_inline_code_span_is_not_split() -> None:
    seg = StreamSegmenter()
    assert seg.feed("Call `foo. Bar baz ") == []
    out = seg.feed("qux` now. Next ") + seg.flush()
    assert [u.body for u in out] == ["Call `foo. Bar baz qux` now.", "Next"]


def test_line_breaks_end_units_and_markers_may_arrive_in_pieces() -> None:
    assert [u.text for u in collect(["no period here\nnext line also\n"])] == [
        "no period here\n",
        "next line also\n",
    ]
    units = collect(["1", "0", ".", " Tenth item. ", "More.\n"])
    assert [(u.text, u.marker) for u in units] == [("10. Tenth item. ", "10. "), ("More.\n", "")]


def test_horizontal_rule_or_bullet() -> None:
    units = collect(list("- - -\n- item\n***\n**bold** start. Next.\n"))
    assert [(u.kind, u.text.strip()) for u in units] == [
        ("rule", "- - -"),
        ("sentence", "- item"),
        ("rule", "***"),
        ("sentence", "**bold** start."),
        ("sentence", "Next."),
    ]


def test_an_opening_quote_waits_for_its_close() -> None:
    seg = StreamSegmenter()
    assert seg.feed('Good. "Are you ') == []  # sentencex would glue the open quote to "Good."
    out = seg.feed('sure?" she asked. "Yes." ') + seg.flush()
    assert [u.body for u in out] == ["Good.", '"Are you sure?" she asked.', '"Yes."']


_SENTENCES = [
    "You and I. Did you see Albert I. Theodore yesterday? No.",
    "The sun sets at 7 p.m. Tom wakes up then. In the evening at 7 p.m. Tom wakes up.",
    "Prices rose 3.5 percent. The U.S. Treasury said so. Next, e.g. bonds fell.",
    "He wrote v2.10.3 in the notes. Check https://a.b/c.d.e?f=g.h now. Done!",
    'She said "Go." He went. "Why?" he asked. No one knew...',
    "The Nobel laureate Dr. A. B. Smith Jr. spoke. Everyone listened.",
    "Call `a.b()`. Then `c. D` ok.",
    "Price is $3.50 (approx.). Fine.",
    "\u2018Single\u2019 quotes. \u00abGuillemets\u00bb here. (Parens.) Next.",
]
_BLOCKS = [
    lambda r: " ".join(r.sample(_SENTENCES, r.randint(1, 3))) + "\n",
    lambda r: "".join(f"{i + 1}. {r.choice(_SENTENCES)}\n" for i in range(r.randint(1, 3))),
    lambda r: "".join(f"- {r.choice(_SENTENCES)}\n" for _ in range(r.randint(1, 3))),
    lambda r: "```py\n" + r.choice(_SENTENCES) + "\n\n" + r.choice(_SENTENCES) + "\n```\n",
    lambda r: "| a | b |\n|---|---|\n| " + r.choice(_SENTENCES)[:10] + " | 1.5 |\n",
    lambda r: "# Heading " + r.choice(_SENTENCES)[:12] + "\n",
    lambda r: "> " + r.choice(_SENTENCES) + "\n",
    lambda r: "\n",
    lambda r: "---\n",
    lambda r: "x | y\n--|--\n1 | 2\n",
]


def test_random_documents_in_random_chunks_give_the_same_units() -> None:
    rnd = random.Random(99)
    for _ in range(150):
        doc = "".join(rnd.choice(_BLOCKS)(rnd) for _ in range(rnd.randint(1, 6)))
        doc = doc if rnd.random() < 0.5 else doc.rstrip("\n")
        whole = segment(doc)
        assert "".join(u.text for u in whole) == doc
        chunks, i = [], 0
        while i < len(doc):
            n = rnd.choice([1, 1, 2, 3, 5, 8, 20])
            chunks.append(doc[i : i + n])
            i += n
        assert collect(chunks) == whole, doc
