"""``from training.evaluate import judge_win_rates`` keeps working; the evaluation lives in
:mod:`training.evaluation`."""

from training.evaluation import judge_win_rates, reward_model_win_rates, write_reports

__all__ = ["judge_win_rates", "reward_model_win_rates", "write_reports"]
