"""``petal bench precision`` on a tiny random checkpoint: what each precision of our spans
costs against float32 local transformers, and its command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from reference_peer._bench_precision import PRECISIONS, PROMPTS, run
from reference_peer._commands.bench_precision import NAMES
from tests.cli._support import one_error_line, petal

pytestmark = [pytest.mark.model, pytest.mark.slow]

#: Few and short, so that every precision loads and runs in a second or two.
PROMPT_COUNT, TOKENS = 2, 4

#: What every measured precision reports.
FIGURES = {
    "compute_dtype",
    "quantization",
    "linear_layers",
    "token_agreement",
    "sequences_identical",
    "max_abs_logit_error",
    "mean_abs_logit_error",
    "ms_per_token",
    "fp32_ms_per_token",
    "speed_vs_fp32",
}


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


needs_bitsandbytes = pytest.mark.skipif(not _has_bitsandbytes(), reason="needs bitsandbytes")


@pytest.fixture(scope="module")
def llama(tiny_checkpoint: Callable[[str], Path]) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def figures(llama: Path) -> dict[str, Any]:
    return run(llama, device="cpu", prompts=PROMPT_COUNT, tokens=TOKENS)


def test_the_command_and_the_bench_name_the_same_precisions() -> None:
    assert list(NAMES) == list(PRECISIONS)


def test_float32_through_spans_equals_local_transformers(figures: dict[str, Any]) -> None:
    fp32 = figures["precisions"]["float32"]
    assert fp32["token_agreement"] == 1.0
    assert fp32["sequences_identical"] == 1.0
    assert fp32["max_abs_logit_error"] <= 1e-4
    assert fp32["mean_abs_logit_error"] <= 1e-5
    assert (fp32["compute_dtype"], fp32["quantization"], fp32["linear_layers"]) == (
        "float32",
        None,
        "Linear",
    )


def test_bfloat16_spans_differ_from_float32(figures: dict[str, Any]) -> None:
    bf16 = figures["precisions"]["bfloat16"]
    assert bf16["compute_dtype"] == "bfloat16"
    assert bf16["max_abs_logit_error"] > 1e-3
    assert 0 < bf16["mean_abs_logit_error"] <= bf16["max_abs_logit_error"]
    assert 0 <= bf16["token_agreement"] <= 1


@needs_bitsandbytes
@pytest.mark.parametrize(("name", "layer"), [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_quantized_spans_run_bitsandbytes_layers(
    figures: dict[str, Any], name: str, layer: str
) -> None:
    quantized = figures["precisions"][name]
    assert quantized["quantization"] == name
    assert quantized["linear_layers"] == layer
    assert quantized["compute_dtype"] == "float32"  # the CPU's default, as a peer serves
    assert quantized["max_abs_logit_error"] > 1e-3


def test_the_json_holds_the_setting_and_every_figure(figures: dict[str, Any]) -> None:
    json.dumps(figures, allow_nan=False)  # strict JSON: no NaN or infinity
    assert figures["baseline"] == "float32 (local transformers)"
    assert figures["device"] == "cpu"
    assert (figures["prompts"], figures["new_tokens"]) == (PROMPT_COUNT, TOKENS)
    assert 0 < figures["generated_tokens"] <= PROMPT_COUNT * TOKENS
    assert set(figures["versions"]) == {"torch", "transformers", "bitsandbytes"}
    assert figures["versions"]["torch"] == torch.__version__
    assert list(figures["precisions"]) == list(PRECISIONS)
    for name, entry in figures["precisions"].items():
        if "skipped" not in entry:
            assert set(entry) == FIGURES, name
            assert entry["ms_per_token"] > 0 and entry["speed_vs_fp32"] > 0


def test_a_precision_without_its_library_is_skipped_with_the_reason(
    llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # ``import bitsandbytes`` fails
    result = run(llama, device="cpu", prompts=1, tokens=2, precisions=["nf4", "float32"])
    assert list(result["precisions"]) == ["nf4", "float32"]
    assert result["precisions"]["nf4"] == {
        "skipped": "bitsandbytes is not installed here (pip install bitsandbytes)"
    }
    assert result["precisions"]["float32"]["token_agreement"] == 1.0


# The command line ------------------------------------------------------------------------


def test_the_command_prints_the_figures_as_json(llama: Path) -> None:
    result = petal(
        *("bench", "precision", "--json", "--model", str(llama), "--device", "cpu"),
        *("--prompts", "1", "--tokens", "2", "--precisions", "float32,bfloat16"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert list(figures["precisions"]) == ["float32", "bfloat16"]
    assert figures["precisions"]["float32"]["max_abs_logit_error"] <= 1e-4
    assert (figures["prompts"], figures["new_tokens"]) == (1, 2)


BAD_OPTIONS = [
    (["--precisions", "float8"], "--precisions"),
    (["--precisions", "int8,int8"], "--precisions"),
    (["--precisions", ""], "--precisions"),
    (["--prompts", "0"], "--prompts"),
    (["--prompts", f"{len(PROMPTS) + 1}"], "--prompts"),
    (["--tokens", "0"], "--tokens"),
    (["--device", "gpu"], "--device"),
    (["--model", "/nonexistent"], "--model"),
    (["--model", "{untyped}"], "--model"),
]


@pytest.mark.parametrize(
    ("argv", "argument"), BAD_OPTIONS, ids=[" ".join(argv) for argv, _ in BAD_OPTIONS]
)
def test_a_bad_option_is_a_usage_error_naming_it(
    argv: list[str], argument: str, llama: Path, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    model = ["--model", str(llama)] if "--model" not in argv else []
    filled = [a.format(untyped=tmp_path) for a in argv]
    result = petal("bench", "precision", *model, *filled, timeout=120)
    assert result.returncode == 2, result.stderr
    assert argument in one_error_line(result, "bench")
    assert result.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_usage_error(llama: Path) -> None:
    result = petal("bench", "precision", "--model", str(llama), "--device", "cuda")
    assert result.returncode == 2
    line = one_error_line(result, "bench")
    assert "--device" in line and "CUDA is not available" in line


def test_both_bench_kinds_share_tokens() -> None:
    result = petal("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "precision" in result.stdout and "swarm" in result.stdout
    options = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  -")]
    assert options.count("--tokens") == 1
