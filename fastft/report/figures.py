"""The report's figures (PNG):

* ``curves-<plan>.png`` — test top-1 and train loss per epoch, mean over seeds, one line per run template / grid point
  (the paper's Fig. 4 for the LR plan, Fig. 5 for the source-size plan); a grid plan gets a row of panels per
  template, its grid points shaded in order;
* ``final-<plan>.png`` — final top-1, mean ± std over seeds, paper values as markers (Tables 2 and 3); a bar per row
  of the table, horizontal when there are more than ``MAX_COLUMNS``;
* ``grid-<plan>-<key>.png`` — top-1 against a grid key (freeze → Fig. 13, images per class → Fig. 12, lr → Fig. 4),
  a hue per template shaded by the other grid key (classes, augmentation);
* ``gains-<plan>.png`` — per images per class: the plan's comparisons (``report: {pairs: …}``: fine-tuned − scratch,
  near − far: Fig. 12 e/f), augmented − not (Fig. 14);
* ``probes-<plan>.png`` — linear-probe accuracy per layer, one line per model, source models before fine-tuning
  dashed, and the per-layer gains (Fig. 10; after ``fastft analyze probes``);
* ``filters-<plan>.png`` — % of classes where model A's conv5 filters are more sensitive than B's, mean over seeds
  (Fig. 9; after ``fastft analyze filters``);
* ``distance.png`` — fine-tuned top-1 against the WordNet source→target distance.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..data.subsets import is_target_set
from .collect import counted
from .stats import _natural, pairs_of
from .tables import _label, _probe_layers, _values


def beats_figure(beats: dict, names: list[str], path: Path, title: str = "") -> Path:
    """Fig. 9 as a matrix: the percentage of the target's classes where model A (row) has the more sensitive conv5
    filters than model B (column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[beats.get(a, {}).get(b, np.nan) for b in names] for a in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2.5), 1.0 * len(names) + 1.8))
    im = ax.imshow(m, vmin=0, vmax=100, cmap="RdBu_r")
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j and not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=9)
    short = [n[:20] for n in names]
    ax.set_xticks(range(len(names)), short, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), short, fontsize=8)
    ax.set(xlabel="model B", ylabel="model A")
    ax.set_title(title or "% of classes where A's conv5 filters are more sensitive (Fig. 9)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


# Okabe & Ito's palette (distinguishable with each common colour-vision deficiency), without its yellow (too light
# on white) and black (kept for references): categorical lines and bars; shades of a hue mix it with white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999999")
PAPER = "#000000"  # the paper's numbers: black markers
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.25, "grid.linewidth": 0.6, "lines.linewidth": 1.5, "pdf.fonttype": 42,
         "axes.prop_cycle": None}  # filled in figures(): matplotlib's cycler
DPI = 150  # PNGs; every figure also has a PDF beside it
MIN_BAND_SEEDS = 3  # curves: a ± std band from this many seeds; below it, each seed's own thin line


def figures(summary: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure of the report (PNG, and a PDF beside each for papers); returns the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    with plt.rc_context({**STYLE, "axes.prop_cycle": cycler(color=PALETTE)}):
        made = []
        for plan in summary["plan"].unique():
            c = curves[curves["plan"] == plan]
            s = summary[summary["plan"] == plan]
            sets = runs[runs["plan"] == plan].groupby(["template", "grid"])["set"].first()
            r = counted(runs)
            r = r[r["plan"] == plan]
            plan = plan if plan != "-" else "runs"  # runs of no plan (fastft train): curves-runs.png, titled "runs"
            if not c.empty:
                made.append(_curves_figure(c, plan, out, plt, sets, s))
            made.append(_final_figure(s, sets, r, plan, out, plt))
            made += _grid_figures(r, plan, out, plt)
            if _probe_layers(s):
                made.append(_probes_figure(s, plan, out, plt))
        ft = counted(runs)
        ft = ft[ft["distance"].notna()]
        if len(ft):
            made.append(_distance_figure(ft, out, plt))
    return made


def _on_target(sets: pd.Series, template: str, grid: str) -> bool:
    return is_target_set(sets.get((template, grid)))


def _final_figure(s: pd.DataFrame, sets: pd.Series, r: pd.DataFrame, plan: str, out: Path, plt) -> Path:
    """Final top-1, mean ± std over seeds as bars, each seed as a dot, the paper's value as a black diamond: models
    on the target in one panel, source models (each tested on its own classes, not comparable with the target's) in
    another."""
    on = [_on_target(sets, t, g) for t, g in zip(s["template"], s["grid"])]
    parts = [(name, s[[x == want for x in on]]) for name, want in (("on the target", True), ("source models, each on its own classes", False))]
    parts = [(n, p) for n, p in parts if len(p)]
    wide = max(len(p) for _, p in parts) <= MAX_COLUMNS
    if wide:
        fig, axes = plt.subplots(1, len(parts), figsize=(sum(max(3.0, 0.75 * len(p) + 1.2) for _, p in parts), 3.6),
                                 squeeze=False, gridspec_kw={"width_ratios": [max(3.0, 0.75 * len(p) + 1.2) for _, p in parts]})
    else:  # a grid plan: one row per template × grid point, read top to bottom like the table
        fig, axes = plt.subplots(len(parts), 1, figsize=(7, sum(0.22 * len(p) + 1.0 for _, p in parts)), squeeze=False,
                                 gridspec_kw={"height_ratios": [0.22 * len(p) + 1.0 for _, p in parts]})
    for ax, (name, p) in zip(axes.flat, parts):
        pos = range(len(p))
        color = PALETTE[0] if name == "on the target" else PALETTE[6]
        labels = [f"{t}\n{g}".strip() if wide else f"{t}  {g}".strip() for t, g in zip(p["template"], p["grid"])]
        seeds = [r[(r["template"] == t) & (r["grid"] == g)]["top1"].dropna().to_numpy() for t, g in zip(p["template"], p["grid"])]
        dots = [(i + d, v) for i, vals in enumerate(seeds) for d, v in zip(_spread(len(vals)), vals)]
        if wide:
            ax.bar(pos, p["top1_mean"], yerr=p["top1_std"], capsize=3, color=color, width=0.7, label="fastft (mean ± std)")
            if dots:
                ax.scatter(*zip(*dots), s=9, color="white", edgecolor="black", linewidth=0.6, zorder=3, label="a seed")
            ax.set_xticks(list(pos), labels)
            ax.set(ylabel="top-1 (%)")
            ax.grid(axis="x", visible=False)
        else:
            ax.barh(pos, p["top1_mean"], xerr=p["top1_std"], capsize=2, color=color, height=0.7, label="fastft (mean ± std)")
            if dots:
                ax.scatter([v for _, v in dots], [i for i, _ in dots], s=7, color="white", edgecolor="black", linewidth=0.5,
                           zorder=3, label="a seed")
            ax.set_yticks(list(pos), labels, fontsize=7)
            ax.set_ylim(len(p) - 0.5, -0.5)
            ax.set(xlabel="top-1 (%)")
        if p["paper_top1"].notna().any():
            xy = (list(pos), p["paper_top1"]) if wide else (p["paper_top1"], list(pos))
            ax.scatter(*xy, color=PAPER, zorder=3, label="paper", marker="D", s=22)
        ax.set_title(name)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"{plan}: final top-1 over {int(s['seeds'].max())} seed(s)")
    fig.tight_layout()
    return _save(fig, out / f"final-{plan}.png")


def _spread(n: int) -> list[float]:
    """Offsets that set ``n`` dots side by side within a bar."""
    return [0.0] if n <= 1 else [-0.22 + 0.44 * k / (n - 1) for k in range(n)]


def _distance_figure(ft: pd.DataFrame, out: Path, plt) -> Path:
    """Fine-tuned top-1 against the WordNet distance (and the feature distance where ``fastft analyze distance``
    measured it): a colour per plan, a marker per template, a point per run."""
    axes_x = [("distance", "WordNet distance source→target\n(1 − Wu-Palmer to the nearest source class)")]
    if "feature_cosine_nearest" in ft and ft["feature_cosine_nearest"].notna().any():
        axes_x.append(("feature_cosine_nearest", "feature distance\n(1 − cosine of fc7 class means, source model)"))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(4.6 * len(axes_x) + 1.6, 3.6), squeeze=False)
    plans = list(dict.fromkeys(ft["plan"]))
    for ax, (col, label) in zip(axes[0], axes_x):
        for p, g in ft.groupby("plan", sort=False):
            for j, (t, gt) in enumerate(sorted(g.groupby("template"), key=lambda x: _natural(x[0]))):
                hue = plans.index(p) if len(plans) > 1 else j  # one plan: a colour per template
                ax.scatter(gt[col], gt["top1"], s=28, alpha=0.85, color=PALETTE[hue % len(PALETTE)],
                           marker="osD^v<>P"[j % 8], label=f"{p}: {t}", edgecolor="white", linewidth=0.5)
        ax.set(xlabel=label, ylabel="fine-tuned top-1 (%)")
    fig.suptitle("accuracy vs source–target distance")
    _legend_beside(axes[0][-1])
    fig.tight_layout()
    return _save(fig, out / "distance.png")


def _probes_figure(s: pd.DataFrame, plan: str, out: Path, plt) -> Path:
    """Fig. 10. (a) Linear-probe accuracy per layer: a solid line per model on its target, dashed in the same colour
    for its source model before fine-tuning, the paper's values as hollow markers. (b) Where the plan has ft-near and
    ft-far with both: near − far before and after fine-tuning, and after − before for each."""
    layers = _probe_layers(s)
    rows = {r.template: r for r in s.itertuples() if not r.grid}
    gains = [] if not {"ft-near", "ft-far"} <= set(rows) else [
        (label, [a - b for a, b in zip(_values(rows[x], px, layers), _values(rows[y], py, layers))], style)
        for label, x, px, y, py, style in (
            ("near − far, after fine-tuning", "ft-near", "probe_", "ft-far", "probe_", "-"),
            ("near − far, before fine-tuning", "ft-near", "probe_before_", "ft-far", "probe_before_", "--"),
            ("near: after − before", "ft-near", "probe_", "ft-near", "probe_before_", ":"),
            ("far: after − before", "ft-far", "probe_", "ft-far", "probe_before_", "-."))]
    gains = [g for g in gains if any(pd.notna(v) for v in g[1])]
    fig, axes = plt.subplots(1, 2 if gains else 1, figsize=(12 if gains else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for r in s.itertuples():
        line = None
        for prefix, style, name in (("probe_", "-", _label(r)), ("probe_before_", "--", f"{r.source_template or 'source'} (before {r.template})")):
            vals = _values(r, prefix, layers)
            if any(pd.notna(x) for x in vals):
                (line,) = ax.plot(layers, vals, linestyle=style, marker="o", label=name, **({"color": line.get_color()} if line else {}))
            paper = _values(r, f"paper_{prefix}", layers)
            if line is not None and any(pd.notna(x) for x in paper):
                ax.plot(layers, paper, linestyle="none", marker="D" if prefix == "probe_" else "s", mfc="none",
                        color=line.get_color(), label=f"{name} (paper)")
    ax.set(xlabel="layer", ylabel="linear probe top-1 (%)", title=f"{plan}: layer probes (Fig. 10 a)")
    if gains:
        _legend_beside(ax)
    else:
        ax.legend(frameon=False)
    if gains:
        ax = axes[0][1]
        for label, vals, style in gains:
            ax.plot(layers, vals, linestyle=style, marker="o", label=label)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="gain (points)", title=f"{plan}: gains per layer (Fig. 10 b)")
        ax.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, out / f"probes-{plan}.png")


MAX_COLUMNS = 16  # bars side by side in final-<plan>.png; a plan with more (a grid) gets one row per bar


MAX_LINES = 10    # lines on one curves panel; a plan with more (a grid) gets a row of panels per template


def _curves_figure(c: pd.DataFrame, plan: str, out: Path, plt, sets: pd.Series, s: pd.DataFrame) -> Path:
    """Test top-1 and train loss per epoch, mean over seeds: with a ± std band from ``MIN_BAND_SEEDS`` seeds, each
    seed's thin line below that. Models on the target and source models (on their own classes) in separate rows; a
    grid plan (more than ``MAX_LINES`` lines) gets a row per target template, its grid points shaded light → dark.
    The paper's final top-1, where the plan has it, is a black diamond at the last epoch."""
    lines = list(c.groupby(["template", "grid"], sort=False).size().index)
    target = [x for x in lines if _on_target(sets, *x)]
    rows = [("sources", [x for x in lines if x not in target])]
    if len(target) <= MAX_LINES:
        rows.insert(0, ("on the target", target))
    else:
        per = {t: sorted([x for x in target if x[0] == t], key=lambda x: _natural(x[1])) for t in sorted({x[0] for x in target})}
        rows[:0] = [(t, x) for t, x in per.items()]
    rows = [r for r in rows if r[1]]
    paper = {(r.template, r.grid): r.paper_top1 for r in s.itertuples() if pd.notna(r.paper_top1)}
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for ax, (title, keys) in zip(axes, rows):
        shaded = len(keys) > 1 and title not in ("on the target", "sources")  # a template's grid points
        for i, key in enumerate(keys):
            g = c[(c["template"] == key[0]) & (c["grid"] == key[1])]
            color = _ordinal(i, len(keys)) if shaded else PALETTE[i % len(PALETTE)]
            label = (key[1] if shaded else f"{key[0]} {key[1]}").strip()
            _curve_lines(ax, g, color, label)
            if key in paper:
                ax[0].scatter([g["epoch"].max()], [paper[key]], marker="D", color=PAPER, s=22, zorder=4,
                              label="paper (final)" if not any(h.get_label() == "paper (final)" for h in ax[0].collections) else None)
        seeds = int(c[c["template"].isin([k[0] for k in keys])]["seed"].nunique())
        how = "mean ± std" if seeds >= MIN_BAND_SEEDS else "mean (thin: each seed)"
        ax[0].set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{title}: test accuracy ({how}, {seeds} seed(s))")
        ax[1].set(xlabel="epoch", ylabel="train loss", title=f"{title}: training loss")
        _legend_beside(ax[1])
        for a in ax:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(plan)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
    return _save(fig, out / f"curves-{plan}.png")


def _log_ticks(ax, values) -> None:
    """A log x axis labelled at the grid's own values (30, 240, 1200; 0.0001 … 0.01), not at powers of ten."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_xticks(sorted(values), [f"{v:g}" for v in sorted(values)])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ordinal(i: int, n: int):
    """Colour ``i`` of ``n`` ordered values (a template's grid points): viridis, light → dark (perceptually even, and
    readable with colour-vision deficiencies)."""
    import matplotlib

    return matplotlib.colormaps["viridis_r"](0.15 + 0.8 * i / max(1, n - 1))


def _curve_lines(ax, g: pd.DataFrame, color, label: str) -> None:
    """One model's curves on the (accuracy, loss) axes: the mean over seeds, and a band (enough seeds) or the seeds."""
    by = g.groupby("epoch")
    m, sd = by[["top1", "train_loss"]].mean(), by[["top1", "train_loss"]].std().fillna(0)
    few = g["seed"].nunique() < MIN_BAND_SEEDS
    for a, k, hi in zip(ax, ("top1", "train_loss"), (100, None)):  # a band within 0-100 %, loss >= 0
        a.plot(m.index, m[k], color=color, label=label)
        if few and g["seed"].nunique() > 1:
            for _, gs in g.groupby("seed"):
                a.plot(gs["epoch"], gs[k], color=color, lw=0.7, alpha=0.45)
        elif not few:
            a.fill_between(m.index, (m[k] - sd[k]).clip(0, hi), (m[k] + sd[k]).clip(0, hi), color=color, alpha=0.18, linewidth=0)


def _legend_beside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _grid_figures(r: pd.DataFrame, plan: str, out: Path, plt) -> list[Path]:
    """Accuracy against each numeric grid key, one line per template (and per value of the other grid keys);
    gains between templates (Fig. 12 e/f) and from augmentation (Fig. 14) against images per class."""
    made = []
    keys = [k for k in r.columns if k.startswith("grid_") and k != "grid_set" and r[k].notna().any()
            and pd.api.types.is_numeric_dtype(r[k])]
    for key in [k for k in keys if r[k].nunique() >= 2 and k != "grid_classes"]:
        rr = r[r[key].notna()]
        others = [k for k in keys if k != key and rr[k].nunique() >= 2]  # a constant key (classes=100) names nothing
        fig, ax = plt.subplots(figsize=(6.5, 4))
        templates = sorted(set(rr["template"]))
        for lab, g in rr.groupby(["template"] + others, sort=True, dropna=False):
            lab = lab if isinstance(lab, tuple) else (lab,)
            name = " ".join([str(lab[0])] + [f"{o[5:]}={v:g}" for o, v in zip(others, lab[1:]) if pd.notna(v)])
            m = g.groupby(key)["top1"].agg(["mean", "std"]).fillna(0)
            ax.errorbar(m.index, m["mean"], yerr=m["std"], capsize=3, label=name,
                        **{"marker": "o", **_grid_style(rr, others, templates.index(lab[0]), lab[1:])})
        ax.set(xlabel=key[5:], ylabel="top-1 (%)", title=f"{plan}: accuracy vs {key[5:]}")
        if key in ("grid_lr", "grid_images"):
            _log_ticks(ax, rr[key].dropna().unique())
        _legend_beside(ax)
        fig.tight_layout()
        made.append(_save(fig, out / f"grid-{plan}-{key[5:]}.png"))
    x = "grid_images" if "grid_images" in keys else None
    if x is None:
        return made
    lines = gain_lines(r, keys, x, pairs_of(r))
    if not lines:
        return made
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, gain) in enumerate(lines):
        gain = gain.dropna()
        constant = [n for n in gain.index.names if n != x and gain.index.get_level_values(n).nunique() <= 1]
        gain = gain.droplevel(constant) if constant else gain  # classes=100 throughout names nothing
        extra = [n for n in gain.index.names if n != x]
        groups = list(gain.groupby(level=extra, dropna=False)) if extra else [((), gain)]
        for j, (lab, g) in enumerate(groups):
            lab = lab if isinstance(lab, tuple) else (lab,)
            suffix = " ".join(f"{n[5:]}={v:g}" for n, v in zip(extra, lab) if pd.notna(v))
            g = g.droplevel(extra) if extra else g
            ax.plot(g.index, g.values, marker="o", color=_family(i, j, len(groups)), label=f"{name} {suffix}".strip())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training images per class", ylabel="top-1 gain (points)", title=f"{plan}: gains")
    _log_ticks(ax, r[x].dropna().unique())
    _legend_beside(ax)
    fig.tight_layout()
    made.append(_save(fig, out / f"gains-{plan}.png"))
    return made


def _family(i: int, j: int = 0, n: int = 1):
    """Shade ``j`` of ``n`` of palette hue ``i``: a template's (or a comparison's) lines read as one family, the
    values of its other grid keys as shades, light → dark (the hue mixed with white)."""
    import matplotlib.colors as mc

    base = mc.to_rgb(PALETTE[i % len(PALETTE)])
    w = 0.0 if n <= 1 else 0.65 * (1 - (j + 1) / n)  # the last shade is the pure hue
    return tuple(c + (1 - c) * w for c in base)


def gain_lines(r: pd.DataFrame, keys: list[str], x: str, pairs: list[tuple[str, str]]) -> list[tuple[str, pd.Series]]:
    """The gains figure's lines: (name, mean gain indexed by the other grid keys and ``x``) for the plan's comparisons
    (``pairs``: its ``report: {pairs: …}``) and, for templates run with and without it, augmented − not. Each gain is
    paired by seed (the same class draw), then averaged: while seeds are still training, a difference of means over
    different seeds would mix draws."""
    by_seed = r.groupby(["template"] + [k for k in keys if k != x] + [x, "seed"], dropna=False)["top1"].mean()
    mean_over_seeds = lambda d: d.dropna().groupby(level=[n for n in d.index.names if n != "seed"], dropna=False).mean()  # noqa: E731
    lines = []
    templates = set(r["template"])
    for a, b in pairs:
        if a in templates and b in templates:
            lines.append((f"{a} − {b}", mean_over_seeds(by_seed.xs(a, level="template") - by_seed.xs(b, level="template"))))
    if "grid_augment_to" in keys:  # templates run with and without augmentation (a plan's sources have no grid)
        for t, g in r[r["grid_augment_to"].notna()].groupby("template"):
            if g["grid_augment_to"].nunique() == 2:
                lo, hi = sorted(g["grid_augment_to"].unique())
                mt = by_seed.xs(t, level="template")
                lines.append((f"{t}: augmented − not",
                              mean_over_seeds(mt.xs(hi, level="grid_augment_to") - mt.xs(lo, level="grid_augment_to"))))
    return lines


def _grid_style(rr: pd.DataFrame, others: list[str], t: int, values: tuple) -> dict:
    """A grid figure's line style: template ``t``'s hue, shaded by the first other grid key's value; a second key's
    value as the marker."""
    if not others:
        return {"color": _family(t)}
    levels = sorted(rr[others[0]].dropna().unique())
    style = {"color": _family(t, levels.index(values[0]) if pd.notna(values[0]) else len(levels) - 1, len(levels))}
    if len(others) > 1 and pd.notna(values[1]):
        style["marker"] = "osD^v<>"[sorted(rr[others[1]].dropna().unique()).index(values[1]) % 7]
    return style


def _save(fig, path: Path) -> Path:
    """``path`` (PNG, 150 dpi) and a PDF beside it (vector, fonts embedded: for a paper)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path
