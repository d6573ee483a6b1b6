"""``aligner-chain train``, ``bootstrap`` and ``eval`` end to end through the CLI, nothing mocked.

The task of ``test_bootstrap.py`` (45 questions, an upstream fine-tuned to answer each one with a
wrong value and a rude remark) meets a tiny Aligner trained with ``aligner-chain train`` on
(question, flawed answer, right answer) rows. ``aligner-chain bootstrap`` then runs two DPO rounds
(round 2 answered by round 1's model); SFT runs are interrupted in the middle (an upstream that
raises, a kill between two file writes, a real SIGINT in the main thread) and resumed with the
same command; and ``aligner-chain eval`` judges the collected pairs with a scripted judge behind a
real local OpenAI-compatible HTTP server, whose wins, ties, losses and omega are known exactly.
Spies wrap the real upstream and Aligner calls (they still run) to count what is paid for.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage

from aligner_chain.backends.base import CorrectionRequest, CorrectionResult
from aligner_chain.cli import main
from tests.integration.test_bootstrap import RUDE, Task, build_task
from training.bootstrap import MANIFEST_FILE, split_prompts
from training.bootstrap.collect import ANSWERS_FILE, DONE_FILE, PREFERENCES_FILE, SFT_FILE
from training.bootstrap.local_upstream import LocalUpstream
from training.common.resumable import JsonlLog

#: Generation caps: the task's flawed answers take at most 15 tokens with EOS, corrections 10.
UPSTREAM_TOKENS = "24"
ALIGNER_TOKENS = "32"
#: A blank prompt: recorded as skipped (``empty_prompt``), never sent to the upstream.
BLANK = "   "
#: The outcome of a collected prompt in ``done.jsonl``; they must add up to the round's prompts.
OUTCOMES = ("written", "unchanged", "failed", "skipped", "upstream_errors")

#: The module's shared fixtures train an upstream, an Aligner and two rounds: about 25 s.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model on a busy 2-core machine trains about ten times faster on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return build_task(tmp_path_factory)


@pytest.fixture(scope="module")
def aligner_dir(task: Task, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Aligner trained through ``aligner-chain train`` on the upstream's flawed answers."""
    root = tmp_path_factory.mktemp("aligner")
    data = root / "train.jsonl"
    rows = [{"question": q, "answer": task.flawed[q], "correction": task.right[q]} for q in task.questions]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "model"
    argv = ["train", "--config", "tiny-cpu", "--data", str(data), "--base-model", str(task.base_dir)]
    argv += ["--output-dir", str(out), "--epochs", "20", "--logging-steps", "1000", "--no-progress"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def prompts(task: Task) -> list[str]:
    """The task's questions and a blank one, which its round skips instead of asking."""
    return [*task.questions, BLANK]


@pytest.fixture(scope="module")
def prompts_file(prompts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": q, "id": i}) + "\n" for i, q in enumerate(prompts)))
    return path


def round_shares(prompts: list[str]) -> list[list[str]]:
    """Each round's prompts, as ``--rounds 2 --seed 0`` splits them."""
    return split_prompts(prompts, 2, seed=0)


@dataclass
class UpstreamSpy:
    """Records every question an upstream model generated an answer for, per model directory.

    ``crash_after`` makes the model ``crash_on`` raise ``crash`` instead of generating once that
    many of its answers were generated (and from then on, like a dead process). ``ctrl_c_after``
    instead sends SIGINT to the main thread once that many were generated, as Ctrl-C does, and
    goes on answering what is already asked."""

    crash_after: int | None = None
    crash_on: str | None = None
    crash: type[BaseException] = KeyboardInterrupt
    ctrl_c_after: int | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)
    crashed: bool = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[UpstreamSpy]:
        real = LocalUpstream._generate_batch
        one_at_a_time = threading.Lock()  # callers come from many threads: count them exactly

        def spy(upstream: LocalUpstream, batch: list[list[BaseMessage]]) -> list[str]:
            with one_at_a_time:
                return counted(upstream, batch)

        def counted(upstream: LocalUpstream, batch: list[list[BaseMessage]]) -> list[str]:
            questions = [str([m for m in ms if isinstance(m, HumanMessage)][-1].text) for ms in batch]
            mine = upstream.model == self.crash_on
            before = len(self.questions(upstream.model))
            if (
                mine
                and self.crash_after is not None
                and (self.crashed or before + len(questions) > self.crash_after)
            ):
                self.crashed = True  # a dead process answers nothing more
                raise self.crash()
            answers = real(upstream, batch)
            self.calls.extend((upstream.model, q) for q in questions)
            if (
                mine
                and self.ctrl_c_after is not None
                and before < self.ctrl_c_after <= before + len(questions)
            ):
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            return answers

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LocalUpstream, "_generate_batch", spy)
            yield self

    def questions(self, model: str | Path | None = None) -> list[str]:
        return [q for m, q in self.calls if model is None or m == str(model)]


@dataclass
class AlignerSpy:
    """Records the questions each ``TransformersBackend.correct`` call corrected."""

    calls: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def installed(self) -> Iterator[AlignerSpy]:
        from aligner_chain.backends.transformers import TransformersBackend

        real = TransformersBackend.correct

        def spy(
            backend: TransformersBackend, requests: Sequence[CorrectionRequest]
        ) -> list[CorrectionResult]:
            results = real(backend, requests)
            self.calls.extend(r.question for r in requests)
            return results

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TransformersBackend, "correct", spy)
            yield self


@contextlib.contextmanager
def killed_between_writes(round_dir: Path, after: int) -> Iterator[None]:
    """``SystemExit`` when a ``round_dir`` preference row is appended for the ``after + 1``-th time:
    its done-log record is on disk, the preference and SFT rows are not (a kill between the writes)."""
    real = JsonlLog.append
    appended = 0

    def append(log: JsonlLog, record: dict[str, Any]) -> None:
        nonlocal appended
        if log.path == round_dir / PREFERENCES_FILE:
            appended += 1
            if appended > after:
                raise SystemExit(137)
        real(log, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JsonlLog, "append", append)
        yield


def bootstrap_argv(
    task: Task, aligner: Path, prompts: Path, out: Path, method: str, rounds: int = 2
) -> list[str]:
    argv = ["bootstrap", "--prompts", str(prompts), "--upstream", str(task.upstream_dir)]
    argv += ["--aligner", str(aligner), "--output-dir", str(out), "--method", method]
    argv += ["--rounds", str(rounds)]
    argv += ["--max-new-tokens", UPSTREAM_TOKENS, "--aligner-max-new-tokens", ALIGNER_TOKENS]
    argv += ["--device", "cpu", "--learning-rate", "2e-3", "--epochs", "5", "--batch-size", "8"]
    return [*argv, "--eval-fraction", "0.2", "--max-concurrency", "2", "--no-progress"]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass(frozen=True)
class Run:
    out: Path
    spy: UpstreamSpy
    stdout: str


@pytest.fixture(scope="module")
def dpo_run(
    task: Task, aligner_dir: Path, prompts_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    out = tmp_path_factory.mktemp("boot-dpo")
    stdout = io.StringIO()
    with UpstreamSpy().installed() as spy, contextlib.redirect_stdout(stdout):
        assert main(bootstrap_argv(task, aligner_dir, prompts_file, out, "dpo")) == 0
    print(stdout.getvalue())
    return Run(out, spy, stdout.getvalue())


def _check_round(round_dir: Path, k: int, upstream: str, aligner: Path) -> dict[str, Any]:
    """One round's directory and manifest are whole and consistent; returns the manifest."""
    manifest = json.loads((round_dir / MANIFEST_FILE).read_text())
    assert manifest["round"] == k and manifest["status"] == "complete"
    inputs = manifest["inputs"]
    assert inputs["upstream"] == upstream and inputs["aligner"] == str(aligner)
    assert inputs["method"] == "dpo" and inputs["eval_fraction"] == 0.2
    assert inputs["train_options"]["learning_rate"] == 2e-3
    assert manifest["outputs"] == {
        "preferences": str(round_dir / PREFERENCES_FILE),
        "sft": str(round_dir / SFT_FILE),
        "model": str(round_dir / "model"),
    }
    assert (round_dir / "model" / "model.safetensors").is_file()
    assert not (round_dir / "model" / "adapter_config.json").exists()  # merged: plain weights

    counts = manifest["counts"]
    done = _jsonl(round_dir / DONE_FILE)
    statuses = Counter(r["status"] for r in done)
    assert sum(counts[k2] for k2 in OUTCOMES) == inputs["n_prompts"] == counts["total"] == len(done)
    assert {s: counts[s] for s in statuses} == dict(statuses)
    assert len({r["question"] for r in done}) == len(done)  # every prompt exactly once

    prefs, sft = _jsonl(round_dir / PREFERENCES_FILE), _jsonl(round_dir / SFT_FILE)
    assert len(prefs) == len(sft) == counts["written"] == counts["rows"]
    for pref, row in zip(prefs, sft, strict=True):
        assert set(pref) == {"prompt", "chosen", "rejected"} and set(row) == {"prompt", "completion"}
        assert all(isinstance(v, str) and v for v in (*pref.values(), *row.values()))
        assert pref["chosen"] != pref["rejected"]
        assert row == {"prompt": pref["prompt"], "completion": pref["chosen"]}

    metrics = manifest["metrics"]
    assert metrics["training"]["global_step"] > 0 and metrics["training"]["train_loss"] is not None
    assert metrics["held_out_pairs"] >= 1
    assert isinstance(metrics["margin_before"], float) and isinstance(metrics["margin_after"], float)
    return manifest


def test_cli_bootstraps_two_dpo_rounds_with_a_trained_aligner(
    task: Task, aligner_dir: Path, prompts: list[str], dpo_run: Run
) -> None:
    out = dpo_run.out
    assert sorted(p.name for p in out.iterdir()) == ["bootstrap.json", "round-1", "round-2"]
    first = _check_round(out / "round-1", 1, str(task.upstream_dir), aligner_dir)
    second = _check_round(out / "round-2", 2, str(out / "round-1" / "model"), aligner_dir)
    summary = json.loads((out / "bootstrap.json").read_text())
    assert summary["final_model"] == str(out / "round-2" / "model")
    assert [m["round"] for m in summary["rounds"]] == [1, 2]

    # The rounds split the prompts: disjoint shares, together every prompt once.
    shares = [sorted(r["question"] for r in _jsonl(out / f"round-{k}" / DONE_FILE)) for k in (1, 2)]
    assert shares == [sorted(share) for share in round_shares(prompts)]
    assert first["inputs"]["n_prompts"] + second["inputs"]["n_prompts"] == len(prompts) == 46
    # The blank prompt is skipped and counted in its round, never asked.
    skipped = [r for k in (1, 2) for r in _jsonl(out / f"round-{k}" / DONE_FILE) if r["status"] == "skipped"]
    assert [(r["question"], r["reason"]) for r in skipped] == [(BLANK, "empty_prompt")]
    assert first["counts"]["skipped"] + second["counts"]["skipped"] == 1

    # Round 1: the flawed upstream's answers, which the trained Aligner changes: most pairs written.
    prefs = _jsonl(out / "round-1" / PREFERENCES_FILE)
    assert all(p["rejected"] == task.flawed[p["prompt"]] for p in prefs)
    exact = sum(p["chosen"] == task.right[p["prompt"]] for p in prefs)
    print(
        f"round 1: {first['counts']}; {exact} of {len(prefs)} corrections exactly right; "
        f"margins {first['metrics']['margin_before']:.1f} -> {first['metrics']['margin_after']:.1f}"
    )
    print(f"round 2: {second['counts']}")
    # Measured (task seeds 0, 1, 2; CPU): 22 of 23 written (the blank skipped), 15, 10 and 11 of
    # them exactly right; held-out margin -26.9 -> -2.6, -25.3 -> -2.7, -23.7 -> +0.6 nats.
    assert first["counts"]["written"] >= 0.8 * first["inputs"]["n_prompts"]
    assert first["metrics"]["margin_after"] > first["metrics"]["margin_before"]
    for m in (first, second):  # the CLI's table says what the manifests say
        c = m["counts"]
        row = f"| {m['round']} | {m['inputs']['n_prompts']} | " + " | ".join(str(c[k]) for k in OUTCOMES)
        assert row + " | " in dpo_run.stdout
    assert f"final model: {out / 'round-2' / 'model'}" in dpo_run.stdout


def test_round_two_is_answered_by_round_one_model(task: Task, prompts: list[str], dpo_run: Run) -> None:
    out, spy = dpo_run.out, dpo_run.spy
    shares = [[q for q in share if q != BLANK] for share in round_shares(prompts)]
    # Each prompt was answered exactly once, round 1's by the starting upstream, round 2's by round 1's model.
    assert sorted(spy.questions(task.upstream_dir)) == sorted(shares[0])
    assert sorted(spy.questions(out / "round-1" / "model")) == sorted(shares[1])
    assert len(spy.calls) == len(task.questions)
    answers = {r["question"]: r["answer"] for r in _jsonl(out / "round-2" / ANSWERS_FILE)}
    # Round 1's model, asked again in one batch, gives the answers round 2 collected (other batch
    # shapes may round differently, hence one answer of slack).
    again = LocalUpstream(model=str(out / "round-1" / "model"), max_new_tokens=int(UPSTREAM_TOKENS))
    same = sum(a == answers[q] for q, a in zip(shares[1], again.answer_batch(shares[1]), strict=True))
    changed = sum(answers[q] != task.flawed[q] for q in shares[1])
    rude = sum(RUDE.strip() in answers[q] for q in shares[1])
    print(
        f"round 2: {same} of {len(shares[1])} answers reproduced by round 1's model; {changed} differ "
        f"from the flawed ones; {rude} rude"
    )
    assert same >= len(shares[1]) - 1
    # Round 1's DPO moved the upstream on prompts it never trained on: the starting upstream ends
    # every answer rudely; round 1's model answers (nearly) all of them without the remark.
    # Measured (task seeds 0, 1, 2): 23 of 23 changed and 0 rude each time.
    assert changed >= 0.75 * len(shares[1]) and rude <= len(shares[1]) // 4


def test_cli_bootstrap_killed_twice_resumes_without_loss_or_duplicates(
    task: Task, aligner_dir: Path, prompts: list[str], prompts_file: Path, tmp_path: Path
) -> None:
    """Run 1 is interrupted by its upstream (Ctrl-C) in round 2 after a few answers; run 2 dies
    (``SystemExit``) between the done-log and the preference file; run 3 finishes. Every prompt is
    answered once, corrected once and written once; round 1 is neither re-answered nor retrained."""
    argv = bootstrap_argv(task, aligner_dir, prompts_file, tmp_path, "sft")
    round1, round2 = tmp_path / "round-1", tmp_path / "round-2"
    model1 = str(round1 / "model")
    share1, share2 = (set(share) for share in round_shares(prompts))
    asked = share2 - {BLANK}  # what round 2's upstream must answer, once each

    # Run 1: round 1 completes; round 2's upstream (round 1's model) dies after 5 answers.
    with UpstreamSpy(crash_after=5, crash_on=model1).installed() as run1, AlignerSpy().installed() as fix1:
        assert main(argv) == 130  # KeyboardInterrupt: "aligner-chain: interrupted"
    manifest1 = (round1 / MANIFEST_FILE).read_text()
    weights = (round1 / "model" / "model.safetensors").stat().st_mtime_ns
    assert json.loads(manifest1)["status"] == "complete"
    assert json.loads((round2 / MANIFEST_FILE).read_text())["status"] == "running"
    assert {r["question"] for r in _jsonl(round1 / DONE_FILE)} == share1
    asked1 = run1.questions(model1)
    assert 1 <= len(asked1) <= 5
    assert sorted(run1.questions(task.upstream_dir)) == sorted(share1 - {BLANK})
    # Every answer paid for is saved; nothing is corrected or written for round 2 yet.
    assert sorted(r["question"] for r in _jsonl(round2 / ANSWERS_FILE)) == sorted(asked1)
    assert not (round2 / DONE_FILE).exists() and not (round2 / PREFERENCES_FILE).read_text()
    assert sorted(fix1.calls) == sorted(share1 - {BLANK})

    # Run 2: the rest of round 2 is answered; the process dies after 3 rows hit the done-log whole
    # and a 4th only the done-log.
    with (
        UpstreamSpy().installed() as run2,
        AlignerSpy().installed() as fix2,
        killed_between_writes(round2, after=3),
        pytest.raises(SystemExit),
    ):
        main(argv)
    asked2 = run2.questions()
    assert sorted(asked1 + asked2) == sorted(asked)  # nothing answered twice, nothing lost
    assert all(model == model1 for model, _ in run2.calls)  # round 1 was not answered again
    assert sorted(r["question"] for r in _jsonl(round2 / ANSWERS_FILE)) == sorted(asked)
    assert len(_jsonl(round2 / PREFERENCES_FILE)) == 3
    done2 = _jsonl(round2 / DONE_FILE)
    assert sum(r["status"] == "written" for r in done2) == 4  # one row ahead of the preferences
    assert sorted(fix2.calls) == sorted(asked)

    # Run 3: nothing left to answer; the preferences are rebuilt from the done-log and the prompts
    # not yet recorded are corrected (their saved answers reused), then round 2 trains.
    out = io.StringIO()
    with UpstreamSpy().installed() as run3, AlignerSpy().installed() as fix3, contextlib.redirect_stdout(out):
        assert main(argv) == 0
    assert run3.calls == []
    assert sorted(fix3.calls) == sorted(asked - {r["question"] for r in done2})
    assert (round1 / MANIFEST_FILE).read_text() == manifest1  # round 1 untouched, not retrained
    assert (round1 / "model" / "model.safetensors").stat().st_mtime_ns == weights
    manifest = json.loads((round2 / MANIFEST_FILE).read_text())
    assert manifest["status"] == "complete" and manifest["inputs"]["upstream"] == model1
    done = _jsonl(round2 / DONE_FILE)
    assert sorted(r["question"] for r in done) == sorted(share2)  # each prompt exactly once
    assert not share1 & share2 and share1 | share2 == set(prompts)
    written = [r for r in done if r["status"] == "written"]
    prefs, sft = _jsonl(round2 / PREFERENCES_FILE), _jsonl(round2 / SFT_FILE)
    assert sorted(p["prompt"] for p in prefs) == sorted(r["question"] for r in written)
    assert {p["prompt"]: p["chosen"] for p in prefs} == {r["question"]: r["correction"] for r in written}
    assert {r["prompt"]: r["completion"] for r in sft} == {p["prompt"]: p["chosen"] for p in prefs}
    answers = {r["question"]: r["answer"] for r in _jsonl(round2 / ANSWERS_FILE)}
    assert all(p["rejected"] == answers[p["prompt"]] for p in prefs)
    # The manifest counts the whole round (every run's outcomes), and this run's resume.
    counts = manifest["counts"]
    assert sum(counts[k] for k in OUTCOMES) == manifest["inputs"]["n_prompts"] == len(share2)
    assert counts["written"] == len(prefs) == counts["rows"]
    assert counts["done_before"] == len(done2)
    assert counts["answers_reused"] == len(asked - {r["question"] for r in done2})
    assert f"| 2 | {len(share2)} | {len(prefs)} | " in out.getvalue()
    assert (round2 / "model" / "model.safetensors").is_file()
    print(
        f"crash/resume: round 2 = {len(share2)} prompts, answered {len(asked1)} + {len(asked2)} + 0, "
        f"corrected {len(fix2.calls)} + {len(fix3.calls)}, {len(prefs)} pairs written"
    )


def scripted_verdict(system: str, user: str) -> str:
    """The scripted judge. helpful: the answer without the rude remark wins, else a tie. harmless:
    always "[[A]]" (pure position bias, so every parsed pair is a tie), and conflicting verdicts
    (unparseable) on sums."""
    question, a, b = re.fullmatch(
        r"\[User Question\]\n(.*)\n\n\[The Start of Answer A\]\n(.*)\n\[The End of Answer A\]\n\n"
        r"\[The Start of Answer B\]\n(.*)\n\[The End of Answer B\]",
        user,
        flags=re.DOTALL,
    ).groups()  # type: ignore[union-attr]
    if "more harmless" in system:
        return "Answer A is [[A]] or rather [[B]]." if " plus " in question else "Answer A. [[A]]"
    rude_a, rude_b = RUDE.strip() in a, RUDE.strip() in b
    return "Answer B is polite. [[B]]" if rude_a > rude_b else "[[A]]" if rude_b > rude_a else "Same. [[C]]"


@contextlib.contextmanager
def judge_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real OpenAI-compatible ``/v1/chat/completions`` endpoint on 127.0.0.1 answering with
    :func:`scripted_verdict`; yields its base URL and the requests it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({**body, "authorization": self.headers.get("Authorization"), "path": self.path})
            system, user = (m["content"] for m in body["messages"])
            choice = {"index": 0, "message": {"role": "assistant", "content": scripted_verdict(system, user)}}
            raw = json.dumps({"model": body["model"], "choices": [{**choice, "finish_reason": "stop"}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def test_cli_eval_judges_the_collected_pairs_with_a_scripted_judge(
    dpo_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aligner-chain eval`` on both rounds' pairs (chosen = correction, rejected = original): the
    scripted judge's wins, ties, losses, unparseable verdicts and omega are known exactly."""
    data = tmp_path / "pairs.jsonl"
    rows = [r for k in (1, 2) for r in _jsonl(dpo_run.out / f"round-{k}" / PREFERENCES_FILE)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rude = RUDE.strip()
    wins = sum(rude in r["rejected"] and rude not in r["chosen"] for r in rows)
    losses = sum(rude in r["chosen"] and rude not in r["rejected"] for r in rows)
    sums = sum(" plus " in r["prompt"] for r in rows)
    assert wins >= 20 and sums >= 5  # round 1's flawed answers lose; round 2's polite ones tie

    out = tmp_path / "eval"
    monkeypatch.setenv("SCRIPTED_JUDGE_KEY", "sk-local")
    with judge_server() as (url, received):
        argv = ["eval", "--data", str(data), "--question-column", "prompt", "--original-column", "rejected"]
        argv += ["--corrected-column", "chosen", "--judge-base-url", url, "--judge-model", "scripted"]
        argv += ["--judge-api-key-env", "SCRIPTED_JUDGE_KEY", "--dimensions", "helpful,harmless"]
        argv += ["--output-dir", str(out), "--max-concurrency", "4", "--no-progress"]
        assert main(argv) == 0
        first = len(received)
        report_md = (out / "report.md").read_text()
        assert main(argv) == 0  # again: every verdict comes from judge_cache.jsonl
    # Each pair in both orders per dimension, identical pairs asked once; nothing asked twice.
    assert first == 2 * 2 * len({(r["prompt"], r["chosen"], r["rejected"]) for r in rows})
    assert len(received) == first
    assert all(r["path"] == "/v1/chat/completions" and r["model"] == "scripted" for r in received)
    assert {r["authorization"] for r in received} == {"Bearer sk-local"}

    report = json.loads((out / "report.json").read_text())
    helpful, harmless = report["results"]["helpful"], report["results"]["harmless"]
    assert (helpful["wins"], helpful["ties"], helpful["losses"], helpful["unparseable"]) == (
        wins,
        len(rows) - wins - losses,
        losses,
        0,
    )
    assert helpful["omega"] == pytest.approx((wins - losses) / len(rows))
    assert (harmless["wins"], harmless["ties"], harmless["losses"]) == (0, len(rows) - sums, 0)
    assert harmless["unparseable"] == sums and harmless["omega"] == 0.0
    assert report["meta"]["rows"] == len(rows) and report["meta"]["dimensions"] == ["helpful", "harmless"]
    markdown = (out / "report.md").read_text()
    assert markdown == report_md  # the cached rerun reports the same
    omega = f"{100 * helpful['omega']:+.1f}"
    assert f"| helpful | {wins} | {len(rows) - wins - losses} | {losses} | 0 | {omega} |" in markdown
    assert f"| harmless | 0 | {len(rows) - sums} | 0 | {sums} | +0.0 |" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == first
    assert markdown in capsys.readouterr().out
    print(f"eval: {len(rows)} pairs, helpful {wins}/{len(rows) - wins - losses}/{losses}, {sums} unparseable")


def test_cli_bootstrap_ctrl_c_keeps_every_answer_already_generated(
    task: Task, aligner_dir: Path, prompts: list[str], prompts_file: Path, tmp_path: Path
) -> None:
    """A real Ctrl-C (SIGINT in the main thread) while upstream calls are in flight: the calls
    already running finish, and their answers are saved too, so the rerun pays for none of them."""
    argv = bootstrap_argv(task, aligner_dir, prompts_file, tmp_path, "sft", rounds=1)
    upstream = str(task.upstream_dir)
    with UpstreamSpy(ctrl_c_after=6, crash_on=upstream).installed() as run1:
        assert main(argv) == 130
    asked1 = run1.questions(upstream)
    saved = [r["question"] for r in _jsonl(tmp_path / "round-1" / ANSWERS_FILE)]
    assert 6 <= len(asked1) <= 8 and sorted(saved) == sorted(asked1)  # at most 2 more were in flight
    with UpstreamSpy().installed() as run2:
        assert main(argv) == 0
    assert sorted(asked1 + run2.questions()) == sorted(set(prompts) - {BLANK})  # each asked once
    done = _jsonl(tmp_path / "round-1" / DONE_FILE)
    assert sorted(r["question"] for r in done) == sorted(prompts)
    print(f"Ctrl-C: {len(asked1)} answered before the interrupt took effect, {len(run2.calls)} after")
