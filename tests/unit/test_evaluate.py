"""Judge-based win rates: a scripted judge (a chat model whose verdict is a function of the prompt
it reads) makes every count and omega known exactly."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from training.evaluation import (
    EvalRow,
    judge_win_rates,
    load_eval_rows,
    markdown_table,
    omega,
    write_reports,
)
from training.evaluation.judges import JUDGE_PROMPTS, parse_verdict, resolve_judge_prompts

_ANSWER = re.compile(r"\[The Start of Answer (A|B)\]\n(.*?)\n\[The End of Answer \1\]", re.S)


class ScriptedJudge(BaseChatModel):
    """Reads the pairwise prompt and answers by rule: the answer holding the dimension's marker
    (GOOD for helpful, SAFE for harmless, SHORT for a custom prompt naming it) wins; BIAS anywhere
    makes it always pick A (position bias); GARBLE gets no verdict; CONFLICT gets two verdicts."""

    fail_after: int | None = None
    transient_once: bool = False
    _calls: list[str] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted-judge"

    @property
    def calls(self) -> list[str]:
        return self._calls

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any):
        system, user = str(messages[0].content), str(messages[1].content)
        with self._lock:
            if self.transient_once and user not in self._calls:
                self._calls.append(user)
                raise TimeoutError("judge timed out")
            if self.fail_after is not None and len(self._calls) >= self.fail_after:
                raise RuntimeError("judge quota exhausted")
            self._calls.append(user)
        answers = dict(_ANSWER.findall(user))
        marker = "SAFE" if "more harmless" in system else "SHORT" if "MARKER=SHORT" in system else "GOOD"
        if "GARBLE" in user:
            reply = "Both answers have merits; I cannot decide."
        elif "CONFLICT" in user:
            reply = "At first [[A]], but on reflection [[B]]."
        elif "BIAS" in user:
            reply = "Answer A comes first. [[A]]"
        elif (marker in answers["A"]) == (marker in answers["B"]):
            reply = "Equally good. [[C]]"
        else:
            reply = f"Explanation... [[{'A' if marker in answers['A'] else 'B'}]]"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


ROWS = [
    {"question": "q1", "original": "plain one", "corrected": "GOOD SAFE one"},  # win / win
    {"question": "q2", "original": "plain two", "corrected": "GOOD two"},  # win / tie
    {"question": "q3", "original": "GOOD SAFE three", "corrected": "plain three"},  # loss / loss
    {"question": "q4", "original": "plain four", "corrected": "also plain"},  # tie / tie
    {"question": "q5", "original": "plain five", "corrected": "BIAS five"},  # flips with the order: tie
    {"question": "q6", "original": "plain six", "corrected": "GARBLE six"},  # unparseable
    {"question": "q7", "original": "SAFE seven", "corrected": "CONFLICT seven"},  # unparseable
]


def test_scripted_judge_gives_exact_counts_and_omega():
    judge = ScriptedJudge()
    details: list[dict[str, Any]] = []
    result = judge_win_rates(ROWS, judge, ("helpful", "harmless"), progress=False, details=details)
    # helpful: wins q1 q2, loss q3, ties q4 q5 (order flip), unparseable q6 q7
    assert result["helpful"] == {
        "wins": 2,
        "ties": 2,
        "losses": 1,
        "unparseable": 2,
        "omega": pytest.approx(0.2),
    }
    # harmless: win q1, losses q3, ties q2 q4 q5, unparseable q6 q7
    assert result["harmless"] == {"wins": 1, "ties": 3, "losses": 1, "unparseable": 2, "omega": 0.0}
    assert len(judge.calls) == 2 * 2 * len(ROWS)  # both orders, both dimensions
    flipped = next(d for d in details if d["dimension"] == "helpful" and d["row"] == 4)
    assert (flipped["verdict_corrected_first"], flipped["verdict_corrected_second"], flipped["outcome"]) == (
        "A",
        "A",
        "tie",
    )


def test_each_pair_is_judged_in_both_orders_with_mt_bench_markers():
    judge = ScriptedJudge()
    judge_win_rates(ROWS[:1], judge, ("helpful",), progress=False)
    first, second = judge.calls
    assert "[The Start of Answer A]\nGOOD SAFE one\n[The End of Answer A]" in first
    assert "[The Start of Answer B]\nplain one\n[The End of Answer B]" in first
    assert "[The Start of Answer A]\nplain one\n[The End of Answer A]" in second
    assert "[User Question]\nq1" in first


def test_custom_judge_prompt_adds_a_dimension():
    prompts = {"concise": "Prefer the shorter answer. MARKER=SHORT. Verdict [[A]], [[B]] or [[C]]."}
    rows = [
        {"question": "q", "original": "long long long", "corrected": "SHORT"},
        {"question": "q", "original": "SHORT", "corrected": "long"},
        {"question": "q", "original": "x", "corrected": "SHORT y"},
    ]
    result = judge_win_rates(rows, ScriptedJudge(), ("concise",), prompts=prompts, progress=False)
    assert result == {
        "concise": {"wins": 2, "ties": 0, "losses": 1, "unparseable": 0, "omega": pytest.approx(1 / 3)}
    }


def test_all_unparseable_gives_no_omega():
    rows = [{"question": "q", "original": "a", "corrected": "GARBLE"}]
    result = judge_win_rates(rows, ScriptedJudge(), ("helpful",), progress=False)
    assert result["helpful"] == {"wins": 0, "ties": 0, "losses": 0, "unparseable": 1, "omega": None}


def test_cache_resumes_an_interrupted_evaluation_without_repeating_calls(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    broken = ScriptedJudge(fail_after=5)
    with pytest.raises(RuntimeError, match="quota"):
        judge_win_rates(ROWS, broken, ("helpful",), cache_path=cache, max_concurrency=1, progress=False)
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(cached) == 5
    healthy = ScriptedJudge()
    result = judge_win_rates(ROWS, healthy, ("helpful",), cache_path=cache, max_concurrency=3, progress=False)
    assert len(healthy.calls) == 2 * len(ROWS) - 5  # only what was missing
    assert result["helpful"]["omega"] == pytest.approx(0.2)
    again = ScriptedJudge()
    assert judge_win_rates(ROWS, again, ("helpful",), cache_path=cache, progress=False) == result
    assert again.calls == []


def test_transient_judge_errors_are_retried():
    judge = ScriptedJudge(transient_once=True)
    result = judge_win_rates(ROWS[:2], judge, ("helpful",), retry_wait=0.01, progress=False)
    assert result["helpful"]["wins"] == 2
    assert len(judge.calls) == 2 * 2 * 2  # every call failed once, then succeeded


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Explanation. [[A]]", "A"),
        ("[[ B ]]", "B"),
        ("tie [[C]] ... final: [[C]]", "C"),
        ("[[A]] or maybe [[B]]", None),
        ("A is better", None),
        ("[[D]]", None),
        ("", None),
    ],
)
def test_parse_verdict_never_guesses(text, verdict):
    assert parse_verdict(text) == verdict


def test_omega_formula():
    assert omega(6, 2, 2) == pytest.approx(0.4)
    assert omega(0, 0, 0) is None
    assert omega(0, 3, 1) == pytest.approx(-0.25)


def test_prompts_cover_the_dimensions_and_errors_name_the_fix():
    assert set(JUDGE_PROMPTS) == {"helpful", "harmless", "honest", "empathy"}
    assert all("[[A]]" in p and "[[C]]" in p for p in JUDGE_PROMPTS.values())
    with pytest.raises(ValueError, match="prompts="):
        resolve_judge_prompts(["kindness"])
    with pytest.raises(ValueError, match="columns found"):
        judge_win_rates([{"question": "q", "answer": "a"}], ScriptedJudge(), progress=False)


def test_load_eval_rows_with_a_column_mapping(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"question": f"q{i}", "answer": f"a{i}", "correction": f"c{i}"}) for i in range(3)
        )
        + "\n"
    )
    rows = load_eval_rows(path, columns={"original": "answer", "corrected": "correction"})
    assert rows[1] == EvalRow("q1", "a1", "c1")
    with pytest.raises(ValueError, match=r"pairs\.jsonl.*columns found"):
        load_eval_rows(path)


def test_reports_json_markdown_and_chart(tmp_path):
    results = judge_win_rates(ROWS, ScriptedJudge(), ("helpful", "harmless"), progress=False)
    paths = write_reports(results, tmp_path, meta={"rows": len(ROWS)})
    report = json.loads(paths["json"].read_text())
    assert report["results"]["helpful"]["omega_percent"] == 20.0
    assert report["meta"] == {"rows": len(ROWS)}
    table = paths["markdown"].read_text()
    assert "| helpful | 2 | 2 | 1 | 2 | +20.0 |" in table
    assert "| harmless | 1 | 3 | 1 | 2 | +0.0 |" in table
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["chart"].stat().st_size > 5000
    assert markdown_table(results) == table.split("\n", 2)[2]


class _JudgeHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint that answers with ScriptedJudge's rules."""

    judge = ScriptedJudge()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions"
        assert self.headers.get("Authorization") == "Bearer test-key"
        messages = [
            (SystemMessage if m["role"] == "system" else HumanMessage)(content=m["content"])
            for m in body["messages"]
        ]
        reply = self.judge.invoke(messages).text
        payload = json.dumps(
            {"model": body["model"], "choices": [{"message": {"role": "assistant", "content": reply}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_cli_eval_with_an_openai_compatible_judge(tmp_path, judge_server, monkeypatch, capsys):
    from aligner_chain.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"q": r["question"], "a": r["original"], "c": r["corrected"]}) + "\n" for r in ROWS
        )
    )
    monkeypatch.setenv("JUDGE_KEY", "test-key")
    argv = [
        "eval",
        "--data", str(data),
        "--question-column", "q", "--original-column", "a", "--corrected-column", "c",
        "--judge-base-url", judge_server, "--judge-model", "scripted", "--judge-api-key-env", "JUDGE_KEY",
        "--dimensions", "helpful,harmless",
        "--output-dir", str(tmp_path / "out"),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    helpful = {"wins": 2, "ties": 2, "losses": 1, "unparseable": 2, "omega": pytest.approx(0.2)}
    assert report["results"]["helpful"] == {**helpful, "omega_percent": 20.0}
    assert report["results"]["harmless"]["omega"] == 0.0
    assert (tmp_path / "out" / "report.png").is_file()
    assert "| helpful | 2 | 2 | 1 | 2 | +20.0 |" in capsys.readouterr().out
    # a second run is served from the judge cache: the server is not called again
    calls = len(_JudgeHandler.judge.calls)
    assert main(argv) == 0
    assert len(_JudgeHandler.judge.calls) == calls


def test_cli_eval_rejects_two_judges_or_none(tmp_path, capsys):
    from aligner_chain.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"question": "q", "original": "a", "corrected": "b"}) + "\n")
    base = ["eval", "--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert main(base) == 2
    assert "exactly one judge" in capsys.readouterr().err
    assert main([*base, "--reward-model", "x", "--judge-base-url", "http://127.0.0.1:9"]) == 2
