"""Aligner fine-tuning: identity warm-up, then the residual correction stage.

:func:`train_aligner` runs TRL's ``SFTTrainer`` (with PEFT LoRA by default, full fine-tuning with
``full=True``, QLoRA with ``qlora=True``) on pre-tokenized prompt + completion rows whose labels mask
the prompt. Stage 1 ("warmup") trains on identity rows (correction = answer) so the model learns to
copy; stage 2 ("residual") continues from the stage-1 weights on the correction rows.

Layout of ``output_dir`` (safetensors and JSON only: it is what gets published)::

    adapter_config.json + adapter_model.safetensors   (LoRA)   or   config.json + model.safetensors
    tokenizer files, aligner_config.json (template, base model, training facts)

and beside it, ``OUTPUT_DIR.checkpoints/`` (what ``--resume`` needs, see :mod:`.run_state`)::

    run.json, warmup/checkpoint-N, warmup/final, residual/checkpoint-N

``AlignerRunnable(model=output_dir)`` loads it directly. Several GPUs: run the same command under
``accelerate launch`` (configs in ``training/aligner/accelerate/``), e.g.::

    accelerate launch --config_file training/aligner/accelerate/ddp.yaml -m aligner_chain.cli train \\
        --config training/aligner/recipes/lora-7b.yaml --data data.jsonl --output-dir runs/aligner-7b
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligner_chain.aligner_config import AlignerConfig, save_aligner_config
from aligner_chain.backends.availability import check_source
from aligner_chain.backends.devices import accelerator_present, bf16_supported, resolve_dtype
from training.aligner.config import TrainConfig
from training.aligner.data import (
    TrainingRow,
    identity_rows,
    load_correction_data,
    to_dataset,
    tokenize_rows,
)
from training.aligner.run_state import check_resume, checkpoints_dir, run_fingerprint, save_fingerprint
from training.aligner.sentences import identity_sentence_rows, load_sentence_data

if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerCallback

__all__ = ["STAGE_DONE_NAME", "StageResult", "TrainResult", "train_aligner"]

logger = logging.getLogger(__name__)

STAGE_DONE_NAME = "stage_done.json"
_TRAINING_ARGS_PICKLE = "training_args.bin"


@dataclass
class StageResult:
    """What one stage did: rows used, steps, loss, and the checkpoint it resumed from (if any)."""

    name: str
    rows: int
    dropped_too_long: int = 0
    global_step: int = 0
    train_loss: float | None = None
    seconds: float = 0.0
    resumed_from: str | None = None
    skipped: str | None = None


@dataclass
class TrainResult:
    output_dir: Path
    method: str
    stages: list[StageResult] = field(default_factory=list)


def _resolve_base(base_model: str) -> str:
    """Local directories become absolute paths, so a saved adapter finds its base from anywhere."""
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.is_dir() else base_model


def _use_bf16(config: TrainConfig) -> bool:
    return bf16_supported() if config.bf16 is None else config.bf16


def _torch_dtype(config: TrainConfig) -> Any:
    """The dtype the base loads in: as set, else float32 for full fine-tuning (float32 master
    weights, bf16 autocast) and bfloat16 for a frozen LoRA base where bf16 is supported."""
    if config.dtype != "auto":
        return resolve_dtype(config.dtype, "cpu")
    return resolve_dtype("bfloat16" if not config.full and _use_bf16(config) else "float32", "cpu")


def _check_qlora() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "qlora=True needs bitsandbytes (and a CUDA GPU): pip install bitsandbytes, or train plain LoRA "
            "without --qlora"
        )


def _load_base(config: TrainConfig, base: str) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(config),
        "trust_remote_code": config.trust_remote_code,
        "use_safetensors": True,
    }
    if config.qlora:
        import torch
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if _use_bf16(config) else torch.float16,
        )
        kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    return model


def _lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def _load_stage_model(config: TrainConfig, base: str, init_from: Path | None) -> tuple[Any, Any]:
    """The model a stage starts from and the PEFT config to wrap it with (``None``: already wrapped)."""
    if config.full:
        return _load_base(config, str(init_from) if init_from else base), None
    model = _load_base(config, base)
    if init_from is None:
        return model, _lora_config(config)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init_from), is_trainable=True), None


def _sft_config(config: TrainConfig, stage_dir: Path) -> Any:
    from trl import SFTConfig

    extra = dict(config.extra_training_args)
    return SFTConfig(
        output_dir=str(stage_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.resolved_learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 reads a float below 1 in ``warmup_steps`` as a share of the steps (its
        # ``warmup_ratio`` is deprecated): this is the warm-up ratio.
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        bf16=_use_bf16(config),
        dataloader_pin_memory=accelerator_present(),
        activation_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=config.report_to,
        disable_tqdm=config.disable_tqdm,
        completion_only_loss=None,
        dataset_num_proc=None,
        **extra,
    )


def _loss_logger(stage: str) -> TrainerCallback:
    from transformers import TrainerCallback

    class _LossLogger(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs and "loss" in logs:
                logger.info(
                    "[%s] step %d/%d loss %.4f", stage, state.global_step, state.max_steps, logs["loss"]
                )

    return _LossLogger()


def _last_checkpoint(stage_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(stage_dir)) if stage_dir.is_dir() else None


def _stage_done(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / "final" / STAGE_DONE_NAME
    return json.loads(marker.read_text()) if marker.is_file() else None


def _run_stage(
    config: TrainConfig,
    *,
    name: str,
    rows: Sequence[TrainingRow],
    tokenizer: Any,
    base: str,
    init_from: Path | None,
    save_to: Path,
    final: bool,
) -> tuple[StageResult, Any]:
    """Train one stage and save its weights to ``save_to``; returns the result and the trainer."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    stage_dir = checkpoints_dir(config.output_dir) / name
    features = tokenize_rows(rows, tokenizer, template=config.resolved_template, max_length=config.max_length)
    if not len(features):
        raise ValueError(
            f"stage {name!r}: all {len(rows)} rows are longer than max_length={config.max_length} tokens; "
            "raise --max-length"
        )
    result = StageResult(name=name, rows=len(features), dropped_too_long=features.dropped_too_long)
    args = _sft_config(config, stage_dir)  # before loading: DeepSpeed ZeRO-3 hooks model loading
    model, peft_config = _load_stage_model(config, base, init_from)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(features),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_loss_logger(name)],
    )
    if config.disable_tqdm:  # no bar, and no log lines printed in its place: _loss_logger logs them
        trainer.remove_callback(PrinterCallback)
    if not config.full:
        peft_model: Any = trainer.model
        trainable, total = peft_model.get_nb_trainable_parameters()
        logger.info("[%s] LoRA: %d of %d parameters trainable", name, trainable, total)
    checkpoint = _last_checkpoint(stage_dir) if config.resume else None
    if checkpoint:
        logger.info("[%s] resuming from %s", name, checkpoint)
    logger.info("[%s] training on %d rows", name, len(features))
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    result.seconds = round(time.perf_counter() - start, 2)
    result.global_step = int(trainer.state.global_step)
    result.train_loss = float(output.training_loss)
    result.resumed_from = checkpoint
    trainer.save_model(str(save_to))
    if trainer.is_world_process_zero():
        # The Trainer pickles its arguments next to the weights; a published Aligner holds no pickle.
        (save_to / _TRAINING_ARGS_PICKLE).unlink(missing_ok=True)
        if not final:
            (save_to / STAGE_DONE_NAME).write_text(json.dumps(asdict(result), indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return result, trainer


def _is_main_process() -> bool:
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _merge_adapter(config: TrainConfig, base: str, adapter_dir: Path, output_dir: Path) -> None:
    """Fold the LoRA adapter into an unquantized copy of the base and save the full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = _torch_dtype(config.replace(qlora=False))
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    for stale in ("adapter_config.json", "adapter_model.safetensors"):
        (output_dir / stale).unlink(missing_ok=True)
    merged.save_pretrained(str(output_dir), safe_serialization=True)


def _rows(config: TrainConfig) -> tuple[Sequence[TrainingRow], Sequence[TrainingRow], dict[str, Any]]:
    """``(rows, warm-up rows, facts about the data)`` for the run's granularity."""
    if config.granularity == "sentence":
        sentences = load_sentence_data(config.data, columns=config.columns, split=config.split)
        warmup = identity_sentence_rows(sentences.rows, config.identity_fraction, seed=config.seed)
        return sentences.rows, warmup, {"sentence_rows": sentences.counts}
    data = load_correction_data(config.data, columns=config.columns, split=config.split)
    warmup_rows = identity_rows(data.rows, config.identity_fraction, seed=config.seed)
    return data.rows, warmup_rows, {"dropped_rows": data.dropped}


def train_aligner(config: TrainConfig) -> TrainResult:
    """Train an Aligner as ``config`` says; ``result.output_dir`` is what inference loads, and
    ``result.stages`` says what each stage did.

    Raises:
        ValueError: bad data, a template that does not end on a token boundary, checkpoints beside
            ``output_dir`` without ``resume``, a resume with other settings, or an invalid setting.
        ImportError: ``qlora=True`` without bitsandbytes.
        AlignerError: the base model cannot be had (a missing, empty, pickle-only or corrupt
            directory, or a hub id neither cached nor reachable).
    """
    from transformers import AutoTokenizer, set_seed

    config.validate()
    if config.qlora:
        _check_qlora()
    template = config.resolved_template
    output_dir = Path(config.output_dir)
    checkpoints = checkpoints_dir(output_dir)
    if not config.resume and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise ValueError(
            f"output_dir {output_dir} has checkpoints in {checkpoints}; pass resume=True (--resume) to "
            "continue that run, or choose a new output_dir"
        )
    set_seed(config.seed)
    rows, warmup, data_facts = _rows(config)  # bad data is said before any model is looked for
    base = _resolve_base(config.base_model)
    check_source(base, field="base_model")  # missing, empty, pickle-only or corrupt: said at once
    fingerprint = run_fingerprint(config, base_model=base, template=template.to_json(), rows=rows)
    if config.resume:
        check_resume(checkpoints, fingerprint)
    if _is_main_process():
        save_fingerprint(checkpoints, fingerprint)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stages: list[tuple[str, Sequence[TrainingRow]]] = [("warmup", warmup)] if warmup else []
    stages.append(("residual", rows))
    result = TrainResult(output_dir=output_dir, method=config.method)
    init_from: Path | None = None
    trainer: Any = None
    for index, (name, rows) in enumerate(stages):
        final = index == len(stages) - 1
        stage_dir = checkpoints / name
        done = _stage_done(stage_dir) if config.resume and not final else None
        if done is not None:
            logger.info("[%s] already finished (%s); continuing from its weights", name, stage_dir / "final")
            result.stages.append(StageResult(**{**done, "skipped": "finished in an earlier run"}))
            init_from = stage_dir / "final"
            continue
        save_to = output_dir if final else stage_dir / "final"
        stage_result, trainer = _run_stage(
            config,
            name=name,
            rows=rows,
            tokenizer=tokenizer,
            base=base,
            init_from=init_from,
            save_to=save_to,
            final=final,
        )
        result.stages.append(stage_result)
        init_from = save_to
    if trainer.is_world_process_zero():
        merged = config.full or config.merge
        if config.merge and not config.full:
            _merge_adapter(config, base, output_dir, output_dir)
        tokenizer.save_pretrained(str(output_dir))
        facts = {
            "method": config.method,
            "merged": merged,
            "data": str(config.data),
            "rows": len(rows),
            **data_facts,
            "identity_rows": len(warmup),
            "stages": [asdict(s) for s in result.stages],
            "training": {
                k: v
                for k, v in asdict(config).items()
                if k not in {"data", "base_model", "output_dir", "template", "resume"}
            },
        }
        save_aligner_config(
            output_dir,
            AlignerConfig(
                template=template.to_json(), base_model=base, extra=facts, granularity=config.granularity
            ),
        )
        logger.info("saved the Aligner to %s (%s)", output_dir, "merged model" if merged else "LoRA adapter")
    trainer.accelerator.wait_for_everyone()
    return result
