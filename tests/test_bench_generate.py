"""scripts/bench_generate.py's arithmetic, offline: llama-batched-bench's result rows (a captured real output), the
decode's FLOPs, the cores' arithmetic bound and the comparison with the fastest peer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from whytune.benchmarks import arithmetic_bound, flops_per_cycle

ROOT = Path(__file__).resolve().parents[1]
# The whole stdout (stderr was empty) of `llama-batched-bench -m <SmolLM2-135M in f32>.gguf -c 1024 -b 128 -ub 512
# -npp 128 -ntg 8 -npl 2,4 -pps -t 2 -tb 2 --output-format jsonl`, llama.cpp 0c1e570 (llama-cpp-python 0.3.36).
BATCHED_BENCH = ROOT / "tests" / "data" / "llama_batched_bench.jsonl"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "scripts" / "bench_generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_batched_bench_rows_read_the_real_output(bench):
    rows = bench.batched_bench_rows(BATCHED_BENCH.read_text())
    assert sorted(rows) == [2, 4]
    for pl, row in rows.items():
        assert (row["pp"], row["tg"], row["is_pp_shared"]) == (128, 8, 1)
        assert row["t_tg"] > 0 and row["speed_tg"] == pytest.approx(pl * 8 / row["t_tg"], rel=1e-3)
        assert row["speed_pp"] == pytest.approx(128 / row["t_pp"], rel=1e-3)


def test_run_llama_cpp_counts_the_prefill_once_and_every_batch_decode(bench, monkeypatch, tmp_path):
    """Samples in batches 4, 4, 2: one prefill (the first batch's), the decode of each batch."""
    output = BATCHED_BENCH.read_text()
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return SimpleNamespace(returncode=0, stdout=output, stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(bench, "llama_cpp_files", lambda setup, outtype: (tmp_path / f"m-{outtype}.gguf", None))
    setup = bench.Setup(None, torch.zeros(1, 128, dtype=torch.long), [4, 4, 2], 8, "", tmp_path, False, tmp_path)
    prefill_s, decode_s = bench.run_llama_cpp(setup, "bf16")
    rows = bench.batched_bench_rows(output)
    assert prefill_s == rows[4]["t_pp"]
    assert decode_s == pytest.approx(2 * rows[4]["t_tg"] + rows[2]["t_tg"])
    command = commands[0]
    values = [command[command.index(flag) + 1] for flag in ("-m", "-c", "-npp", "-ntg", "-npl", "-t")]
    assert values == [str(tmp_path / "m-bf16.gguf"), "544", "128", "8", "2,4", str(torch.get_num_threads())]
    assert "-pps" in command and "--lora" not in command


def test_run_llama_cpp_refuses_a_missing_row(bench, monkeypatch, tmp_path):
    """batched-bench leaves out, silently, a row whose KV cache would not fit -c."""
    monkeypatch.setattr(
        bench.subprocess, "run", lambda command, **kwargs: SimpleNamespace(returncode=0, stdout="", stderr="")
    )
    monkeypatch.setattr(bench, "llama_cpp_files", lambda setup, outtype: (tmp_path / "m.gguf", tmp_path / "a.gguf"))
    setup = bench.Setup(None, torch.zeros(1, 16, dtype=torch.long), [4], 8, "", tmp_path, True, tmp_path)
    with pytest.raises(RuntimeError, match="left rows out"):
        bench.run_llama_cpp(setup)


def test_matmul_weights_are_the_linear_layers_of_the_model(bench):
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=200,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_weights(config) == linear


def test_decode_flops_by_hand(bench):
    """One layer, 2 heads of 4, hidden 8, MLP 16, vocab 10: 8 * (16 + 16) + 3 * 8 * 16 + 8 * 10 = 720 weights; a
    3-token prompt and 2 new tokens attend 4 then 5 keys, 4 * 1 * 2 * 4 FLOPs a key."""
    config = SimpleNamespace(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=10,
    )
    assert bench.matmul_weights(config) == 720
    assert bench.decode_flops(config, 3, 2, 1) == 2 * 2 * 720 + 32 * (4 + 5)
    assert bench.decode_flops(config, 3, 2, 5, adapter_weights=30) == 5 * (2 * 2 * 750 + 32 * 9)


def test_flops_per_cycle_from_the_flags():
    assert flops_per_cycle(["avx", "avx2", "fma"]) == ({"float32": 32, "bfloat16": 32, "float16": 32}, [])
    per_cycle, notes = flops_per_cycle(["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    assert per_cycle == {"float32": 64, "bfloat16": 128, "float16": 64}
    assert any("two 512-bit FMA units" in note for note in notes) and any("AMX" in note for note in notes)
    assert flops_per_cycle(["avx"])[0]["float32"] == 16


def test_arithmetic_bound_and_a_decode_share(bench):
    bound = arithmetic_bound(2, ["avx2", "fma"], (2445.0, "/proc/cpuinfo cpu MHz")) | {"matmul_gflops": 100.0}
    assert bound["gflops"]["float32"] == pytest.approx(2 * 2445 * 32 / 1000)
    share = bench.arithmetic(bound, "float32", int(78.24e9), 1.0)
    assert share["decode_gflops"] == pytest.approx(78.24)
    assert share["arithmetic_bound_share"] == pytest.approx(0.5) and share["matmul_share"] == pytest.approx(0.7824)


def test_the_fastest_peer_in_any_precision(bench):
    rows = {
        name: {"total_s": total}
        for name, total in {
            "fast": 10.0,
            "fast+lora": 12.0,
            "vllm": 30.0,
            "vllm+lora": 50.0,
            "llama.cpp-f32": 25.0,
            "llama.cpp-f32+lora": 60.0,
            "llama.cpp-bf16": 20.0,
            "llama.cpp-bf16+lora": 40.0,
        }.items()
    }
    assert bench.best_peers(rows) == {"": "llama.cpp-bf16", "+lora": "llama.cpp-bf16+lora"}
    speedups = bench.ratios(rows)
    assert speedups["fast_vs_best_peer"] == 2.0 and speedups["fast+lora_vs_best_peer+lora"] == pytest.approx(40 / 12)
    assert speedups["fast_vs_vllm"] == 3.0 and "llama.cpp-f32_vs_best_peer" not in speedups
