"""The harness of `structloss bench` (chapter 40): quick mode, the results' schema, the ratio
and verdict arithmetic on synthetic timings, the memory cap, the command line.
No test asserts a wall-clock time."""
import argparse, json, os
import pytest
import torch
import structloss.bench as B

torch.set_num_threads(1)
QUICK = B.check_mode("quick")


def cell(loss, ours, floor, pml=None, N=4096, C=100, ours_mem=None, pml_mem=None, pml_status="ok"):
    "A results cell with the given per-round seconds (and peak bytes)."
    def method(times, mem=None, status="ok"):
        if status != "ok": return {"status": status}
        return {"status": "ok", "times_s": times, "median_s": B.median(times), "peak_bytes": mem}
    methods = {"ours": method(ours, ours_mem), "floor": method(floor)}
    if pml is not None or pml_status != "ok": methods["pml"] = method(pml, pml_mem, pml_status)
    return {"loss": loss, "N": N, "C": C, "kind": "linear" if B.is_linear(loss) else "quadratic",
            "methods": methods}


def results(cells=(), losses=None, silhouette=(), train=None):
    return {"harness": {"settings": {"classes": [10, 100]},
                        "losses": losses or sorted({c["loss"] for c in cells})},
            "cells": list(cells), "silhouette": list(silhouette),
            **({"train_steps": {"methods": train}} if train else {})}


# --- arithmetic -------------------------------------------------------------------------
def test_ratio_uses_rounds_so_a_spike_cancels():
    ours, floor = [1.0, 1.0, 5.0, 1.0, 1.0], [0.5, 0.5, 2.5, 0.5, 0.5]
    assert B.ratio(ours, floor) == pytest.approx(2.0)
    assert B.ratio([3.0, 1.0, 2.0], [1.0]) == pytest.approx(2.0)   # unequal rounds: medians
    assert B.ratio([], [1.0]) is None and B.median([]) is None


def test_slope_of_power_laws():
    ns = [256, 1024, 4096, 16384]
    assert B.slope(ns, [n * 1e-6 for n in ns]) == pytest.approx(1.0)
    assert B.slope(ns, [n ** 2 * 1e-9 for n in ns]) == pytest.approx(2.0)
    assert B.slope([10], [1.0]) is None


def test_interleaving_order_and_budget():
    calls = []
    B.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5
    t = B.interleaved_times({"x": lambda: None}, repeats=4, warmup=0, budget_s=0.0)
    assert len(t["x"]) == 1            # a spent budget stops the rounds after the first
    t = B.interleaved_times({"x": lambda: None, "y": lambda: None}, repeats=2, warmup=0,
                            min_time_s=10.0, max_repeats=9)
    assert [len(v) for v in t.values()] == [9, 9]    # fast calls: more rounds, for every method


def test_floor_targets_met_and_missed():
    res = results([cell("SupConLoss", [2.0, 2.2, 1.9], [1.0, 1.1, 0.95]),
                   cell("TripletMarginLoss", [2.0] * 3, [1.0] * 3),
                   cell("ProxyNCALoss", [1.9] * 3, [1.0] * 3)])
    v = {r["key"]: r for r in B.judge_targets(res)}
    assert not v["SupConLoss: floor"]["met"] and v["SupConLoss: floor"]["measured"] == 2.0
    assert v["TripletMarginLoss: floor"]["met"] and v["ProxyNCALoss: floor"]["met"]
    assert "SupConLoss: speed vs PML" not in v       # PML's twin was not measured


def test_floor_target_reads_the_largest_n_at_the_largest_c():
    res = results([cell("ContrastiveLoss", [5.0], [1.0], N=1024),
                   cell("ContrastiveLoss", [5.0], [1.0], N=4096, C=10),
                   cell("ContrastiveLoss", [1.2], [1.0], N=4096, C=100)])
    v = {r["key"]: r for r in B.judge_targets(res)}
    assert v["ContrastiveLoss: floor"]["met"] and v["ContrastiveLoss: floor"]["measured"] == 1.2


def test_pml_speed_and_memory_targets():
    res = results([cell("SupConLoss", [1.0] * 3, [1.0] * 3, pml=[2.0] * 3, N=256, ours_mem=10,
                        pml_mem=20),
                   cell("SupConLoss", [1.0] * 3, [1.0] * 3, pml=[0.9] * 3, N=1024, ours_mem=30,
                        pml_mem=20)])
    v = {r["key"]: r for r in B.judge_targets(res)}
    assert not v["SupConLoss: speed vs PML"]["met"]
    assert v["SupConLoss: speed vs PML"]["measured"] == pytest.approx(0.9)
    assert not v["SupConLoss: memory vs PML"]["met"]
    assert v["SupConLoss: memory vs PML"]["measured"] == pytest.approx(1.5)


def test_pml_that_cannot_run_counts_for_us_and_is_noted():
    res = results([cell("InfoNCELoss", [1.0], [1.0], pml=[50.0], N=256),
                   cell("InfoNCELoss", [1.0], [0.9], N=4096,
                        pml_status="out of memory at the 6 GiB cap")])
    v = {r["key"]: r for r in B.judge_targets(res)}
    assert v["InfoNCELoss: speed vs PML"]["met"]
    assert "could not run at 1 size" in v["InfoNCELoss: speed vs PML"]["detail"]
    assert "InfoNCELoss: labels floor" in v


def test_silhouette_and_training_targets():
    sil = [{"N": n, "loss_s": n * 1e-6, "metric_s": n ** 2 * 1e-9} for n in (256, 1024, 4096)]
    sil[-1]["quadratic_vs_linear"] = 12.0
    sil[-1]["sklearn_vs_metric"] = 3.0
    train = {"CE": {"vs_CE": 1.0}, "CE+Sil": {"vs_CE": 1.2}}
    v = {r["key"]: r for r in B.judge_targets(results(losses=[], silhouette=sil, train=train))}
    assert v["SoftSilhouetteLoss: linear"]["met"] and not v["silhouette_score: linear"]["met"]
    assert v["SoftSilhouetteLoss: vs quadratic"]["met"]
    assert not v["silhouette_score: vs quadratic"]["met"]
    assert not v["CE+Sil: training step"]["met"]


def test_missed_targets_need_reasons():
    rows = B.judge_targets(results([cell("SupConLoss", [2.0], [1.0])]))
    with pytest.raises(ValueError, match="SupConLoss: floor"):
        B.check_reasons(rows, {})
    with pytest.raises(ValueError, match="SupConLoss: floor"):
        B.check_reasons(rows, {"SupConLoss: floor": "TODO"})
    assert len(B.check_reasons(rows, {}, required=False)) == 1
    assert len(B.check_reasons(rows, {"SupConLoss: floor": "an extra pass over N x N"})) == 1


# --- measuring --------------------------------------------------------------------------
def test_peak_memory_counts_live_tensors():
    def two():
        a = torch.ones(512, 512)
        b = a + 1
        del a, b
    assert 0 <= B.peak_memory(two) - 2 * 512 * 512 * 4 < 2 ** 16


def test_memory_cap_reports_out_of_memory_instead_of_crashing():
    assert B.run_guarded("allocate", {"gib": 0.05}, cap_gib=1.0)["status"] == "ok"
    res = B.run_guarded("allocate", {"gib": 3.0}, cap_gib=0.5)
    assert res["status"] == "out of memory at the 0.5 GiB cap"


def test_time_limit_is_a_result():
    res = B.run_guarded("allocate", {"gib": 0.01}, cap_gib=1.0, timeout_s=0.01)
    assert res["status"].startswith("over the time limit")


def test_run_guarded_rejects_names_outside_the_module():
    for name in ("os", "_child", "no_such_function"):
        with pytest.raises(ValueError, match="`func` must name"):
            B.run_guarded(name, {})


def test_a_method_that_runs_out_of_memory_is_reported(monkeypatch):
    class Greedy(torch.nn.Module):
        def forward(self, x, y):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GiB")
    monkeypatch.setattr(B, "make_pml", lambda *a: Greedy())
    c = B.measure_cell("SupConLoss", 16, 4, QUICK, memory=False, cap_gib=6.0)
    assert c["methods"]["pml"] == {"status": "out of memory at the 6 GiB cap"}
    assert c["methods"]["ours"]["status"] == "ok" and len(c["methods"]["ours"]["times_s"]) == 3


def test_a_dead_child_leaves_ours_and_the_floor_measured(monkeypatch):
    monkeypatch.setattr(B, "run_guarded", lambda *a, **k: {"status": "over the time limit of 9 s"})
    c = B._guarded_cell("InfoNCELoss", 16, 4, QUICK, "cpu", 1)
    assert c["methods"]["pml"]["status"] == "over the time limit of 9 s"
    assert c["methods"]["ours"]["status"] == c["methods"]["floor"]["status"] == "ok"


def test_projected_time_skips_the_next_size():
    assert B._skip_reason("TripletMarginLoss", 1024, (256, 1.0, "ok"), 40.0).startswith(
        "skipped: projected 64 s")
    assert B._skip_reason("TripletMarginLoss", 512, (256, 1.0, "ok"), 40.0) is None


def test_twins_share_hyper_parameters():
    ours = B.make_ours("InfoNCELoss", 7, 16)
    ours.temperature = 0.31
    assert B.make_pml("InfoNCELoss", ours, 7, 16).temperature == 0.31
    arcface = B.make_ours("ArcFaceLoss", 7, 16)
    assert B.make_pml("ArcFaceLoss", arcface, 7, 16).W.shape == (16, 7)
    assert B.make_pml("MagnetLoss", B.make_ours("MagnetLoss", 7, 16), 7, 16) is None


def test_quadratic_silhouette_is_the_same_loss():
    from structloss.silhouette import SoftSilhouetteLoss
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.arange(40) % 4
    with B.quadratic_silhouette(): q = SoftSilhouetteLoss()(x, y)
    assert torch.allclose(q, SoftSilhouetteLoss()(x, y))
    import structloss.silhouette as S
    assert S.class_distances is not B.quadratic_class_distances    # restored after the block


@pytest.mark.skipif(B.find_notebooks() is None, reason="needs the chapters' notebooks")
def test_chapter_loops_agree_with_the_losses():
    loops = B.chapter_loops()
    assert all(fn in loops for _, fn in B.LOOPS.values())
    rows = B.measure_loops(["SupConLoss", "SoftSilhouetteLoss", "ProxyNCALoss"],
                           {**QUICK, "repeats": 1}, log=lambda s: None)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert max(r["value_difference"] for r in rows) < 1e-10


def test_loops_without_notebooks_are_reported(monkeypatch):
    monkeypatch.setattr(B, "chapter_loops", lambda: {})
    rows = B.measure_loops(["SupConLoss"], QUICK, log=lambda s: None)
    assert rows[0]["status"].startswith("no loop")


# --- the run, its file, the command line ------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    res = B.run_bench("quick", losses=["SupConLoss", "SoftSilhouetteLoss"], device="cpu",
                      out=str(out), log=lambda s: None)
    return res, out


def test_quick_mode_schema(quick_run):
    res, out = quick_run
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["harness"]["version"] == B.BENCH_VERSION and res["harness"]["mode"] == "quick"
    for key in ("date", "machine", "cpu_model", "threads", "device", "torch",
                "pytorch-metric-learning", "structloss"):
        assert key in res["environment"]
    assert {c["loss"] for c in res["cells"]} == {"SupConLoss", "SoftSilhouetteLoss"}
    sizes = {(c["loss"], c["N"], c["C"]) for c in res["cells"]}
    assert ("SoftSilhouetteLoss", max(QUICK["linear_sizes"]), 10) in sizes
    for c in res["cells"]:
        for name, m in c["methods"].items():
            assert m["status"] == "ok" and len(m["times_s"]) >= 1 and m["peak_bytes"] > 0
        assert ("pml" in c["methods"]) == (c["loss"] in B.PML)
    no_loop = "no loop: the chapters' notebooks are not available"
    assert [r["status"] for r in res["loops"]] in (["ok", "ok"], [no_loop] * 2)
    assert [r["N"] for r in res["silhouette"]] == list(QUICK["linear_sizes"])
    assert [r["N"] for r in res["pml_ntxent"]] == list(QUICK["ntxent_sizes"])
    assert set(res["train_steps"]["methods"]) == set(B.TRAIN_METHODS)
    assert res["train_steps"]["methods"]["CE"]["vs_CE"] == 1.0
    import math
    assert all(r["measured"] is None or math.isfinite(r["measured"]) for r in B.judge_targets(res))


def test_load_or_run_reuses_only_a_current_file(quick_run, tmp_path, monkeypatch):
    res, out = quick_run
    assert not B.is_current(res, "quick")                         # two losses, not all of them
    full = {**res, "harness": {**res["harness"], "losses": list(B.find_losses(verbose=False))}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(full))
    monkeypatch.setattr(B, "run_bench", lambda *a, **k: pytest.fail("should not rerun"))
    assert B.load_or_run("smoke", str(path))["wall_s"] == res["wall_s"]
    stale = {**full, "harness": {**full["harness"], "version": B.BENCH_VERSION - 1}}
    path.write_text(json.dumps(stale))
    monkeypatch.setattr(B, "run_bench", lambda *a, **k: {"reran": True})
    assert B.load_or_run("smoke", str(path)) == {"reran": True}


def test_bad_arguments():
    with pytest.raises(ValueError, match="'quick', 'full'"): B.check_mode("fast")
    with pytest.raises(ValueError, match="Unknown loss"): B.run_bench("quick", losses=["Nope"])
    with pytest.raises(ValueError, match="Unknown part"): B.run_bench("quick", parts=["nope"])
    with pytest.raises(ValueError, match="Unknown training method"): B.train_objective("X", 10, 8)


def _args(*argv):
    p = argparse.ArgumentParser()
    B.add_cli(p.add_subparsers(dest="command"))
    return p.parse_args(["bench", *argv])


def test_cli(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert B.main_bench(_args("--quick", "--losses", "CenterLoss", "--parts", "losses",
                              "--out", str(out))) == 0
    res = json.loads(out.read_text())
    assert res["harness"]["parts"] == ["losses"] and res["cells"][0]["loss"] == "CenterLoss"
    assert B.main_bench(_args("--quick", "--losses", "NoSuchLoss", "--out", str(out))) == 2
    assert "Unknown loss" in capsys.readouterr().err


def test_default_path_per_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTLOSS_RUNS", str(tmp_path))
    assert B.default_path("smoke") == os.path.join(str(tmp_path), "bench", "smoke", "bench.json")
    assert B.mode_of("smoke") == "quick" and B.mode_of("cpu") == B.mode_of("colab") == "full"
