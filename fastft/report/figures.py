"""The report's figures (PNG):

* ``curves-<plan>.png`` — test top-1 and train loss per epoch, mean over seeds, one line per run template / grid point
  (the paper's Fig. 4 for the LR plan, Fig. 5 for the source-size plan); a grid plan gets a row of panels per
  template, its grid points shaded in order;
* ``final-<plan>.png`` — final top-1, mean ± std over seeds, paper values as markers (Tables 2 and 3); a bar per row
  of the table, horizontal when there are more than ``MAX_COLUMNS``;
* ``grid-<plan>-<key>.png`` — top-1 against a grid key (freeze → Fig. 13, images per class → Fig. 12, lr → Fig. 4),
  a hue per template shaded by the other grid key (classes, augmentation);
* ``gains-<plan>.png`` — per images per class: fine-tuned − scratch, near − far (Fig. 12 e/f), augmented − not (Fig. 14);
* ``probes-<plan>.png`` — linear-probe accuracy per layer, one line per model, source models before fine-tuning
  dashed, and the per-layer gains (Fig. 10; after ``fastft analyze probes``);
* ``filters-<plan>.png`` — % of classes where model A's conv5 filters are more sensitive than B's, mean over seeds
  (Fig. 9; after ``fastft analyze filters``);
* ``distance.png`` — fine-tuned top-1 against the WordNet source→target distance.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..subsets import is_target_set
from .collect import counted
from .stats import GAIN_PAIRS, _natural
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


def figures(summary: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    made = []
    for plan in summary["plan"].unique():
        c = curves[curves["plan"] == plan]
        if not c.empty:
            made.append(_curves_figure(c, plan, out, plt))
        s = summary[summary["plan"] == plan]
        # source models are tested on their own classes, not the target's: a lighter bar says so
        sets = runs[runs["plan"] == plan].groupby(["template", "grid"])["set"].first()
        on_target = [is_target_set(sets.get((t, g))) for t, g in zip(s["template"], s["grid"])]
        colors = ["#4c72b0" if x else "#a6bddb" for x in on_target]
        pos = range(len(s))
        if len(s) <= MAX_COLUMNS:
            fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(s) + 2), 4))
            ax.bar(pos, s["top1_mean"], yerr=s["top1_std"], capsize=4, color=colors)
            ax.set_xticks(pos, [f"{t}\n{g}".strip() for t, g in zip(s["template"], s["grid"])], fontsize=7)
            ax.set(ylabel="top-1 (%)")
        else:  # a grid plan: one row per template × grid point, read top to bottom like the table
            fig, ax = plt.subplots(figsize=(7, 0.2 * len(s) + 1.2))
            ax.barh(pos, s["top1_mean"], xerr=s["top1_std"], capsize=2, color=colors, height=0.7)
            ax.set_yticks(pos, [f"{t}  {g}".strip() for t, g in zip(s["template"], s["grid"])], fontsize=6)
            ax.set_ylim(len(s) - 0.5, -0.5)
            ax.set(xlabel="top-1 (%)")
        handles = [Patch(color="#4c72b0", label="fastft, on the target")]
        if not all(on_target):
            handles.append(Patch(color="#a6bddb", label="fastft, source model on its own classes"))
        if s["paper_top1"].notna().any():
            xy = (pos, s["paper_top1"]) if len(s) <= MAX_COLUMNS else (s["paper_top1"], pos)
            handles.append(ax.scatter(*xy, color="#dd8452", zorder=3, label="paper", marker="D"))
        ax.set_title(f"{plan}: final accuracy (mean ± std over seeds)")
        below = 0.14 if len(s) <= MAX_COLUMNS else 0.55 / (0.2 * len(s))  # under the x label (axes fraction)
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=len(handles), frameon=False)
        fig.tight_layout()
        made.append(_save(fig, out / f"final-{plan}.png"))
        r = counted(runs)
        r = r[r["plan"] == plan]
        made += _grid_figures(r, plan, out, plt)
        if _probe_layers(s):
            made.append(_probes_figure(s, plan, out, plt))
    ft = counted(runs)
    ft = ft[ft["distance"].notna()]
    if len(ft):  # WordNet distance; and the feature distance where `fastft analyze distance` measured it
        axes_x = [("distance", "WordNet distance source→target (1 − Wu-Palmer to nearest source class)")]
        if "feature_cosine_nearest" in ft and ft["feature_cosine_nearest"].notna().any():
            axes_x.append(("feature_cosine_nearest", "feature distance (1 − cosine of fc7 class means, source model)"))
        fig, axes = plt.subplots(1, len(axes_x), figsize=(6 * len(axes_x), 4), squeeze=False)
        plans = list(dict.fromkeys(ft["plan"]))
        for ax, (col, label) in zip(axes[0], axes_x):
            for p, g in ft.groupby("plan", sort=False):  # a hue per plan, a shade per template (a run per point)
                templates = sorted(set(g["template"]), key=_natural)
                for j, (t, gt) in enumerate(sorted(g.groupby("template"), key=lambda x: _natural(x[0]))):
                    ax.scatter(gt[col], gt["top1"], s=14, alpha=0.7, color=_family(plans.index(p), j, len(templates)),
                               label=f"{p}: {t}")
            ax.set(xlabel=label, ylabel="fine-tuned top-1 (%)", title="accuracy vs source–target distance")
        _legend_beside(axes[0][-1])
        fig.tight_layout()
        made.append(_save(fig, out / "distance.png"))
    return made


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
        ax.legend(fontsize=7)
    if gains:
        ax = axes[0][1]
        for label, vals, style in gains:
            ax.plot(layers, vals, linestyle=style, marker="o", label=label)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="gain (points)", title=f"{plan}: gains per layer (Fig. 10 b)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / f"probes-{plan}.png")


MAX_COLUMNS = 16  # bars side by side in final-<plan>.png; a plan with more (a grid) gets one row per bar


MAX_LINES = 10    # lines on one curves panel; a plan with more (a grid) gets a row of panels per template


def _curves_figure(c: pd.DataFrame, plan: str, out: Path, plt) -> Path:
    """Test top-1 and train loss per epoch, mean over seeds with ± std shaded. A grid plan (more than ``MAX_LINES``
    lines) gets one row per template, its grid points coloured in order (light → dark), the legend beside."""
    import matplotlib

    lines = list(c.groupby(["template", "grid"], sort=False).size().index)
    if len(lines) <= MAX_LINES:
        rows = [(None, lines)]
    else:  # templates without a grid (a plan's sources) share a row; each other template has its own
        per = {t: sorted([x for x in lines if x[0] == t], key=lambda x: _natural(x[1])) for t in sorted({x[0] for x in lines})}
        rows = [("", [x[0] for x in per.values() if len(x) == 1])] + [(t, x) for t, x in per.items() if len(x) > 1]
        rows = [r for r in rows if r[1]]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4 if len(rows) == 1 else 2.8 * len(rows)), squeeze=False)
    for ax, (t, keys) in zip(axes, rows):
        cmap = matplotlib.colormaps["viridis_r"]
        for i, (tt, g) in enumerate(keys):
            by = c[(c["template"] == tt) & (c["grid"] == g)].groupby("epoch")
            m, sd = by[["top1", "train_loss"]].mean(), by[["top1", "train_loss"]].std().fillna(0)
            color = cmap(0.15 + 0.85 * i / max(1, len(keys) - 1)) if t else None  # a template's grid: light → dark
            for a, k, hi in zip(ax, ("top1", "train_loss"), (100, None)):  # ± std within 0-100 %, loss >= 0
                (line,) = a.plot(m.index, m[k], color=color, lw=1.2, label=(g if t else f"{tt} {g}").strip())
                a.fill_between(m.index, (m[k] - sd[k]).clip(0, hi), (m[k] + sd[k]).clip(0, hi), color=line.get_color(),
                               alpha=0.15, linewidth=0)
        name = f"{plan}: " if t is None else f"{t}: " if t else "sources: "
        ax[0].set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{name}test accuracy (mean ± std over seeds)")
        ax[1].set(xlabel="epoch", ylabel="train loss", title=f"{name}training loss")
        if t is None:
            ax[0].legend(fontsize=7)
        else:
            ax[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, ncol=1 + len(keys) // 16)
    if len(rows) > 1:
        fig.suptitle(plan)
    fig.tight_layout()
    return _save(fig, out / f"curves-{plan}.png")


def _legend_beside(ax) -> None:
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


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
            ax.set_xscale("log")
        _legend_beside(ax)
        fig.tight_layout()
        made.append(_save(fig, out / f"grid-{plan}-{key[5:]}.png"))
    x = "grid_images" if "grid_images" in keys else None
    if x is None:
        return made
    lines = gain_lines(r, keys, x)
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
    ax.set(xlabel="training images per class", ylabel="top-1 gain (points)", xscale="log", title=f"{plan}: gains")
    _legend_beside(ax)
    fig.tight_layout()
    made.append(_save(fig, out / f"gains-{plan}.png"))
    return made


FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "RdPu", "YlOrBr")  # one hue per template / comparison


def _family(i: int, j: int = 0, n: int = 1):
    """Colour ``j`` of ``n`` in hue family ``i``: a template's (or a comparison's) lines read as one family, the
    values of its other grid keys as shades, light → dark."""
    import matplotlib

    return matplotlib.colormaps[FAMILIES[i % len(FAMILIES)]](0.75 if n <= 1 else 0.3 + 0.7 * (j + 1) / n)


def gain_lines(r: pd.DataFrame, keys: list[str], x: str) -> list[tuple[str, pd.Series]]:
    """The gains figure's lines: (name, mean gain indexed by the other grid keys and ``x``) for the study's
    comparisons (``GAIN_PAIRS``) and, for templates run with and without it, augmented − not. Each gain is paired by
    seed (the same class draw), then averaged: while seeds are still training, a difference of means over different
    seeds would mix draws."""
    by_seed = r.groupby(["template"] + [k for k in keys if k != x] + [x, "seed"], dropna=False)["top1"].mean()
    mean_over_seeds = lambda d: d.dropna().groupby(level=[n for n in d.index.names if n != "seed"], dropna=False).mean()  # noqa: E731
    lines = []
    templates = set(r["template"])
    for a, b in GAIN_PAIRS:
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
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
