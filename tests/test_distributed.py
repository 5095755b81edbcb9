"""lm/distributed.py in one process (the 2-rank behaviour is tests/test_multiproc.py's): shares cover a
batch exactly once, and every helper is the identity without a launcher."""

from __future__ import annotations

import torch

from chatrlhf.lm import distributed as d


def test_shares_cover_every_row_once_in_order_and_differ_by_at_most_one():
    for n in range(12):
        for w in (1, 2, 3, 5):
            parts = [d.share(n, r, w) for r in range(w)]
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_one_process_is_rank_zero_and_the_helpers_change_nothing():
    assert d.world_size() == 1 and d.is_main()
    assert d.shard([1, 2, 3]) == [1, 2, 3] and d.gather([1, 2]) == [1, 2]
    assert d.rows_of_rank(4) == (slice(0, 4), True)
    assert d.all_mean({"kl": 0.5}) == {"kl": 0.5} and d.all_sum(3) == 3.0
    loss = torch.tensor(2.0, requires_grad=True)
    scaled, mean = d.weighted_loss(loss, 7)
    assert scaled is loss and float(mean) == 2.0
    assert d.on_main(lambda: 5) == 5


def test_a_deepspeed_launch_on_cpus_names_gloo_and_others_keep_accelerates_choice(monkeypatch):
    """Accelerate takes its DeepSpeed path only off its CPU path, where it finds no backend for CPU
    ranks: a DeepSpeed launch on CPUs asks for gloo; a plain launch keeps `cpu` and Accelerate's backend."""
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert d.process_group_args("cpu") == {"cpu": True, "backend": None}
    assert d.accelerator_args("cpu")["kwargs_handlers"] is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert d.process_group_args("cpu") == {"cpu": False, "backend": "gloo"}
    (handler,) = d.accelerator_args("cpu")["kwargs_handlers"]
    assert handler.backend == "gloo"


def test_the_startup_line_says_when_an_fsdp_launch_runs_without_fsdp(monkeypatch):
    """Accelerate runs FSDP only on accelerators: an FSDP launch on CPUs gets plain data-parallel ranks,
    and the startup line says so instead of letting a run pass for sharded."""
    from types import SimpleNamespace

    def line(kind: str) -> str:
        st = SimpleNamespace(distributed_type=SimpleNamespace(value=kind), backend="gloo")
        return d.describe(SimpleNamespace(state=st, num_processes=2, device="cpu"), "sft", "2 rows", "4 rows")

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert line("MULTI_CPU") == "sft: 2 process(es) [MULTI_CPU, backend gloo, device cpu], per-rank batch 2 rows, global batch 4 rows"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "FSDP was asked for" in line("MULTI_CPU") and "each hold the whole model" in line("MULTI_CPU")
    assert "FSDP was asked for" not in line("FSDP")
