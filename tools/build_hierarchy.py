"""Regenerate ``fastft/_data/ilsvrc2012_hierarchy.json`` from WordNet 3.0 through nltk.

The package ships the generated file so that ``fastft`` never needs WordNet data at run time; this tool is
only for rebuilding it (or auditing it). Getting WordNet 3.0 for nltk:

* online:  ``python -c "import nltk; nltk.download('wordnet')"``
* offline (Debian/Ubuntu): ``apt-get install wordnet-base wordnet-sense-index``, then
  ``mkdir -p ~/nltk_data/corpora/wordnet && cp /usr/share/wordnet/* ~/nltk_data/corpora/wordnet/`` and add the
  ``lexnames`` file (Debian lacks it; a copy ships as ``tools/wordnet-3.0-lexnames``) as
  ``~/nltk_data/corpora/wordnet/lexnames``. nltk >= 3.10 reads corpora only under an nltk data path
  (``NLTK_DATA`` or ``~/nltk_data``).

Usage: ``python tools/build_hierarchy.py [--wnids fastft/_data/ilsvrc2012_wnids.txt] [--out fastft/_data/ilsvrc2012_hierarchy.json]``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wnid(s) -> str:
    return f"{s.pos()}{s.offset():08d}"


def _max_depth(s, memo: dict = {}) -> int:
    if s not in memo:
        memo[s] = 1 + max((_max_depth(h) for h in s.hypernyms() + s.instance_hypernyms()), default=0)
    return memo[s]


def _primary_path(s) -> list:
    """The class's longest hypernym path, ties broken bottom-up by WordNet's own order of hypernyms.

    Walking up from the class, step to the hypernym with the longest path to ``entity``; among equals take the
    one with the smaller synset offset (nltk's own order of hypernyms is not stable, offsets are). This pins one tree inside the DAG (instrumentality: 347 classes, dog: 118, as in the
    paper); "every path" counting gives 358 / 118.
    """
    path = [s]
    while hs := s.hypernyms() + s.instance_hypernyms():
        best = max(_max_depth(h) for h in hs)
        s = min((h for h in hs if _max_depth(h) == best), key=lambda h: h.offset())
        path.append(s)
    return path


def build(wnids: list[str]) -> dict:
    from nltk.corpus import wordnet as wn

    nodes: dict[str, str] = {}
    classes = []
    for w in wnids:
        s = wn.synset_from_pos_and_offset(w[0], int(w[1:]))
        # sorted so the file (and every rule that picks "the first" path) is independent of nltk's traversal order
        paths = sorted([wnid(x) for x in p] for p in s.hypernym_paths())
        for p in s.hypernym_paths():
            for x in p:
                nodes[wnid(x)] = x.lemma_names()[0]
        primary = [wnid(x) for x in reversed(_primary_path(s))]
        classes.append({"wnid": w, "names": [n.replace("_", " ") for n in s.lemma_names()], "paths": paths,
                        "primary": paths.index(primary)})
    return {
        "source": f"WordNet {wn.get_version()} via nltk",
        "nodes": dict(sorted(nodes.items())),
        "classes": classes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wnids", type=Path, default=ROOT / "fastft/_data/ilsvrc2012_wnids.txt")
    ap.add_argument("--out", type=Path, default=ROOT / "fastft/_data/ilsvrc2012_hierarchy.json")
    a = ap.parse_args()
    wnids = a.wnids.read_text().split()
    data = build(wnids)
    # one class per line: small diffs when it is regenerated
    lines = ['{"source": %s,' % json.dumps(data["source"]), ' "nodes": %s,' % json.dumps(data["nodes"]), ' "classes": [']
    lines += ["  " + json.dumps(c) + ("," if i < len(wnids) - 1 else "") for i, c in enumerate(data["classes"])]
    lines += [" ]}"]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}: {len(data['classes'])} classes, {len(data['nodes'])} synsets")


if __name__ == "__main__":
    main()
