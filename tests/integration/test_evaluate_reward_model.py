"""The reward-model judge with a tiny sequence-classification model built on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluation import EvalRow, reward_model_win_rates
from training.evaluation.judges import RewardModelJudge

ROWS = [
    EvalRow("How do I boil an egg?", "Put it in the microwave.", "Simmer it for nine minutes."),
    EvalRow("What is the capital of France?", "Paris is in Germany.", "Paris is the capital of France."),
    EvalRow("Is it safe to mix bleach and ammonia?", "Yes.", "No, it makes toxic gas."),
    EvalRow("Name a colour.", "Blue.", "Blue."),
    EvalRow("What is 2 plus 2?", "It is 5, I think, or maybe 3.", "4."),
    EvalRow("Say hi.", "Hello there, friend!", "Hi."),
]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from training.demo.tiny_model import build_tiny_tokenizer

    corpus = [t for r in ROWS for t in (r.question, r.original, r.corrected)] * 5
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("reward-model")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _direct_scores(path: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """Each (question, answer) scored alone, unpadded: what batching must reproduce."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.inference_mode():
        return [float(model(**tokenizer(q, a, return_tensors="pt")).logits[0, 0]) for q, a in pairs]


def test_reward_judge_scores_match_unbatched_forward(reward_dir):
    judge = RewardModelJudge(reward_dir, batch_size=4, device="cpu")
    pairs = [(r.question, r.corrected) for r in ROWS]
    assert judge.score(pairs) == pytest.approx(_direct_scores(reward_dir, pairs), abs=1e-4)


def test_reward_model_win_rates_follow_the_scores_and_margin(reward_dir):
    judge = RewardModelJudge(reward_dir, batch_size=3, device="cpu")
    corrected = _direct_scores(reward_dir, [(r.question, r.corrected) for r in ROWS])
    original = _direct_scores(reward_dir, [(r.question, r.original) for r in ROWS])
    deltas = [c - o for c, o in zip(corrected, original, strict=True)]
    assert deltas[3] == pytest.approx(0.0, abs=1e-5)  # identical answers tie
    details: list[dict] = []
    result = reward_model_win_rates(ROWS, judge, margin=1e-4, details=details)["reward"]
    wins = sum(d > 1e-4 for d in deltas)
    losses = sum(d < -1e-4 for d in deltas)
    ties = len(ROWS) - wins - losses
    assert (result["wins"], result["ties"], result["losses"], result["unparseable"]) == (
        wins,
        ties,
        losses,
        0,
    )
    assert result["omega"] == pytest.approx((wins - losses) / len(ROWS))
    assert result["mean_reward_delta"] == pytest.approx(sum(deltas) / len(deltas), abs=1e-4)
    assert [d["outcome"] for d in details][3] == "tie"
    # identical answers tie even with no margin at all (score noise from padding does not decide)
    exact: list[dict] = []
    reward_model_win_rates(ROWS, judge, margin=0.0, details=exact)
    assert exact[3]["outcome"] == "tie"
    # a margin wider than every difference makes every pair a tie
    wide = reward_model_win_rates(ROWS, judge, margin=max(abs(d) for d in deltas) + 1)["reward"]
    assert (wide["wins"], wide["ties"], wide["losses"], wide["omega"]) == (0, len(ROWS), 0, 0.0)


def test_cli_eval_with_a_reward_model(tmp_path, reward_dir, capsys):
    from aligner_chain.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": r.question, "answer": r.original, "correction": r.corrected}) + "\n"
            for r in ROWS
        )
    )
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(data), "--original-column", "answer", "--corrected-column", "correction"]
    assert main([*argv, "--reward-model", str(reward_dir), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    expected = reward_model_win_rates(ROWS, RewardModelJudge(reward_dir, device="cpu"))["reward"]
    assert report["results"]["reward"]["wins"] == expected["wins"]
    assert report["results"]["reward"]["omega"] == pytest.approx(expected["omega"])
    assert report["meta"]["rows"] == len(ROWS)
    assert (out / "report.md").read_text().startswith("## Corrected vs original (reward model)")
    assert (out / "report.png").stat().st_size > 0
    assert "| reward |" in capsys.readouterr().out
