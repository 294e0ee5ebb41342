"""``fastft sweep``: a plan × seeds → a DAG of training runs (pretrain → fine-tunes), run locally or on SLURM.

A plan (YAML) names a subset construction, the seeds, shared training settings and run templates::

    name: near-far-instru
    construction: instru                # fastft subsets list
    params: {}                          # construction parameters ("store" as a value = the store's class list)
    seeds: [0, 1, 2, 3, 4]
    defaults: {epochs: 100}             # TrainConfig keys shared by every run
    runs:
      - {name: near, set: near}                                  # pretrain (scratch)
      - {name: ft-near, set: target, mode: finetune, source: near,        # paper: the numbers it is reported next to
         paper: {top1: 67.12, svm: 66.70, svm_before: 60.06, probes: {fc7: 59.08, fc8: 60.86}, ref: "Table 3"}}
      - {name: freeze, set: target, mode: finetune, source: near, grid: {freeze: [1, 2, 3]}}
    claims:                             # the paper's findings, checked by fastft report (see CLAIM_KINDS)
      - {a: ft-near, b: ft-far, text: "the near source fine-tunes better", ref: "§4.3"}
      - {trend: ft-near, vs: scratch, key: images, direction: down, text: "the gain shrinks with more images"}
    report:                             # fastft report: a − b paired by seed; the order models are named in (Fig. 9)
      pairs: [[ft-near, scratch], [ft-near, ft-far]]  # none without this key
      order: [ft-near, ft-far, near, far, scratch]

Each (template × grid point × seed) is one run; ``source: <template>`` makes it depend on that template's run of
the same seed. A run's id is the trainer's (hash of data, model, protocol, seed, source id), computed before anything
trains, so re-running a sweep skips finished runs, resumes interrupted ones (the trainer resumes from its newest
complete checkpoint) and retries failed ones up to ``--retries`` times. Two sweeps on the same plan never train the
same run twice: a run is claimed by creating ``<out>/claims/<id>`` exclusively. A claim is a lease: the sweep that
holds it refreshes its mtime every ``CLAIM_HEARTBEAT_S`` while the run trains, and a claim whose sweep is gone is
taken over (on the same host: its pid is dead; from another host sharing the runs directory: not refreshed for
``CLAIM_STALE_S``, by the file system's clock, so the hosts' clocks need not agree). The plans of one sweep run as one
DAG (``merge``), locally and on SLURM (:mod:`fastft.slurm`: job arrays, a run shared by plans one task). Every run
directory gets a ``sweep.json`` listing each (plan, template, grid values, seed, paper reference, WordNet distance,
the plan's claims and report settings) it serves — a run shared by two plans (the INSTRU near/far models) is trained
once and reported in both — all the report needs, so runs gathered from many machines report the same way.

The package, in the order of the flow: :mod:`.plan` (the YAML, validated; expansion; merging plans), :mod:`.bind`
(subsets, views, run ids, cost), :mod:`.leases`, :mod:`.local` (the local backend), :mod:`.slurm` (job arrays).
"""
from __future__ import annotations

from .leases import CLAIM_HEARTBEAT_S, CLAIM_STALE_S
from .local import Terminated, gpu_ids, record_membership, run_local, slots_for, state
from .plan import PAPER_KEYS, PLAN_KEYS, RUN_KEYS, RunSpec, expand, load_plan, merge
from .bind import ILSVRC_TRAIN_PER_CLASS, POOL_AFTER_S, cost, prepare

__all__ = ["CLAIM_HEARTBEAT_S", "CLAIM_STALE_S", "ILSVRC_TRAIN_PER_CLASS", "PAPER_KEYS", "PLAN_KEYS", "POOL_AFTER_S",
           "RUN_KEYS", "RunSpec", "Terminated", "cost", "expand", "gpu_ids", "load_plan", "merge", "prepare",
           "record_membership", "run_local", "slots_for", "state"]
