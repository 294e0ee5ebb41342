"""``fastft taxonomy``, ``subsets``, ``synth``, ``shard``, ``export``, ``verify``: the hierarchy, class subsets and stores."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FastFTError
from .args import add_options, config_from


def _params(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise FastFTError(f"--param expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_taxonomy(a):
    from ..data.taxonomy import load

    h = load()
    w = h.check(a.wnid)
    classes = h.under(w, a.rule)
    if a.json:
        print(json.dumps({"wnid": w, "name": h.name(w), "rule": a.rule, "count": len(classes),
                          "classes": [{"wnid": c, "label": h.label[c], "name": h.name(c)} for c in classes]}))
        return
    print(f"{w}  {h.name(w)}  ({a.rule} rule): {len(classes)} ILSVRC2012 classes")
    for c in classes:
        print(f"  {h.label[c]:4d}  {c}  {h.name(c)}")


def cmd_subsets_list(a):
    from ..data.subsets import CONSTRUCTIONS

    for name, c in CONSTRUCTIONS.items():
        print(f"{name:12s} {c.summary}\n{'':12s} parameters: {json.dumps({**c.defaults, **c.optional})}"
              f"{'' if c.needs_wordnet else '; needs no WordNet (any store)'}")


def cmd_subsets_make(a):
    from ..data.subsets import make

    from ..data.store import fill_store_params, open_store

    vocabulary = open_store(a.store).vocabulary if a.store else None
    spec = make(a.construction, a.seed, vocabulary,
                **fill_store_params(_params(a.param), a.store, f"construction {a.construction!r}"))
    path = spec.save(a.out)
    sets = ", ".join(f"{k}={len(v.classes)}" + (f"x{v.cap}" if v.cap else "") for k, v in spec.sets.items())
    print(f"wrote {path}: {a.construction} seed {a.seed}; sets {sets}; hash {spec.hash[:16]}")


def cmd_subsets_show(a):
    from ..data.subsets import load_spec
    from ..data.taxonomy import load

    h, spec = load(), load_spec(a.spec)
    if a.set:
        spec.set(a.set)  # a set the spec does not have is named, with those it has
    wordnet = spec.wordnet

    def entry(c: str, i: int) -> dict:  # a wnid: its ILSVRC2012 label and WordNet name; a store's own class: its name
        return {"wnid": c, "label": h.label[c], "name": h.name(c)} if wordnet else {"class": c, "view_label": i, "name": c}
    if a.json:
        print(json.dumps({"construction": spec.construction, "seed": spec.seed, "hash": spec.hash, "vocabulary": spec.vocabulary,
                          "sets": {k: {"cap": v.cap, "classes": [entry(c, i) for i, c in enumerate(v.classes)]}
                                   for k, v in spec.sets.items()}}, ensure_ascii=False))
        return
    vocab = "" if spec.vocabulary is None else f"; a store's own {spec.vocabulary['classes']} classes"
    print(f"{a.spec}: {spec.construction} seed {spec.seed}, hash {spec.hash[:16]} (checked){vocab}")
    for k, v in spec.sets.items():
        if a.set and k != a.set:
            continue
        print(f"  {k}: {len(v.classes)} class{'es' if len(v.classes) != 1 else ''}" + (f", at most {v.cap} training images each" if v.cap else ""))
        if a.set or len(v.classes) <= a.max:
            for i, c in enumerate(v.classes):
                print(f"    {h.label[c]:4d}  {c}  {h.name(c)}" if wordnet else f"    {i:4d}  {c}")


def cmd_subsets_distance(a):
    from ..data.subsets import distances, load_spec

    rows = distances(load_spec(a.spec))
    if a.json:
        print(json.dumps(rows))
        return
    print("WordNet distance = mean over target classes of (1 - Wu-Palmer similarity to the nearest source class); 0 = inside the source")
    for r in rows:
        print(f"  {r['source']:>10s} -> {r['target']:<12s} nearest {r['wup_nearest']:.4f}   all-pairs mean {r['wup_mean']:.4f}")


def cmd_subsets_resolve(a):
    from ..data.subsets import load_spec
    from ..data.views import resolve

    v = resolve(load_spec(a.spec), a.set, a.store, a.out)
    splits = ", ".join(f"{k}: {s['samples']} samples in {len(s['shards'])} shards" for k, s in v.meta["splits"].items())
    print(f"view {a.out}: set {a.set!r}, {v.num_classes} classes, cap {v.meta['cap']}; {splits}")
    if v.meta["short_classes"]:
        print(f"note: {len(v.meta['short_classes'])} classes have fewer images than the cap (kept all): {v.meta['short_classes']}")


def cmd_synth(a):
    from ..data.synth import synth

    classes = a.classes
    if classes and len(classes) == 1 and Path(classes[0]).is_file():
        classes = Path(classes[0]).read_text().split()
    r = synth(a.out, classes, a.train_per_class, a.val_per_class, a.size, a.quality, a.val_layout, a.broken, a.seed, a.workers,
              a.archives)
    print(f"wrote synthetic ImageNet {r['root']}: {r['classes']} classes, {r['train']} train + {r['val']} val files, "
          f"val layout {r['val_layout']}" + (f", {len(r['broken'])} broken files" if r["broken"] else "") +
          (" (as the downloaded archives)" if a.archives else ""))


SHARD_HELP = {  # ShardConfig's keys as options: defaults from the dataclass
    "resize": "WxH (256x256, as in the paper), short:N, or none",
    "quality": "JPEG quality of re-encoded images",
    "shard_mb": "target shard size in MB",
    "classes": "only these classes (wnids; with --dataset imagefolder, folder names), or a file of them (one a line)",
    "val_layout": "how val/ is labelled (auto: detected, and named in the manifest)",
    "seed": "seed of the global shuffle across shards",
    "allow_missing": "shard the classes present; missing ones are recorded, not an error",
    "skip_unknown": "skip folders that are not ILSVRC2012 wnids instead of failing",
    "dataset": "ilsvrc2012: its layouts, detected; imagefolder: train/<class>/ (+ val/<class>/), classes of any name, the "
               "store's own vocabulary (classes.txt)",
}


def cmd_shard(a):
    from ..data.shard import ShardConfig, write_store

    classes = a.classes or []
    if len(classes) == 1 and Path(classes[0]).is_file():
        text = Path(classes[0]).read_text(encoding="utf-8")  # a folder's class names: one a line (they may hold spaces)
        classes = text.split() if a.dataset == "ilsvrc2012" else [c for c in text.splitlines() if c]
    cfg = config_from(ShardConfig, a, SHARD_HELP, classes=tuple(classes))
    m = write_store(a.root, a.out, cfg, workers=a.workers, progress=not a.quiet)
    t = m["totals"]
    print(f"store {a.out}: {t['written']} written + {t['rejected']} rejected = {t['inputs']} inputs "
          f"({', '.join(f'{k} {v}' for k, v in t['by_split'].items())}; {t['classes']} classes; {len(m['shards'])} shards, "
          f"{t['bytes'] / 1e6:.1f} MB)")
    print(f"  input kinds: {m['input_kinds']}")
    if t["rejected"]:
        print(f"  rejected: {m['rejected_reasons']} — listed with reasons in {Path(a.out) / 'rejected.csv'}")
    if "_secs" in m and m["_secs"] > 0:
        print(f"  {t['inputs'] / m['_secs']:.0f} images/s")


def cmd_verify(a):
    from ..data.store import open_store, verify

    problems = verify(a.store, full=not a.quick, progress=True)
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        raise SystemExit(1)
    m = open_store(a.store).manifest
    print(f"OK {a.store}: {len(m['shards'])} shards, {m['totals']['written']} samples, hashes match the manifest, the sample index matches the shards")


def cmd_export(a):
    from ..data.export import export_shards, shard_urls
    from ..files import fsync_write

    splits = None if a.split == "all" else a.split.split(",")
    if a.shards:
        r = export_shards(a.view, a.shards, splits, a.shard_mb)
        for split, s in r["splits"].items():
            print(f"{split}: {s['samples']} samples in {len(s['shards'])} shards")
        print(f"wrote {a.shards}: WebDataset shards of the view's samples only (<key>.jpg + <key>.cls, the view's label "
              f"0..{len(r['classes']) - 1} as ASCII; classes.txt names them), a DALI index each, export.json")
        return
    urls = shard_urls(a.view, splits)
    try:
        fsync_write(Path(a.urls), "".join(u + "\n" for s in urls.values() for u in s["urls"]).encode())
    except OSError as e:
        raise FastFTError(f"cannot write the URL list {a.urls}: {e.strerror}") from None
    for split, s in urls.items():
        print(f"{split}: {len(s['urls'])} store shards, holding {s['shard_samples']} samples, {s['samples']} of them in the view")
    print(f"wrote {a.urls}: the store's own shards this view reads. They hold other samples too (other classes, and with a "
          f"per-class cap other images of the view's classes), and their .cls is the store's label, not the view's: keep "
          f"the view's samples by key (the `key` column of {Path(a.view) / '<split>.csv.gz'}), or export just them with --shards")


def add_commands(sub) -> None:
    s = sub.add_parser("taxonomy", help="show a WordNet synset and the ILSVRC2012 classes under it")
    s.add_argument("wnid", help="synset id (e.g. n02084071) or name (e.g. dog)")
    s.add_argument("--rule", default="primary", choices=["primary", "any"], help="primary: along each class's primary (longest) path (paper's sizes); any: any hypernym path")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_taxonomy)

    s = sub.add_parser("subsets", help="make, inspect and resolve class subsets (the study's constructions)")
    ss = s.add_subparsers(dest="subcmd", metavar="ACTION", required=True)
    x = ss.add_parser("list", help="name the constructions and their parameters")
    x.set_defaults(fn=cmd_subsets_list)
    x = ss.add_parser("make", help="write a subset spec (seeded, hashed)")
    x.add_argument("construction", help="one of `fastft subsets list` (e.g. instru, dog, random, instru-grid)")
    x.add_argument("--seed", type=int, default=0, help="draws the classes; part of the spec's hash")
    x.add_argument("--out", required=True, help="spec file to write (JSON)")
    x.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="override a construction parameter (repeatable); values are JSON, and within=store takes the classes of --store")
    x.add_argument("--store", help="the store the spec is for: all and random draw from its classes (classes.txt), and "
                   "its training classes fill a parameter given as =store (e.g. a partial store)")
    x.set_defaults(fn=cmd_subsets_make)
    x = ss.add_parser("show", help="a spec's sets: sizes, caps and classes (wnid, label, name); its hash is checked")
    x.add_argument("spec", help="a spec file (fastft subsets make)")
    x.add_argument("--set", help="only this set, every class listed")
    x.add_argument("--max", type=int, default=20, help="list the classes of sets up to this size")
    x.add_argument("--json", action="store_true", help="print one JSON object")
    x.set_defaults(fn=cmd_subsets_show)

    x = ss.add_parser("distance", help="WordNet distance between each source set and the target set of a spec")
    x.add_argument("spec", help="a spec file (fastft subsets make)")
    x.add_argument("--json", action="store_true", help="print the rows as JSON")
    x.set_defaults(fn=cmd_subsets_distance)
    x = ss.add_parser("resolve", help="turn one set of a spec into a view of a store (filtered indexes, no data copied)")
    x.add_argument("spec", help="a spec file (fastft subsets make)")
    x.add_argument("--set", required=True, help="which set of the spec (e.g. target, near, far)")
    x.add_argument("--store", required=True, help="the store (fastft shard) the view reads")
    x.add_argument("--out", required=True, help="view directory to write (its indexes select the set's samples)")
    x.set_defaults(fn=cmd_subsets_resolve)

    s = sub.add_parser("synth", help="write a synthetic ImageNet tree in the real ILSVRC2012 layout")
    s.add_argument("--out", required=True, help="directory for the tree (or the archives)")
    s.add_argument("--classes", nargs="*", help="wnids or a file of wnids (default: 24 classes from dog, instrumentality, living things)")
    s.add_argument("--train-per-class", type=int, default=40, help="training images per class")
    s.add_argument("--val-per-class", type=int, default=10, help="validation images per class")
    s.add_argument("--size", type=int, default=96, help="typical image side in pixels (sizes and aspect ratios vary around it)")
    s.add_argument("--quality", type=int, default=90, help="JPEG quality")
    s.add_argument("--val-layout", default="folders", choices=["folders", "devkit", "kaggle"],
                   help="val/<wnid>/ folders, a flat val/ with the devkit's ground truth, or Kaggle's LOC_val_solution.csv")
    s.add_argument("--broken", action="store_true", help="add CMYK, PNG-as-JPEG, grayscale, RGBA, truncated, 0-byte and non-image files")
    s.add_argument("--seed", type=int, default=0, help="same seed, same tree")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores for >= 2,000 images); same tree for any number")
    s.add_argument("--archives", action="store_true", help="write the files image-net.org serves instead of a tree: "
                   "ILSVRC2012_img_train.tar (a tar per class), ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("shard", help="ILSVRC2012 (or an image-folder dataset: --dataset imagefolder) -> WebDataset shard store (resumable)")
    s.add_argument("root", help="ImageNet root holding train/ and val/ (or ILSVRC/Data/CLS-LOC/), or the downloaded archives "
                   "ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar + ILSVRC2012_devkit_t12.tar.gz, read in place (no extraction)")
    s.add_argument("--out", required=True, help="store directory (re-running on it resumes; finished shards are kept)")
    from ..data.shard import ShardConfig

    from ..data.sources import DATASETS

    add_options(s, ShardConfig, SHARD_HELP, choices={"val_layout": ("auto", "folders", "devkit", "kaggle"), "dataset": DATASETS})
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_shard)

    s = sub.add_parser("export", help="a view as plain WebDataset: new shards of just its samples, or the list of store shards it reads")
    s.add_argument("view", help="a view directory (fastft subsets resolve, or a sweep's <out>/views/…)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--shards", metavar="OUT", help="write new WebDataset shards of the view's samples only into OUT (new or empty)")
    g.add_argument("--urls", metavar="FILE", help="write the paths of the store's shards the view reads, one a line "
                   "(they hold other samples too: see the note printed)")
    s.add_argument("--split", default="all", help="train, val, or all (comma-separated list)")
    s.add_argument("--shard-mb", type=float, default=256.0, help="target size of an exported shard in MB (--shards)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("verify", help="re-hash a store's shards and index files against its manifest")
    s.add_argument("store", help="a store directory (fastft shard)")
    s.add_argument("--quick", action="store_true", help="check presence and sizes only")
    s.set_defaults(fn=cmd_verify)
