"""Win rates of corrected over original answers: pairwise LLM judges and a reward-model judge
(:mod:`.judges`), the tallies and reports (:mod:`.win_rates`), a minimal OpenAI-compatible chat
client for judges served by URL (:mod:`.chat_client`), and ``aligner-chain eval`` (:mod:`.command`).
"""

from training.evaluation.win_rates import (
    EVAL_FIELDS,
    EvalRow,
    judge_win_rates,
    load_eval_rows,
    markdown_table,
    omega,
    reward_model_win_rates,
    write_reports,
)

__all__ = [
    "EVAL_FIELDS",
    "EvalRow",
    "judge_win_rates",
    "load_eval_rows",
    "markdown_table",
    "omega",
    "reward_model_win_rates",
    "write_reports",
]
