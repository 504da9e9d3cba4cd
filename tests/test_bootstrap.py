"""Paired bootstrap of pAUC differences, its place in the evaluation report, and ``aikd compare-runs``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from aikd.evaluation.bootstrap import (
    _block_pauc,
    _groups,
    bootstrap_pauc,
    compare_methods,
    default_comparisons,
    format_interval,
    paired_bootstrap,
)
from aikd.evaluation.compare import compare_runs, load_run, main_compare, summarise_runs
from aikd.evaluation.edc import (
    edc_curve,
    evaluate_quality,
    pauc,
    threshold_at_fmr,
    threshold_at_starting_error,
)
from aikd.evaluation.report import markdown_table, read_results_json, write_report

INTERVAL = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]"


def _pairs(n: int, seed: int = 0, signal: float = 1.0):
    """Mated scores, an informative pair quality (A: follows the score) and a useless one (B: noise)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    good = signal * scores + rng.normal(size=n)
    useless = rng.normal(size=n)
    return scores, good, useless


# --------------------------------------------------------------------------------------------------------------
# The bootstrap itself
# --------------------------------------------------------------------------------------------------------------


def test_clearly_better_method_has_an_interval_below_zero() -> None:
    scores, good, useless = _pairs(2000)
    out = paired_bootstrap(scores, good, useless, operating_points=("start_err=0.10",), limits=(0.2, 0.3), n_boot=200)
    for key in ("0.2", "0.3"):
        e = out["start_err=0.10"][key]
        assert e["difference"] < 0 and e["low"] <= e["difference"] <= e["high"] < 0, e  # A better: lower pAUC
        assert e["p_a_better"] == 1.0 and e["n_boot"] == e["n_defined"] == 200
    # swapped, B is the better one
    back = paired_bootstrap(scores, useless, good, n_boot=200)["start_err=0.10"]["0.2"]
    assert back["low"] > 0 and back["p_a_better"] == 0.0


def test_identical_methods_differ_by_exactly_zero() -> None:
    scores, good, _ = _pairs(1000)
    nonmated = np.random.default_rng(1).normal(-2, 1, 5000)
    out = paired_bootstrap(
        scores, good, good.copy(), nonmated_scores=nonmated, operating_points=("start_err=0.10", "fmr=1e-3"), n_boot=100
    )
    for per_limit in out.values():
        e = per_limit["0.2"]
        assert (e["difference"], e["low"], e["high"], e["p_a_better"]) == (0.0, 0.0, 0.0, 0.0)
    assert format_interval(out["start_err=0.10"]["0.2"]) == "+0.000 [+0.000, +0.000]"


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    scores, good, useless = _pairs(800, signal=0.3)
    run = [paired_bootstrap(scores, good, useless, n_boot=100, seed=s)["start_err=0.10"]["0.2"] for s in (7, 7, 8)]
    assert run[0] == run[1]
    assert run[0]["difference"] == run[2]["difference"]  # the point estimate does not depend on the resamples
    assert (run[0]["low"], run[0]["high"]) != (run[2]["low"], run[2]["high"])


def test_interval_narrows_with_more_pairs() -> None:
    def width(n: int) -> float:
        scores, good, useless = _pairs(n, seed=n, signal=0.5)
        e = paired_bootstrap(scores, good, useless, n_boot=300, seed=0)["start_err=0.10"]["0.2"]
        return e["high"] - e["low"]

    small, large = width(400), width(6400)
    assert large < 0.5 * small, (small, large)  # 16x the pairs: about 4x narrower


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_pauc_is_edc_py_on_the_resampled_pairs(ties: bool) -> None:
    """The vectorised resamples give exactly what edc_curve + pauc give on the resampled pairs (ties included)."""
    rng = np.random.default_rng(3)
    n = 500
    scores = rng.normal(size=n)
    quality = scores + rng.normal(size=n)
    if ties:
        quality = np.round(quality * 2) / 2  # a handful of quality levels
    thresholds = [threshold_at_starting_error(scores, 0.1), threshold_at_fmr(rng.normal(-2, 1, 4000), 1e-2), 5.0]
    limits = [0.2, 0.3, 1.0]
    idx = rng.integers(0, n, size=(6, n))
    idx[0] = np.arange(n)  # the original sample itself
    counts = np.stack([np.bincount(i, minlength=n) for i in idx])
    order, starts = _groups(quality)
    is_error = (scores[order][None, :] < np.asarray(thresholds)[:, None]).astype(np.float64)
    got = _block_pauc(counts, order, starts, is_error, limits)
    for r in range(len(idx)):
        for t, threshold in enumerate(thresholds):
            curve = edc_curve(scores[idx[r]], quality[idx[r]], threshold)
            for j, lim in enumerate(limits):
                if curve.starting_error == 0:  # threshold 5.0 is above every score: no error -> NaN, no warning
                    assert math.isnan(got[r, t, j])
                    continue
                assert got[r, t, j] == pytest.approx(pauc(curve, lim).normalised, rel=1e-12, abs=1e-14)


def test_point_estimates_are_the_evaluation_figures() -> None:
    scores, good, useless = _pairs(600)
    nonmated = np.random.default_rng(2).normal(-2, 1, 3000)
    ops = ("start_err=0.10", "fmr=1e-3")
    ev = {
        name: evaluate_quality(scores, nonmated, q, q, operating_points=ops, include_curve=False)
        for name, q in (("a", good), ("b", useless))
    }
    thresholds = {op: ev["a"]["operating_points"][op]["threshold"] for op in ops}
    out = compare_methods(scores, {"a": good, "b": useless}, thresholds, [("a", "b")], (0.2, 0.3), n_boot=20)
    entry = out["a - b"]
    assert (entry["a"], entry["b"]) == ("a", "b")
    for op in ops:
        for key in ("0.2", "0.3"):
            want = (
                ev["a"]["operating_points"][op]["pauc"][key]["normalised"]
                - ev["b"]["operating_points"][op]["pauc"][key]["normalised"]
            )
            assert entry["operating_points"][op][key]["difference"] == want


def test_resamples_are_shared_by_methods_and_calls() -> None:
    scores, good, useless = _pairs(300)
    t = [threshold_at_starting_error(scores, 0.1)]
    both = bootstrap_pauc(scores, {"a": good, "b": useless}, t, n_boot=120, seed=5)
    alone = bootstrap_pauc(scores, {"b": useless}, t, n_boot=120, seed=5)
    np.testing.assert_array_equal(both["b"], alone["b"])  # same seed and size: the same resamples
    assert both["a"].shape == (120, 1, 1)


def test_bad_inputs_are_named() -> None:
    scores, good, useless = _pairs(100)
    with pytest.raises(ValueError, match="n_boot must be a positive"):
        paired_bootstrap(scores, good, useless, n_boot=0)
    with pytest.raises(ValueError, match=r"qualities\['B'\] has 99 values but there are 100"):
        paired_bootstrap(scores, good, useless[:-1], n_boot=10)
    with pytest.raises(ValueError, match="needs nonmated_scores"):
        paired_bootstrap(scores, good, useless, operating_points=("fmr=1e-3",), n_boot=10)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(scores, good, useless, n_boot=10, level=95)
    with pytest.raises(KeyError, match="no quality for method 'c'"):
        compare_methods(scores, {"a": good}, {"start_err=0.10": 0.0}, [("a", "c")])
    assert default_comparisons(["teacher:x", "student", "fr_norm"]) == [
        ("student", "teacher:x"),
        ("student", "fr_norm"),
    ]
    assert default_comparisons(["teacher:x", "teacher:y"]) == [("teacher:y", "teacher:x")]
    assert format_interval(None) == "n/a"
    assert format_interval({"difference": 0.0123, "low": -0.004, "high": 0.0271}) == "+0.012 [-0.004, +0.027]"


def test_report_table_shows_the_intervals(tmp_path: Path) -> None:
    scores, good, useless = _pairs(500)
    nonmated = np.random.default_rng(2).normal(-2, 1, 3000)
    q = {"teacher:t": useless, "student": good}
    results = {
        c: {m: evaluate_quality(scores, nonmated, v, v, limits=(0.2,)) for m, v in q.items()} for c in ("aligned", "x")
    }
    thresholds = {op: e["threshold"] for op, e in results["aligned"]["student"]["operating_points"].items()}
    comparisons = {c: compare_methods(scores, q, thresholds, [("student", "teacher:t")], n_boot=50) for c in results}
    boot = {"n_boot": 50, "level": 0.95, "comparisons": comparisons}
    text = markdown_table(results, bootstrap=boot)
    row = next(line for line in text.splitlines() if line.startswith("| student - teacher:t |"))
    assert len(re.findall(INTERVAL, row)) == 2 and row.count("**") == 4  # both conditions, both exclude 0
    paths = write_report(tmp_path, results, bootstrap=boot)
    assert read_results_json(paths["json"])["bootstrap"]["comparisons"]["x"]["student - teacher:t"]["a"] == "student"
    assert "| student - teacher:t |" in paths["markdown"].read_text()
    assert "| A - B |" not in markdown_table(results)  # without a bootstrap, the report is as before


# --------------------------------------------------------------------------------------------------------------
# In a run: config key, report, results.json, compare-runs on real runs
# --------------------------------------------------------------------------------------------------------------


def test_tiny_run_reports_student_minus_teacher(tmp_path: Path) -> None:
    from test_pipeline import _cfg  # the fast pipeline config of tests/test_pipeline.py

    from aikd.app.pipeline import run

    cfg = _cfg(
        tmp_path,
        1,
        "logger=none",
        "+trainer.max_steps=2",
        "stages=[prepare,teacher,distill,evaluate]",
        "evaluation.conditions=[none,jitter3]",
        "evaluation.bootstrap=50",
    )
    results = run(cfg)
    boot = results["evaluation"]["bootstrap"]
    assert boot["n_boot"] == 50 and set(boot["comparisons"]) == {"aligned", "jitter3"}
    label = next(k for k in boot["comparisons"]["aligned"] if k.startswith("student - teacher:"))
    entry = boot["comparisons"]["aligned"][label]["operating_points"]["start_err=0.10"]["0.2"]
    assert entry["n_boot"] == 50 and entry["n_defined"] > 0
    report = (tmp_path / "out" / "evaluation" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
    assert re.search(INTERVAL, row), row
    doc = json.loads((tmp_path / "out" / "evaluation" / "results.json").read_text())
    assert doc["bootstrap"]["comparisons"]["jitter3"][label]["b"] == label.split(" - ", 1)[1]
    # the run directory is what compare-runs reads; the same run twice: sd 0, intervals are the run's
    summary = summarise_runs([tmp_path / "out", tmp_path / "out" / "evaluation"])
    cell = summary["differences"]["start_err=0.10"][label]["aligned"]
    assert cell["sd"] == 0.0 and cell["intervals"][0] == cell["intervals"][1]
    assert cell["intervals"][0]["low"] == pytest.approx(entry["low"])


def test_bootstrap_key_is_validated(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from aikd.app.validate import ConfigError, validate_run

    conf = Path(__file__).resolve().parent.parent / "conf"
    stages = ["prepare", "preview", "teacher", "distill", "evaluate", "export"]
    for bad in ("-1", "abc", "2.5", "true"):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                cfg = compose(
                    "train",
                    overrides=[
                        f"paths.output_dir={tmp_path}",
                        f"paths.cache_dir={tmp_path}",
                        f"evaluation.bootstrap={bad}",
                    ],
                    return_hydra_config=True,
                )
            HydraConfig.instance().set_config(cfg)
            with pytest.raises(ConfigError, match=r"evaluation\.bootstrap must be a whole number"):
                validate_run(cfg, stages)
        finally:
            GlobalHydra.instance().clear()


# --------------------------------------------------------------------------------------------------------------
# compare-runs on written files
# --------------------------------------------------------------------------------------------------------------


def _run_summary(run_dir: Path, pauc: dict[str, dict[str, float]], bootstrap: dict | None = None) -> Path:
    """A pipeline results.json as `run` writes it: evaluation.pauc_normalised["<method>/<cond>/<op>/pauc<lim>"]."""
    flat = {}
    for method, per_condition in pauc.items():
        for cond, value in per_condition.items():
            flat[f"{method}/{cond}/start_err=0.10/pauc0.2"] = value
            flat[f"{method}/{cond}/start_err=0.10/pauc0.3"] = None if value is None else value + 1
    evaluation = {"dir": str(run_dir / "evaluation"), "pauc_normalised": flat, "fr": {"eer": 0.1}}
    if bootstrap is not None:
        evaluation["bootstrap"] = bootstrap
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps({"timings_s": {"evaluate": 1.0}, "evaluation": evaluation, "metrics": flat}))
    return path


def _interval(d: float, lo: float, hi: float) -> dict:
    return {"difference": d, "low": lo, "high": hi, "p_a_better": 0.5, "n_boot": 100, "n_defined": 100}


def test_compare_runs_mean_and_sd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = "teacher:crfiqa"
    boot = {
        "n_boot": 100,
        "comparisons": {
            "aligned": {f"student - {t}": {"a": "student", "b": t, "operating_points": {
                "start_err=0.10": {"0.2": _interval(-0.02, -0.05, 0.01)}}}},
        },
    }  # fmt: skip
    _run_summary(
        tmp_path / "r1", {t: {"aligned": 0.70, "jitter3": 0.72}, "student": {"aligned": 0.68, "jitter3": 0.71}}, boot
    )
    _run_summary(
        tmp_path / "r2", {t: {"aligned": 0.74, "jitter3": None}, "student": {"aligned": 0.70, "jitter3": 0.69}}
    )
    summary = summarise_runs([tmp_path / "r1", tmp_path / "r2"])
    assert summary["limit"] == "0.2" and summary["conditions"] == ["aligned", "jitter3"]
    cell = summary["pauc"]["start_err=0.10"][t]["aligned"]
    assert cell["mean"] == pytest.approx(0.72) and cell["sd"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert summary["pauc"]["start_err=0.10"][t]["jitter3"]["n"] == 1  # null (undefined) is left out
    diff = summary["differences"]["start_err=0.10"][f"student - {t}"]["aligned"]
    assert diff["values"] == pytest.approx([-0.02, -0.04]) and diff["mean"] == pytest.approx(-0.03)
    assert diff["sd"] == pytest.approx(np.std([-0.02, -0.04], ddof=1))
    assert diff["intervals"][0]["low"] == -0.05 and diff["intervals"][1] is None
    assert summarise_runs([tmp_path / "r1", tmp_path / "r2"], limit=0.3)["pauc"]["start_err=0.10"][t]["aligned"][
        "mean"
    ] == pytest.approx(1.72)

    out = tmp_path / "compare.md"
    assert main_compare([str(tmp_path / "r1"), str(tmp_path / "r2"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert f"| {t} | 0.720 ± 0.028 | 0.720 (1 of 2 runs) |" in text
    assert "| aligned | -0.030 ± 0.014 | -0.020 [-0.050, +0.010] | -0.040 [n/a] |" in text

    from aikd.app.cli import COMMANDS, main

    assert COMMANDS["compare-runs"][0] == "aikd.evaluation.compare:main_compare"
    assert main(["compare-runs", str(tmp_path / "r1"), "--operating-point", "start_err=0.10"]) == 0


def test_compare_runs_expands_a_multirun_directory(tmp_path: Path) -> None:
    """A seed sweep's directory stands for its finished jobs, in job order (2 before 10); unfinished jobs are
    listed as left out, and a sweep with no finished job is refused, named."""
    t = "teacher:t"
    sweep = tmp_path / "multiruns" / "2026-12-02_15-00-00"
    for name, student in (("10_x", 0.62), ("2_x", 0.66), ("0_x", 0.64)):
        _run_summary(sweep / name, {t: {"aligned": 0.70}, "student": {"aligned": student}})
    (sweep / "3_x").mkdir()  # failed job: no results.json
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    summary = summarise_runs([sweep])
    assert [Path(r).parent.name for r in summary["runs"]] == ["0_x", "2_x", "10_x"]
    assert summary["left_out"] == [str(sweep / "3_x")]
    cell = summary["pauc"]["start_err=0.10"]["student"]["aligned"]
    assert cell["values"] == pytest.approx([0.64, 0.66, 0.62]) and cell["mean"] == pytest.approx(0.64)
    assert "Left out (sweep jobs without results.json" in compare_runs([sweep, sweep / "0_x"])
    empty = tmp_path / "multiruns" / "empty"
    (empty / "0_x").mkdir(parents=True)
    (empty / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(ValueError, match=r"empty is a multirun directory but none of its 1 job\(s\) has results"):
        summarise_runs([empty])


def test_compare_runs_of_an_extra_comparator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--comparator facenet``: the figures made with an extra comparator's scores, not the main ones."""
    t = "teacher:t"
    for name, main_student, facenet_student in (("r1", 0.60, 0.80), ("r2", 0.62, 0.84)):
        path = _run_summary(tmp_path / name, {t: {"aligned": 0.70}, "student": {"aligned": main_student}})
        doc = json.loads(path.read_text())
        doc["evaluation"]["extra_comparators"] = {
            "facenet": {"pauc_normalised": {f"{t}/aligned/start_err=0.10/pauc0.2": 0.75,
                                            "student/aligned/start_err=0.10/pauc0.2": facenet_student}}
        }  # fmt: skip
        path.write_text(json.dumps(doc))
    runs = [tmp_path / "r1", tmp_path / "r2"]
    main = summarise_runs(runs)["pauc"]["start_err=0.10"]["student"]["aligned"]
    other = summarise_runs(runs, comparator="facenet")
    assert main["mean"] == pytest.approx(0.61) and other["pauc"]["start_err=0.10"]["student"]["aligned"][
        "mean"
    ] == pytest.approx(0.82)
    diff = other["differences"]["start_err=0.10"][f"student - {t}"]["aligned"]
    assert diff["values"] == pytest.approx([0.05, 0.09]) and diff["intervals"] == [None, None]
    assert main_compare([*map(str, runs), "--comparator", "facenet"]) == 0
    text = capsys.readouterr().out
    assert "extra comparator **facenet**" in text and "carry no bootstrap intervals" in text
    assert main_compare([*map(str, runs), "--comparator", "arcface"]) == 2
    assert "holds no figures with comparator 'arcface' (it has: facenet)" in capsys.readouterr().err


def test_compare_runs_reads_edc_reports_too(tmp_path: Path) -> None:
    scores, good, useless = _pairs(300)
    for i, shift in enumerate((0.0, 0.5)):
        results = {"aligned": {m: evaluate_quality(scores, None, q, q, operating_points=("start_err=0.10",))
                               for m, q in (("teacher:t", useless + shift * good), ("student", good))}}  # fmt: skip
        write_report(tmp_path / f"run{i}" / "evaluation", results)
    text = compare_runs([tmp_path / "run0" / "evaluation", tmp_path / "run1" / "evaluation" / "results.json"])
    assert "| student | " in text and "student - teacher:t" in text
    assert load_run(tmp_path / "run0" / "evaluation").bootstrap is None


def test_compare_runs_bad_inputs_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_summary(tmp_path / "a", {"teacher:t": {"aligned": 0.7}, "student": {"aligned": 0.6}})
    _run_summary(
        tmp_path / "b", {"teacher:t": {"aligned": 0.7, "jitter3": 0.8}, "student": {"aligned": 0.6, "jitter3": 0.7}}
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty" / "results.json"))):
        summarise_runs([tmp_path / "a", tmp_path / "empty"])
    with pytest.raises(ValueError, match=r"different conditions: .*a/results.json.*b/results.json.*jitter3"):
        summarise_runs([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="pAUC limit 0.5 is not in"):
        summarise_runs([tmp_path / "a"], limit=0.5)
    (tmp_path / "noeval").mkdir()
    (tmp_path / "noeval" / "results.json").write_text(json.dumps({"timings_s": {"prepare": 1}}))
    with pytest.raises(ValueError, match=r"noeval/results.json holds no evaluation results"):
        load_run(tmp_path / "noeval")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    assert main_compare([str(tmp_path / "broken")]) == 2
    assert "broken/results.json is not valid JSON" in capsys.readouterr().err
    assert main_compare([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "different conditions" in capsys.readouterr().err
