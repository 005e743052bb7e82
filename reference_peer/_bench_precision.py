"""``petal bench precision``: what serving a model's blocks in each precision costs in
accuracy and time, against float32 local transformers of the same checkpoint in the same run.

Theory of operation. The baseline is the checkpoint's own ``*ForCausalLM`` in float32 on the
bench's device. For each prompt it generates a greedy continuation (stopping at the end of
the turn or after ``tokens`` tokens), and one forward pass over prompt plus continuation
gives the reference logits of every continuation position. Each precision is then what a
peer serving at it runs: one ``SpanModel`` of all blocks in a ``LocalChain``, behind the
client model (embeddings, final norm and head in float32). Per precision:

- teacher-forced, the reference sequence goes through the model in one forward pass:
  ``token_agreement`` is the fraction of continuation positions whose argmax is the
  reference token, and the logit errors are taken over the same positions (all vocabulary
  entries) against the reference logits;
- free-running, the model generates from each prompt as the baseline did:
  ``sequences_identical`` is the fraction of prompts whose continuation equals the
  reference one, and ``ms_per_token`` is the generation time over the tokens generated
  (the prompt's pass included).

Timing. The host's speed drifts by more than the differences measured here (the same
float32 model on two idle CPU cores: 88, then 114 ms per token a minute later). So the
baseline stays loaded and generates again beside each precision, prompt by prompt, in
alternating order (the baseline first for even prompts, last for odd ones):
``speed_vs_fp32`` is the median of the prompts' own ratios of time per token (above 1:
slower), each comparing two runs a second apart, and ``fp32_ms_per_token`` is the
baseline's time in those same rounds.

Float32 through the spans must equal the baseline (agreement 1, error within 1e-4): a
figure off there is a bug in the serving path, which the bench reports as measured. A
precision this machine cannot run (no bitsandbytes, a dtype without kernels here) is
reported as ``{"skipped": reason}``; only float32, which every device runs, is never
skipped. Each precision's model is freed before the next one loads, so the peak memory is
the baseline, one model under test and the reference logits.

Quantized spans compute in the device's default dtype (float32 on the CPU, bf16 on CUDA),
as ``petal serve --quantize`` does; bitsandbytes' int8 matmul casts its inputs to float16
on the way in whatever that dtype is.
"""

from __future__ import annotations

import gc
import importlib
import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petalproto._commands._common import UsageError

from ._arch import load_config, num_layers
from ._chain import LocalChain
from ._cli import _tokenizer, chat_ids
from ._loading import Quantization, pick_device
from ._local import DistributedModelForCausalLM
from ._spans import SpanModel

__all__ = ["PRECISIONS", "PROMPTS", "Precision", "run"]

#: Short chat prompts of different kinds: a fact, verse, an explanation, a list, code, a
#: translation, arithmetic, advice.
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
    "Name three fruits that are red.",
    "How do I reverse a list in Python?",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 23?",
    "Give me one tip for sleeping better.",
)


@dataclass(frozen=True, slots=True)
class Precision:
    """How a peer serves the blocks.

    Attributes:
        dtype: the span's compute dtype; None for the device's default (``pick_device``).
        quantization: bitsandbytes' ``"int8"`` or ``"nf4"``, or None.
    """

    dtype: torch.dtype | None
    quantization: Quantization | None = None


#: Every precision the bench measures, by the name it reports.
PRECISIONS = {
    "float32": Precision(torch.float32),
    "bfloat16": Precision(torch.bfloat16),
    "float16": Precision(torch.float16),
    "int8": Precision(None, "int8"),
    "nf4": Precision(None, "nf4"),
}

#: What loading or first running a span raises when the device cannot run its precision
#: (no kernel for the dtype, bitsandbytes without this backend, out of memory).
_CANNOT_RUN = (RuntimeError, NotImplementedError, ValueError, ImportError)

#: Where bitsandbytes says, at every int8 matmul with inputs other than float16, that it
#: casts them (bitsandbytes 0.50's ``MatMul8bitLt.forward``).
_INT8_CAST_LOGGER = "bitsandbytes.autograd._functions"
_INT8_CAST = "MatMul8bitLt: inputs will be cast"


@dataclass(slots=True)
class _Reference:
    """The float32 local baseline and what it made, prompt by prompt."""

    model: Any
    max_new: int
    prompts: list[torch.Tensor]  # [1, prompt]
    sequences: list[torch.Tensor] = field(default_factory=list)  # [1, prompt + new]
    logits: list[torch.Tensor] = field(default_factory=list)  # [new, vocab], on the CPU

    @property
    def tokens(self) -> int:
        """The tokens generated over all prompts."""
        pairs = zip(self.prompts, self.sequences, strict=True)
        return sum(sequence.shape[1] - ids.shape[1] for ids, sequence in pairs)


def run(
    path: str | Path,
    *,
    device: str = "auto",
    prompts: int = len(PROMPTS),
    tokens: int = 16,
    precisions: Sequence[str] = tuple(PRECISIONS),
) -> dict[str, Any]:
    """Measure each precision against float32 local transformers.

    Args:
        path: a causal LM checkpoint directory.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        prompts: how many of ``PROMPTS`` to use, from the first.
        tokens: the most tokens generated per prompt.
        precisions: names of ``PRECISIONS``, measured in this order.

    Returns:
        The JSON figures: the run's setting, and per precision its figures or
        ``{"skipped": reason}``.

    Raises:
        UsageError: CUDA is asked for and absent, ``prompts`` exceeds ``PROMPTS``, or
            transformers cannot load the checkpoint as a causal LM (or its tokenizer).
        ValueError: an unknown precision name.
    """
    path = Path(path)
    unknown = [name for name in precisions if name not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; known: {list(PRECISIONS)}")
    if not 1 <= prompts <= len(PROMPTS):
        raise UsageError(
            f"argument --prompts: the bench has {len(PROMPTS)} prompts, not {prompts} "
            f"(give 1 to {len(PROMPTS)})"
        )
    where = _device(device)
    tokenizer = _tokenizer(path)
    ids = [_prompt_ids(tokenizer, text) for text in PROMPTS[:prompts]]
    reference = _baseline(path, ids, tokens, where)
    try:
        figures = {name: _measure(path, name, where, reference) for name in precisions}
    finally:
        reference.model = None
        _free(where)
    return {
        "model": path.name,
        "device": str(where),
        "threads": torch.get_num_threads(),
        "baseline": "float32 (local transformers)",
        "prompts": prompts,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "new_tokens": tokens,
        "generated_tokens": reference.tokens,
        "versions": _versions(),
        "precisions": figures,
    }


def _device(device: str) -> torch.device:
    """The device to run on.

    Raises:
        UsageError: ``cuda`` is asked for and absent.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "argument --device: cuda: CUDA is not available here (use --device cpu or auto)"
        )
    return pick_device(device, None)[0]


def _prompt_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """``[1, tokens]``: through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, [{"role": "user", "content": text}])
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert isinstance(ids, torch.Tensor)
    return ids


# Running a model -----------------------------------------------------------------------


def _greedy(model: Any, ids: torch.Tensor, tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy generation of at most ``tokens`` tokens: (``[1, prompt + new]`` on the CPU,
    seconds)."""
    from transformers import GenerationConfig

    own = model.generation_config
    make: Any = GenerationConfig
    config = make(
        do_sample=False,
        max_new_tokens=tokens,
        eos_token_id=own.eos_token_id,
        pad_token_id=own.pad_token_id if own.pad_token_id is not None else own.eos_token_id,
    )
    ids = ids.to(model.device)
    _sync(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    _sync(model.device)
    seconds = time.perf_counter() - start
    assert isinstance(out, torch.Tensor)
    return out.cpu(), seconds


def _continuation_logits(model: Any, sequence: torch.Tensor, prompt: int) -> torch.Tensor:
    """One forward pass over ``sequence``: ``[new, vocab]`` float32 logits of the positions
    that predict its tokens after the first ``prompt``, on the CPU."""
    ids = sequence.to(model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    logits: torch.Tensor = out.logits[0, prompt - 1 : -1]
    return logits.float().cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _baseline(
    path: Path, prompts: list[torch.Tensor], tokens: int, device: torch.device
) -> _Reference:
    """The float32 local model, its continuations and their logits.

    Raises:
        UsageError: transformers cannot load the checkpoint as a causal LM.
    """
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"argument --model: transformers cannot load {path} as a causal LM: {why} "
            "(give a causal LM checkpoint directory)"
        ) from None
    model.to(device).eval()
    reference = _Reference(model=model, max_new=tokens, prompts=prompts)
    _greedy(model, prompts[0], 2)  # warm-up: first-call allocations and caches
    for ids in prompts:
        sequence, _ = _greedy(model, ids, tokens)
        reference.sequences.append(sequence)
        reference.logits.append(_continuation_logits(model, sequence, ids.shape[1]))
    return reference


# One precision -------------------------------------------------------------------------


def _measure(path: Path, name: str, device: torch.device, reference: _Reference) -> dict[str, Any]:
    """The figures of one precision, or ``{"skipped": reason}``."""
    precision = PRECISIONS[name]
    reason = _missing_library(precision)
    if reason is not None:
        return {"skipped": reason}
    with _quiet_int8_cast():
        try:
            model, evidence = _load(path, precision, device)
            _greedy(model, reference.prompts[0], 2)  # warm-up; also shows that it runs here
        except _CANNOT_RUN as exc:
            if name == "float32":
                raise
            why = str(exc).splitlines()[0] if str(exc) else ""
            return {"skipped": f"cannot run on {device}: {type(exc).__name__}: {why}"}
        try:
            return {**evidence, **_accuracy(model, reference), **_speed(model, reference)}
        finally:
            model.close()
            del model
            _free(device)


def _missing_library(precision: Precision) -> str | None:
    if precision.quantization is None:
        return None
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        return "bitsandbytes is not installed here (pip install bitsandbytes)"
    return None


def _load(path: Path, precision: Precision, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The client model over one span of all blocks, and what shows how the span runs."""
    blocks = num_layers(load_config(str(path)))
    span = SpanModel(
        path, 0, blocks, device=device, dtype=precision.dtype, quantization=precision.quantization
    )
    linear = sorted({type(m).__name__ for m in span.model.modules() if isinstance(m, nn.Linear)})
    evidence = {
        "compute_dtype": str(span.dtype).removeprefix("torch."),
        "quantization": precision.quantization,
        "linear_layers": ", ".join(linear),
    }
    model = DistributedModelForCausalLM.from_pretrained(
        path, chain=LocalChain([span]), device=device, dtype=torch.float32
    )
    return model, evidence


def _accuracy(model: Any, reference: _Reference) -> dict[str, Any]:
    """Teacher-forced figures: argmax agreement and logit errors at the continuations."""
    agree = positions = entries = 0
    max_error = abs_sum = 0.0
    for ids, sequence, expected in zip(
        reference.prompts, reference.sequences, reference.logits, strict=True
    ):
        prompt = ids.shape[1]
        logits = _continuation_logits(model, sequence, prompt)
        agree += int((logits.argmax(-1) == sequence[0, prompt:]).sum())
        positions += logits.shape[0]
        error = (logits - expected).abs()
        max_error = max(max_error, float(error.max()))
        abs_sum += float(error.double().sum())
        entries += error.numel()
    return {
        "token_agreement": round(agree / positions, 4),
        "max_abs_logit_error": _figure(max_error),
        "mean_abs_logit_error": _figure(abs_sum / entries),
    }


def _speed(model: Any, reference: _Reference) -> dict[str, Any]:
    """Free-running figures, timed in alternation with the baseline (module docstring)."""
    identical = 0
    seconds = {"ours": 0.0, "fp32": 0.0}
    tokens = {"ours": 0, "fp32": 0}
    ratios = []
    contenders = {"ours": model, "fp32": reference.model}
    for i, (ids, sequence) in enumerate(zip(reference.prompts, reference.sequences, strict=True)):
        per_token = {}
        for who in ("fp32", "ours") if i % 2 == 0 else ("ours", "fp32"):
            out, took = _greedy(contenders[who], ids, reference.max_new)
            new = out.shape[1] - ids.shape[1]
            per_token[who] = took / new
            seconds[who] += took
            tokens[who] += new
            if who == "ours":
                identical += int(torch.equal(out, sequence))
        ratios.append(per_token["ours"] / per_token["fp32"])
    return {
        "sequences_identical": round(identical / len(reference.prompts), 4),
        "ms_per_token": _ms_per_token(seconds["ours"], tokens["ours"]),
        "fp32_ms_per_token": _ms_per_token(seconds["fp32"], tokens["fp32"]),
        "speed_vs_fp32": round(statistics.median(ratios), 3),
    }


def _ms_per_token(seconds: float, tokens: int) -> float:
    return round(seconds / max(tokens, 1) * 1e3, 2)


def _figure(value: float) -> float | None:
    """Four significant digits; None for what JSON cannot hold (NaN, infinity)."""
    return float(f"{value:.4g}") if math.isfinite(value) else None


@contextmanager
def _quiet_int8_cast() -> Iterator[None]:
    """Drop bitsandbytes' line, at every int8 matmul, that it casts the inputs to float16
    (thousands of lines per prompt; the module docstring says it once): a log record in
    bitsandbytes 0.50, a warning before."""
    logger = logging.getLogger(_INT8_CAST_LOGGER)
    drop = _DropInt8Cast()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_INT8_CAST)
            yield
    finally:
        logger.removeFilter(drop)


class _DropInt8Cast(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INT8_CAST)


def _versions() -> dict[str, str | None]:
    import transformers

    try:
        bnb: str | None = version("bitsandbytes")
    except PackageNotFoundError:
        bnb = None
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bnb,
    }
