"""The figures (prefopt.plots, and their command-line wrappers figures/*.py) on small synthetic run folders written by
hand after the output contract."""

import importlib
import json
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")
pytest.importorskip("pandas")

from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefopt.plots import _common as common  # noqa: E402
from prefopt.plots import curves, frontier, winrates  # noqa: E402
from prefopt.plots import margins as md  # noqa: E402

SCRIPT_MODULES = {name: importlib.import_module(f"figures.{name}")
                  for name in ("margin_distribution", "frontier", "curves", "winrates", "noise_sweep")}

STEPS, PAIRS = 6, 5  # margins.jsonl rows per run: 30


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic run folders
# ----------------------------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _win(rate: float, n: int = 100) -> dict:
    ties = 10
    wins = int(round(rate * n - ties / 2))
    return {"win_rate": rate, "ci": [rate - 0.05, rate + 0.05], "wins": wins, "ties": ties,
            "losses": n - wins - ties, "invalid": 0, "n": n, "official_win_rate": wins / n}


def make_run(root: Path, name: str, method: str, *, margins: str | None = "gamma", metrics: bool = True,
             eval_: dict | None = None, loss0: float = 0.7) -> Path:
    """A run folder: config.yaml, metrics.jsonl (training lines + an eval line + the summary line), margins.jsonl
    (margins: "gamma" per-pair increasing in the gap, "const" γ = 1, "zero", or None for no file), eval.json."""
    run = root / name
    run.mkdir(parents=True)
    beta, ratio = 2.0, (0.5 if margins in ("gamma", "const") else None)
    lines = ["loss:", f"  name: {method}", f"  beta: {beta}"] + ([f"  gamma_beta_ratio: {ratio}"] if ratio else [])
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    if metrics:
        rows = [{"step": s, "loss": loss0 * (1 - 0.05 * s), "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
                 "rewards/margins": 0.2 * s, "rewards/accuracies": min(1.0, 0.5 + 0.1 * s), "logps/chosen": -20.0,
                 "logps/rejected": -22.0, "learning_rate": 1e-3} for s in range(1, STEPS + 1)]
        rows.insert(3, {"step": 3, "eval_loss": 0.5, "eval_rewards/accuracies": 0.7})
        rows.append({"step": STEPS, "train_loss": 0.5, "train_runtime": 1.0})
        _write_jsonl(run / "metrics.jsonl", rows)
    if margins is not None:
        rows = []
        for s in range(1, STEPS + 1):
            for i in range(PAIRS):
                gap = 0.3 * s + 0.5 * (i - 2)
                margin = {"gamma": 1.0 + 0.2 * (i - 2), "const": 1.0, "zero": 0.0}[margins]
                rows.append({"step": s, "example": PAIRS * s + i, "reward_gap": gap, "margin": margin,
                             "chosen_reward": -1 + gap / 2, "rejected_reward": -1 - gap / 2})
        _write_jsonl(run / "margins.jsonl", rows)
    if eval_ is not None:
        (run / "eval.json").write_text(json.dumps({"method": method, "n_prompts": 50, "n_samples": 100,
                                                   "mean_length": 10.0, **eval_}))
    return run


def _eval(label, reward, kl, vs_sft=None, vs_chosen=None):
    out = {"label": label, "mean_hidden_reward": reward, "mean_hidden_reward_ci": [reward - 0.05, reward + 0.05],
           "kl_to_reference": kl, "kl_to_reference_ci": [0.8 * kl, 1.2 * kl]}
    if vs_sft is not None:
        out["win_rate_vs_sft"] = _win(vs_sft)
    if vs_chosen is not None:
        out["win_rate_vs_chosen"] = _win(vs_chosen)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """results/<exp>/runs with SFT (eval.json only), DPO, SimPO and γ-SimPO."""
    root = tmp_path_factory.mktemp("exp") / "runs"
    make_run(root, "sft", "sft", margins=None, metrics=False, eval_=_eval("SFT", 0.1, 0.3, None, 0.3))
    make_run(root, "dpo", "dpo", margins="zero", eval_=_eval("DPO", 0.4, 5.0, 0.65, 0.45), loss0=0.69)
    make_run(root, "simpo", "simpo", margins="const", eval_=_eval("SimPO", 0.5, 9.0, 0.70, 0.5), loss0=1.3)
    make_run(root, "gamma_simpo", "gamma_simpo", eval_=_eval("γ-SimPO", 0.55, 8.0, 0.75, 0.55), loss0=1.3)
    return root


def _check_axes_text(fig: Figure, n_axes: int | None = None) -> list:
    """The figure's plotting axes (colorbars left out), each with a title and both axis labels."""
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    if n_axes is not None:
        assert len(axes) == n_axes
    for ax in axes:
        assert ax.get_title() or ax.get_title(loc="left"), "an axes without a title"
        assert ax.get_xlabel(), f"no x label on {ax.get_title(loc='left') or ax.get_title()}"
        # a panel sharing its y axis with a labelled one may leave the label to it
        siblings = ax.get_shared_y_axes().get_siblings(ax)
        assert any(a.get_ylabel() for a in siblings), f"no y label on {ax.get_title(loc='left') or ax.get_title()}"
    return axes


# ----------------------------------------------------------------------------------------------------------------------
# Palette and run folders
# ----------------------------------------------------------------------------------------------------------------------


def test_palette_is_keyed_by_method_and_families_are_right():
    assert common.canonical_method("fpo_alpha_rw") == "fpo"
    assert common.canonical_method("dpo_k") == "dpo_k"
    assert common.canonical_method("gamma_simpo") == "gamma_simpo"
    assert common.method_family("gamma_dpo") == "gamma"
    assert common.method_family("alphapo") == "ref_free"
    assert common.method_family("exo") == "ref_based"
    assert common.method_family("sft") == "sft"
    assert common.method_color("fpo_js") == common.method_color("fpo")
    assert common.method_color("made_up") == common.method_color("made_up")  # stable for unknown names
    assert len(set(common.METHOD_COLORS.values())) == len(common.METHOD_COLORS)


def test_a_folder_of_runs_expands_and_a_folder_without_run_files_is_an_error(runs, tmp_path):
    dirs = common.resolve_run_dirs([runs])
    assert {d.name for d in dirs} == {"sft", "dpo", "simpo", "gamma_simpo"}
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ValueError, match="not_a_run"):
        common.resolve_run_dirs([empty])
    with pytest.raises(ValueError, match="nowhere"):
        common.resolve_run_dirs([tmp_path / "nowhere"])


# ----------------------------------------------------------------------------------------------------------------------
# margin_distribution
# ----------------------------------------------------------------------------------------------------------------------


def test_margins_subsample_is_deterministic_and_bounded(runs):
    full = md.load_margins(runs / "gamma_simpo")
    assert len(full) == STEPS * PAIRS and full.attrs["n_rows"] == STEPS * PAIRS
    a = md.load_margins(runs / "gamma_simpo", max_points=12)
    b = md.load_margins(runs / "gamma_simpo", max_points=12)
    assert len(a) == 12 and a.attrs["n_rows"] == STEPS * PAIRS
    assert a.equals(b)
    assert set(a["phase"].cat.categories) == {"early", "middle", "late"}


def test_margin_figure_has_one_row_per_run_and_every_subsampled_point(runs):
    with pytest.warns(common.FigureWarning, match="sft"):  # SFT has no margins.jsonl
        loaded = md.load_margin_runs([runs], max_points=12)
    assert [r.run_dir.name for r in loaded] == ["gamma_simpo", "simpo", "dpo"]  # γ-PO first
    assert loaded[0].gamma0 == pytest.approx(1.0) and loaded[2].gamma0 == 0.0
    fig = md.plot_margin_distribution(loaded)
    assert isinstance(fig, Figure) and fig.get_suptitle()
    axes = _check_axes_text(fig, n_axes=2 * len(loaded))
    for run, right in zip(loaded, axes[1::2]):
        scatters = [c for c in right.collections if isinstance(c, PathCollection)]
        assert len(scatters) == 1 and len(scatters[0].get_offsets()) == len(run.data) == 12
        assert right.get_legend() is not None
    summaries = [md.margin_summary(r) for r in loaded]
    assert "rises with r_i" in summaries[0]
    assert summaries[1] == "constant margin γ = 1.00"
    assert summaries[2] == "no target margin (γ = 0)"


def test_margins_at_steps_draws_one_line_per_step(runs):
    run = md.load_margin_runs([runs / "gamma_simpo"])[0]
    fig = md.plot_margins_at_steps(run, [1, 3, 6])
    ax = _check_axes_text(fig, n_axes=1)[0]
    assert len([ln for ln in ax.lines if ln.get_label().startswith("step")]) == 3


# ----------------------------------------------------------------------------------------------------------------------
# frontier
# ----------------------------------------------------------------------------------------------------------------------


def test_frontier_has_one_labelled_point_per_run_and_sft_at_kl_zero(runs):
    df = frontier.load_frontier([runs])
    assert len(df) == 4
    assert df.loc[df["family"] == "sft", "kl"].item() == 0.0  # eval.json said 0.3: the reference is at KL 0
    fig = frontier.plot_frontier(df)
    ax = _check_axes_text(fig, n_axes=1)[0]
    points = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(points) == 4
    assert sorted(t.get_text() for t in ax.texts if t.get_text() in set(df["label"])) == sorted(df["label"])
    assert fig.legends, "no family legend"
    # the same method has the same colour here as in the training curves
    dpo = next(c for c in points if c.get_label() == "DPO")
    assert dpo.lines[0].get_color() == common.method_color("dpo")


def test_frontier_skips_runs_without_eval_json(runs, tmp_path):
    bare = make_run(tmp_path, "ipo", "ipo", margins=None)
    with pytest.warns(common.FigureWarning, match="ipo: no eval.json"):
        df = frontier.load_frontier([runs / "dpo", bare])
    assert list(df["run"]) == ["dpo"]
    with pytest.raises(ValueError, match="ipo"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frontier.load_frontier([bare])


# ----------------------------------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------------------------------


def test_metrics_keep_training_lines_only(runs):
    df = curves.load_metrics(runs / "dpo")
    assert list(df["step"]) == list(range(1, STEPS + 1))
    assert "train_loss" not in df and "eval_loss" not in df


def test_curves_one_line_per_run_per_metric_and_relative_loss(runs):
    with pytest.warns(common.FigureWarning, match="sft"):
        loaded = curves.load_curves([runs])
    assert len(loaded) == 3
    fig = curves.plot_curves(loaded)
    axes = _check_axes_text(fig, n_axes=3)
    for ax in axes:
        assert len([ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]) == 3
    assert "first logged value" in axes[0].get_ylabel()
    for line in [ln for ln in axes[0].get_lines() if not ln.get_label().startswith("_")]:
        assert line.get_ydata()[0] == pytest.approx(1.0)  # every loss starts at 1 after normalisation
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == [r.label for r in loaded]

    smooth = curves.plot_curves(loaded, smooth=3, loss_scale="log")
    loss_ax = smooth.axes[0]
    assert loss_ax.get_yscale() == "log" and "log" in loss_ax.get_ylabel()
    assert len(loss_ax.get_lines()) == 2 * 3  # faint raw + rolling mean per run
    with pytest.raises(ValueError, match="loss_scale"):
        curves.plot_curves(loaded, loss_scale="nope")


def test_a_half_written_metrics_line_is_skipped_with_a_warning(tmp_path):
    run = make_run(tmp_path, "dpo", "dpo", margins=None)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 0.')
    with pytest.warns(common.FigureWarning, match="malformed"):
        df = curves.load_metrics(run)
    assert df["step"].max() == STEPS


# ----------------------------------------------------------------------------------------------------------------------
# winrates
# ----------------------------------------------------------------------------------------------------------------------


def test_winrates_sorted_bars_with_ties_and_cis(runs):
    df = winrates.load_winrates([runs])
    assert set(df["comparison"]) == {"win_rate_vs_sft", "win_rate_vs_chosen"}
    fig = winrates.plot_winrates(df)
    axes = _check_axes_text(fig, n_axes=2)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["γ-SimPO", "SimPO", "DPO", "SFT"]
    vs_sft = axes[0]
    hatched = [p for p in vs_sft.patches if p.get_hatch()]
    assert len(hatched) == 3  # SFT is not compared with itself
    assert len([c for c in vs_sft.containers if isinstance(c, ErrorbarContainer)]) == 3
    assert len([c for c in axes[1].containers if isinstance(c, ErrorbarContainer)]) == 4


# ----------------------------------------------------------------------------------------------------------------------
# main(): files, warnings, errors
# ----------------------------------------------------------------------------------------------------------------------

SCRIPTS = {"margins": SCRIPT_MODULES["margin_distribution"], "frontier": SCRIPT_MODULES["frontier"],
           "curves": SCRIPT_MODULES["curves"], "winrates": SCRIPT_MODULES["winrates"]}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_main_writes_a_png_and_warns_about_skipped_runs(name, runs, tmp_path, capsys):
    out = tmp_path / f"{name}.png"
    extra = ["--pdf"] if name == "frontier" else []
    # margins: one γ-PO run and SFT (which has no margins.jsonl) keep the drawing small
    folders = [runs / "gamma_simpo", runs / "sft"] if name == "margins" else [runs]
    assert SCRIPTS[name].main([*map(str, folders), "--out", str(out), *extra]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if extra:
        assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    if name in ("margins", "curves"):
        assert "warning:" in captured.err and "sft" in captured.err


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_main_on_a_folder_without_run_files_exits_naming_it(name, tmp_path):
    empty = tmp_path / "typo_in_path"
    empty.mkdir()
    with pytest.raises(SystemExit, match="typo_in_path"):
        SCRIPTS[name].main([str(empty), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_main_when_no_run_has_the_file_exits_naming_the_folders(runs, tmp_path):
    with pytest.raises(SystemExit, match="none of the run folders .*sft"):
        SCRIPTS["margins"].main([str(runs / "sft"), "--out", str(tmp_path / "m.png")])


# ----------------------------------------------------------------------------------------------------------------------
# the notebook
# ----------------------------------------------------------------------------------------------------------------------

NOTEBOOK = ROOT / "figures" / "margins.ipynb"


def test_notebook_is_valid_nbformat4_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert isinstance(nb["metadata"], dict) and nb["cells"]
    ids = [c.get("id") for c in nb["cells"]]
    if nb["nbformat_minor"] >= 5:
        assert all(ids) and len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("code", "markdown") and isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], (str, list))
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            compile("".join(cell["source"]), str(NOTEBOOK), "exec")


def test_notebook_cells_run_on_a_runs_folder(runs, monkeypatch):
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    monkeypatch.setenv("PREFOPT_RUNS", str(runs))
    monkeypatch.chdir(ROOT / "figures")
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    namespace: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cell in nb["cells"]:
                if cell["cell_type"] == "code":
                    exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    finally:
        for name in set(sys.modules) - before:  # the notebook imports the scripts as top-level modules
            if name in ("_common", "curves", "frontier", "margin_distribution", "winrates"):
                del sys.modules[name]
    assert namespace["run"].run_dir.name == "gamma_simpo"
    assert len(namespace["margin_runs"]) == 3 and len(namespace["frontier_df"]) == 4


# ----------------------------------------------------------------------------------------------------------------------
# Noise sweep: figure and table (prefopt.plots.noise_sweep, figures/noise_sweep.py, prefopt.smallworld.demo's table)
# ----------------------------------------------------------------------------------------------------------------------
from prefopt.plots import noise_sweep  # noqa: E402


def _sweep(tmp_path, values):
    """values: {(method, seed, noise): win rate in [0, 1]} written as eval.json files in the sweep's layout."""
    for (method, seed, noise), rate in values.items():
        run = tmp_path / f"seed{seed}" / f"noise{noise:g}" / "runs" / method
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({
            "method": method, "label": method.upper(), "noise": noise, "seed": seed,
            "win_rate_vs_sft": {"win_rate": rate}}))
    sft = tmp_path / "seed0" / "runs" / "sft"  # SFT's own eval has no place on this figure
    sft.mkdir(parents=True)
    (sft / "eval.json").write_text(json.dumps({"method": "sft", "win_rate_vs_sft": {"win_rate": 0.5}}))


def test_noise_sweep_means_and_intervals(tmp_path):
    import math
    import statistics

    from prefopt.smallworld.demo import render_noise_table

    rates = {("dpo", s, n): 0.8 - n - 0.01 * s for s in (0, 1, 2) for n in (0.0, 0.2)}
    rates.update({("gamma_simpo", s, n): 0.7 + 0.02 * s for s in (0, 1, 2) for n in (0.0, 0.2)})
    _sweep(tmp_path, rates)
    df = noise_sweep.load_noise_sweep(tmp_path)
    assert len(df) == 12 and set(df["method"]) == {"dpo", "gamma_simpo"}
    summary = noise_sweep.summarise(df).set_index(["method", "noise"])
    values = [100 * (0.8 - 0.2 - 0.01 * s) for s in (0, 1, 2)]
    assert summary.loc[("dpo", 0.2), "mean"] == pytest.approx(statistics.mean(values))
    assert summary.loc[("dpo", 0.2), "half"] == pytest.approx(4.30 * statistics.stdev(values) / math.sqrt(3))
    fig = noise_sweep.plot_noise_sweep(df)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 2  # one line per method

    rows = [{"method": m, "label": m.upper(), "seed": s, "noise": n, "win_rate_vs_sft": r}
            for (m, s, n), r in rates.items()]
    table = render_noise_table(rows, [0.0, 0.2], [0, 1, 2])
    assert f"| DPO | {statistics.mean([100 * (0.8 - 0.01 * s) for s in (0, 1, 2)]):.1f} ± " in table
    assert "20% flipped" in table


def test_noise_sweep_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="make noise-sweep"):
        SCRIPT_MODULES["noise_sweep"].main([str(tmp_path), "--out", str(tmp_path / "n.png")])
