"""Class subsets of a store chosen through the WordNet hierarchy (ILSVRC2012's classes) or from the store's own class
vocabulary (any store: ``all``, optionally of an explicit class list, and ``random``, each with a per-class image
cap): the study's constructions, seeded and hashed.

A construction says whether it needs WordNet (:attr:`Construction.needs_wordnet`). Those that do draw from the
hierarchy and run where the store's classes are wnids; the others draw from a vocabulary — ILSVRC2012's 1000 wnids
by default, or the classes of a store (``make(..., vocabulary=store.vocabulary)``; an image-folder store's names). A
spec drawn from a vocabulary other than ILSVRC2012's records it (``vocabulary``: its size and sha256), and its class
names are checked against it rather than against ILSVRC2012.

A *subset spec* is a small JSON file holding named class sets (e.g. ``target``, ``near``, ``far``), each with an
optional per-class image cap, plus everything needed to recreate it: construction, parameters, seed, hierarchy
version/hash and branch rule, and a content hash over all of that. Specs say nothing about images; turning a spec
into concrete samples is the job of a store's views (``fastft.data.views.resolve``), which apply the caps with the
same seed.

Draws use ``random.Random`` seeded with a string naming the construction *family* and the seed, so constructions
of one family agree for the same seed: ``instru``, ``instru-240`` and ``instru-grid`` share INSTRU, near and far
(the paper fine-tunes the same near/far models in §4.3–4.6); ``random`` and ``source-size`` share the target.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import FastFTError
from ..files import fsync_write
from .taxonomy import DOG, HIERARCHY_VERSION, INSTRUMENTALITY, Hierarchy, load

GRID_CLASSES = (100, 80, 40, 20, 10)
GRID_IMAGES = (1200, 960, 720, 480, 240, 120, 60, 30)  # "from 1200 down to 30" (§4.4); intermediate points are ours
SOURCE_SIZES = (1000, 800, 500, 200, 100, 80)


@dataclass(frozen=True)
class ClassSet:
    classes: tuple[str, ...]
    cap: int | None = None  # max training images per class (None = all)


@dataclass(frozen=True)
class SubsetSpec:
    construction: str
    seed: int
    params: dict
    sets: dict[str, ClassSet]
    hierarchy: dict = field(default_factory=dict)
    vocabulary: dict | None = None  # {classes, sha256} of a store's own class list; None: ILSVRC2012's wnids

    def to_json(self) -> dict:
        body = {
            "construction": self.construction,
            "seed": self.seed,
            "params": self.params,
            "hierarchy": self.hierarchy,
            "sets": {k: {"classes": list(v.classes), "cap": v.cap, "count": len(v.classes)} for k, v in self.sets.items()},
        }
        if self.vocabulary is not None:  # (absent for ILSVRC2012's: the hashes of those specs are unchanged)
            body["vocabulary"] = self.vocabulary
        return {**body, "hash": _hash(body)}

    @property
    def wordnet(self) -> bool:
        """Whether the spec's classes are ILSVRC2012 wnids (WordNet distances apply)."""
        h = load()
        return all(c in h.label for s in self.sets.values() for c in s.classes)

    @property
    def hash(self) -> str:
        return self.to_json()["hash"]

    def set(self, name: str) -> ClassSet:
        if name not in self.sets:
            raise FastFTError(f"subset spec ({self.construction}, seed {self.seed}) has no set {name!r}; it has: {', '.join(self.sets)}")
        return self.sets[name]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_write(path, json.dumps(self.to_json(), indent=1) + "\n")  # concurrent sweeps read it while another writes
        return path


def _hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_spec(path: str | Path) -> SubsetSpec:
    """Read a spec file and check its hash (a hand-edited spec is refused: make a new one instead)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FastFTError(f"subset spec {path} does not exist; make one with `fastft subsets make`") from None
    except json.JSONDecodeError as e:
        raise FastFTError(f"subset spec {path} is not valid JSON: {e}") from None
    try:
        spec = SubsetSpec(d["construction"], int(d["seed"]), d["params"],
                          {k: ClassSet(tuple(v["classes"]), v.get("cap")) for k, v in d["sets"].items()}, d["hierarchy"],
                          d.get("vocabulary"))
    except (KeyError, TypeError) as e:
        raise FastFTError(f"subset spec {path} is malformed (missing {e})") from None
    if spec.hash != d.get("hash"):
        raise FastFTError(f"subset spec {path} does not match its hash (edited by hand?); recreate it with `fastft subsets make`")
    if spec.vocabulary is not None:  # a store's own classes: the view checks them against the store it reads
        return spec
    h = load()
    unknown = [w for s in spec.sets.values() for w in s.classes if w not in h.label]
    if unknown:
        raise FastFTError(f"subset spec {path} names classes that are not ILSVRC2012 classes: {unknown[:5]}")
    return spec


# ---------------------------------------------------------------- constructions
class Vocabulary:
    """A store's class list as the constructions that need no WordNet read a class universe: ``wnids`` (the classes
    in label order; named as :class:`~.taxonomy.Hierarchy`'s, which serves ILSVRC2012's) and ``label``."""

    def __init__(self, classes):
        self.wnids = tuple(classes)
        self.label = {c: i for i, c in enumerate(self.wnids)}

    @property
    def sha256(self) -> str:
        return hashlib.sha256("".join(f"{c}\n" for c in self.wnids).encode()).hexdigest()  # = classes.txt's


def _draw(rng: random.Random, pool: list[str], k: int, what: str) -> list[str]:
    if k > len(pool):
        raise FastFTError(f"cannot draw {k} classes from {what}: it has only {len(pool)}")
    return rng.sample(pool, k)


def _sorted(h: Hierarchy, ws) -> tuple[str, ...]:
    return tuple(sorted(ws, key=h.label.__getitem__))


def _near_far(h: Hierarchy, rng: random.Random, target: list[str], far: list[str], overlap: int) -> tuple[list[str], list[str]]:
    """near = every class in neither target nor far, plus ``overlap`` random classes of far (§4.3)."""
    used = set(target) | set(far)
    rest = [c for c in h.wnids if c not in used]
    return rest + _draw(rng, sorted(far), overlap, "the far set"), far


def c_random(h, seed, target=100, source=900, cap=None):
    """N random target classes + M random source classes from the rest (§4.1: 100 + 900), of any vocabulary;
    ``source: 0`` gives the target alone (N random classes), ``cap`` limits the target's training images per class."""
    rng = random.Random(f"fastft/random/{seed}")
    perm = rng.sample(list(h.wnids), len(h.wnids))
    if target + source > len(perm):
        what = "ILSVRC2012 classes" if isinstance(h, Hierarchy) else "classes of the store"
        raise FastFTError(f"target ({target}) + source ({source}) exceeds the {len(perm)} {what}")
    sets = {"target": ClassSet(_sorted(h, perm[:target]), cap)}
    if source:
        sets["source"] = ClassSet(_sorted(h, perm[target:target + source]))
    return sets


def c_source_size(h, seed, target=100, sizes=SOURCE_SIZES):
    """Fixed random target + sources of each size (§4.2). ``src1000`` is every class (target included); smaller
    sources are nested prefixes of one random order of the other classes, so a bigger source contains a smaller one."""
    rng = random.Random(f"fastft/random/{seed}")
    perm = rng.sample(list(h.wnids), len(h.wnids))
    tgt, others = perm[:target], perm[target:]
    sets = {"target": ClassSet(_sorted(h, tgt))}
    for n in sizes:
        if n == len(h.wnids):
            sets[f"src{n}"] = ClassSet(h.wnids)
        elif n > len(others):
            raise FastFTError(f"source size {n} exceeds the {len(others)} classes outside the target")
        else:
            sets[f"src{n}"] = ClassSet(_sorted(h, others[:n]))
    return sets


def c_dog(h, seed, target=100, far=500, overlap=100):
    """DOG = random classes of the dog branch; far_DOG = random artifact classes; near_DOG = the rest + some of far (§4.3)."""
    rng = random.Random(f"fastft/dog/{seed}")
    dog = _draw(rng, h.under(DOG), target, f"the dog branch ({DOG})")
    _, artifact = h.living_artifact()
    far_set = _draw(rng, artifact, far, "the artifact side")
    near_set, far_set = _near_far(h, rng, dog, far_set, overlap)
    return {"target": ClassSet(_sorted(h, dog)), "near": ClassSet(_sorted(h, near_set)), "far": ClassSet(_sorted(h, far_set))}


def _instru(h, seed, target, far, overlap):
    rng = random.Random(f"fastft/instru/{seed}")
    instru = _draw(rng, h.under(INSTRUMENTALITY), target, f"the instrumentality branch ({INSTRUMENTALITY})")
    living, artifact = h.living_artifact()
    instr_all = set(h.under(INSTRUMENTALITY))
    rest_art = [c for c in artifact if c not in instr_all]
    if far < len(living):
        raise FastFTError(f"far_INSTRU holds all {len(living)} living-thing classes; far={far} is too small")
    far_set = living + _draw(rng, rest_art, far - len(living), "artifact minus instrumentality")
    near_set, far_set = _near_far(h, rng, instru, far_set, overlap)
    return rng, instru, near_set, far_set


def c_instru(h, seed, target=100, far=500, overlap=100, cap=None):
    """INSTRU = random classes of instrumentality; far_INSTRU = every living-thing class + random classes of
    artifact-minus-instrumentality up to ``far``; near_INSTRU = the rest + ``overlap`` of far (§4.3). ``cap`` limits
    the target's training images per class (§4.5 uses 240)."""
    _, instru, near_set, far_set = _instru(h, seed, target, far, overlap)
    return {"target": ClassSet(_sorted(h, instru), cap), "near": ClassSet(_sorted(h, near_set)), "far": ClassSet(_sorted(h, far_set))}


def c_instru_grid(h, seed, target=100, far=500, overlap=100, classes=GRID_CLASSES, images=GRID_IMAGES):
    """§4.4/§4.6: INSTRU target subsets of K classes (nested: the K-class set is a prefix of one random order of INSTRU)
    × n training images per class; sets ``k{K}_n{n}``, plus ``near`` and ``far`` exactly as in ``instru``."""
    rng, instru, near_set, far_set = _instru(h, seed, target, far, overlap)
    order = rng.sample(instru, len(instru))
    sets = {"near": ClassSet(_sorted(h, near_set)), "far": ClassSet(_sorted(h, far_set))}
    for k in classes:
        if k > len(order):
            raise FastFTError(f"grid asks for {k} classes but INSTRU has {len(order)}")
        for n in images:
            sets[f"k{k}_n{n}"] = ClassSet(_sorted(h, order[:k]), int(n))
    return sets


def c_near_far(h, seed, branch=DOG, target=4, source=8, within=None, cap=None):
    """A small near/far study within any class universe ``within`` (e.g. the classes a partial store holds): target = random classes
    of ``branch``; near = the branch's other classes, topped up with random classes from the same side of the
    living/artifact partition; far = random classes from the other side; ``cap`` limits the target's training images
    per class. Used by the demo."""
    universe = set(within) if within else set(h.wnids)
    bad = sorted(universe - set(h.wnids))
    if bad:
        raise FastFTError(f"within lists classes the store does not have (ILSVRC2012 wnids, or a store's classes.txt): {bad[:5]}")
    rng = random.Random(f"fastft/near-far/{seed}")
    members = [c for c in h.under(branch) if c in universe]
    tgt = _draw(rng, members, target, f"branch {branch} ({h.name(h.check(branch))}) within the given classes")
    living, artifact = h.living_artifact()
    side, other = (living, artifact) if tgt[0] in set(living) else (artifact, living)
    rest_branch = [c for c in members if c not in set(tgt)]
    rest_side = [c for c in side if c in universe and c not in set(members)]
    near = rng.sample(rest_branch, min(source, len(rest_branch)))
    near += _draw(rng, rest_side, source - len(near), "the target's side of the partition (to fill near)")
    far = _draw(rng, [c for c in other if c in universe], source, "the other side of the partition (far)")
    return {"target": ClassSet(_sorted(h, tgt), cap), "near": ClassSet(_sorted(h, near)), "far": ClassSet(_sorted(h, far))}


def c_all(h, seed, within=None, cap=None):
    """Every class (or the classes of ``within``: an explicit class list, or a partial store's) as one ``target`` set,
    in label order; ``cap`` limits its training images per class."""
    dup = sorted({c for c in within or () if list(within).count(c) > 1})
    if dup:
        raise FastFTError(f"within lists classes more than once: {dup[:5]}")
    bad = sorted(set(within or ()) - set(h.wnids))
    if bad:
        what = "non-ILSVRC2012 wnids" if isinstance(h, Hierarchy) else "classes the store does not have"
        raise FastFTError(f"within lists {what}: {bad[:5]}")
    return {"target": ClassSet(_sorted(h, within) if within else tuple(h.wnids), cap)}


@dataclass(frozen=True)
class Construction:
    fn: Callable
    defaults: dict
    summary: str
    needs_wordnet: bool = True  # draws from the WordNet hierarchy: only where the store's classes are ILSVRC2012 wnids
    optional: dict = field(default_factory=dict)  # parameters recorded in a spec only when given (so that adding one
    #                                               keeps the hash of every spec made before it)


CONSTRUCTIONS: dict[str, Construction] = {
    "random": Construction(c_random, {"target": 100, "source": 900}, "N random target classes + M random source classes from the rest "
                           "(§4.1); source=0: the target alone", needs_wordnet=False, optional={"cap": None}),
    "source-size": Construction(c_source_size, {"target": 100, "sizes": list(SOURCE_SIZES)}, "fixed 100-class target, sources of 1000/800/500/200/100/80 classes (§4.2)"),
    "dog": Construction(c_dog, {"target": 100, "far": 500, "overlap": 100}, "DOG target with near_DOG / far_DOG sources (§4.3)"),
    "instru": Construction(c_instru, {"target": 100, "far": 500, "overlap": 100, "cap": None}, "INSTRU target with near_INSTRU / far_INSTRU sources (§4.3)"),
    "instru-240": Construction(c_instru, {"target": 100, "far": 500, "overlap": 100, "cap": 240}, "INSTRU at 240 training images per class, near / far sources (§4.5)"),
    "instru-grid": Construction(c_instru_grid, {"target": 100, "far": 500, "overlap": 100, "classes": list(GRID_CLASSES), "images": list(GRID_IMAGES)},
                                "INSTRU subsets: K in {100,80,40,20,10} classes x images/class 1200..30, near / far (§4.4, §4.6)"),
    "all": Construction(c_all, {"within": None}, "every class (or those of within=[...]: an explicit class list) as one target set",
                        needs_wordnet=False, optional={"cap": None}),
    "near-far": Construction(c_near_far, {"branch": DOG, "target": 4, "source": 8, "within": None, "cap": None},
                             "small near/far study on any class universe (e.g. a partial store's classes); the demo's"),
}


def _check_param(construction: str, k: str, v, default) -> None:
    if k == "within":
        ok, want = v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)), "a list of class names"
    elif isinstance(default, str):
        ok, want = isinstance(v, str), "a wnid"
    elif isinstance(default, list):
        ok, want = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v), "a list of integers"
    else:
        ok, want = (v is None or isinstance(v, int)) and not isinstance(v, bool), "an integer"
    if not ok:
        raise FastFTError(f"parameter {k}={v!r} of {construction!r} must be {want}")


def make(construction: str, seed: int, vocabulary=None, **params) -> SubsetSpec:
    """Build a spec. Unknown constructions / parameters and impossible sizes raise :class:`FastFTError`.

    ``vocabulary``: the classes of the store the spec is for, in label order (``Store.vocabulary``); None or
    ILSVRC2012's 1000 wnids draw as before stores had vocabularies. A construction that needs WordNet on a store whose
    classes are not all wnids is an error naming the store's classes and the constructions that apply."""
    if construction not in CONSTRUCTIONS:
        raise FastFTError(f"unknown construction {construction!r}; `fastft subsets list` names them: {', '.join(CONSTRUCTIONS)}")
    c = CONSTRUCTIONS[construction]
    takes = {**c.defaults, **c.optional}
    unknown = set(params) - set(takes)
    if unknown:
        raise FastFTError(f"construction {construction!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(takes)}")
    full = {**c.defaults, **params}
    for k, v in full.items():
        _check_param(construction, k, v, takes[k])
    h = load()
    universe, recorded = h, None
    if vocabulary is not None and tuple(vocabulary) != tuple(h.wnids):
        wnids = all(w in h.label for w in vocabulary)
        if c.needs_wordnet and not wnids:
            generic = ", ".join(k for k, x in CONSTRUCTIONS.items() if not x.needs_wordnet)
            odd = [w for w in vocabulary if w not in h.label]
            raise FastFTError(f"construction {construction!r} draws from the WordNet hierarchy, and the store's classes are "
                              f"its own names, not ILSVRC2012 wnids ({len(vocabulary)} classes in its classes.txt, e.g. "
                              f"{odd[:3]}): use a construction for any store ({generic}; an explicit class list is all with within=[...])")
        if not c.needs_wordnet:  # drawn from the store's classes (a wnid store's WordNet draws stay ILSVRC2012's)
            universe = Vocabulary(vocabulary)
            recorded = {"classes": len(universe.wnids), "sha256": universe.sha256}
    sets = c.fn(universe, seed, **{**c.optional, **full})
    hierarchy = {"version": HIERARCHY_VERSION, "sha256": h.sha256, "rule": "primary", "partition": "natural-vs-made"}
    return SubsetSpec(construction, int(seed), {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}, sets,
                      hierarchy if recorded is None else {}, recorded)


def grid_set(name) -> tuple[int, int] | None:
    """(classes, images per class) of an instru-grid set name ``k<K>_n<N>`` (§4.4, §4.6), else None."""
    m = re.fullmatch(r"k(\d+)_n(\d+)", str(name))
    return (int(m[1]), int(m[2])) if m else None


def is_target_set(name) -> bool:
    """Target-like sets of a spec: ``target`` and the §4.4 grid's ``k<K>_n<N>``; the others are sources."""
    return name == "target" or grid_set(name) is not None


def distances(spec: SubsetSpec) -> list[dict]:
    """WordNet distance of every source-like set to every target-like set of a spec (see ``Hierarchy.distance``)."""
    if not spec.wordnet:
        raise FastFTError(f"spec ({spec.construction}, seed {spec.seed}) holds classes that are not ILSVRC2012 wnids: "
                          "WordNet distances apply only to wnids")
    h = load()
    targets = [k for k in spec.sets if is_target_set(k)]
    sources = [k for k in spec.sets if k not in targets]
    if not targets:
        targets, sources = sources[:1], sources[1:]
    rows = []
    for t in targets:
        for s in sources:
            d = h.distance(list(spec.sets[t].classes), list(spec.sets[s].classes))
            rows.append({"target": t, "source": s, **{k: round(v, 4) for k, v in d.items()}})
    return rows


# ---------------------------------------------------------------- Yosinski et al. 2014 (plans/yosinski-2014.yaml)
def _universe(h: Hierarchy, within) -> list[str]:
    """The classes a construction draws from: every ILSVRC2012 class, or those of ``within`` (a partial store's), in
    label order."""
    bad = sorted(set(within or ()) - set(h.wnids))
    if bad:
        raise FastFTError(f"within lists classes the store does not have (ILSVRC2012 wnids, or a store's classes.txt): {bad[:5]}")
    return list(_sorted(h, set(within))) if within else list(h.wnids)


def c_halves(h, seed, within=None):
    """Random halves ``A`` / ``B`` of the classes (Yosinski et al. 2014, §3: 500 / 500 of ILSVRC2012; of ``within``'s
    classes where given, ``A`` the smaller half when their number is odd), seeded; disjoint, together every class."""
    pool = _universe(h, within)
    if len(pool) < 2:
        raise FastFTError(f"halves needs at least 2 classes to split; it was given {len(pool)}")
    order = random.Random(f"fastft/halves/{seed}").sample(pool, len(pool))
    k = len(pool) // 2
    return {"A": ClassSet(_sorted(h, order[:k])), "B": ClassSet(_sorted(h, order[k:]))}


def c_natural_made(h, seed, within=None):
    """Natural vs man-made classes (Yosinski et al. 2014, §4.2 "dissimilar datasets"): ``natural`` = the classes on
    the living-thing side of the shipped hierarchy's natural vs man-made rule (a path through living thing, natural
    object, geological formation or produce: :data:`fastft.data.taxonomy.NATURAL_ROOTS`), ``made`` = the rest — 449 /
    551 of ILSVRC2012, the paper's counts (its released lists agree on 998 of the 1000 classes: mashed potato is
    natural here, man-made there; hay the other way round). Of ``within``'s classes where given. The split depends
    on no seed."""
    pool = _universe(h, within)
    living = set(h.living_artifact()[0])
    sets = {"natural": [c for c in pool if c in living], "made": [c for c in pool if c not in living]}
    empty = [k for k, v in sets.items() if not v]
    if empty:
        raise FastFTError(f"natural-made: the given classes have no {empty[0]} class (of {len(pool)}); the split needs both")
    return {k: ClassSet(tuple(v)) for k, v in sets.items()}


def c_yosinski(h, seed, within=None):
    """Both splits of Yosinski et al. 2014 in one spec: ``A`` / ``B`` exactly as ``halves`` for the same seed, and
    ``natural`` / ``made`` as ``natural-made``."""
    return {**c_halves(h, seed, within), **c_natural_made(h, seed, within)}


CONSTRUCTIONS["halves"] = Construction(c_halves, {"within": None}, "random halves A / B of the classes, 500 / 500 (Yosinski et al. 2014)",
                                       needs_wordnet=False)  # halves of any store's classes
CONSTRUCTIONS["natural-made"] = Construction(c_natural_made, {"within": None},
                                             "natural (449) vs man-made (551) classes (Yosinski et al. 2014, dissimilar datasets)")
CONSTRUCTIONS["yosinski-2014"] = Construction(c_yosinski, {"within": None},
                                              "halves A / B and natural / made in one spec (plans/yosinski-2014.yaml)")
