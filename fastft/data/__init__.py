"""The data side of fastft: ILSVRC2012's classes, the study's class subsets, and the shard store they are read from.

One module per thing the flow owns (none imports the loaders, models or trainer):

* :mod:`~fastft.data.taxonomy` — the WordNet hierarchy of the 1000 classes (shipped in ``fastft/_data``), branch
  rules, distances;
* :mod:`~fastft.data.subsets` — the study's constructions → hashed subset specs;
* :mod:`~fastft.data.synth` — a synthetic ImageNet in the ILSVRC2012 layouts (demo, tests);
* :mod:`~fastft.data.sources` — the input layouts ``fastft shard`` reads (ILSVRC2012 tree or archives, Kaggle,
  image folders), one module each, in one registry;
* :mod:`~fastft.data.shard` — ``fastft shard``: a source's inputs → a store;
* :mod:`~fastft.data.spool` — how the shard writer's worker processes hand it their results;
* :mod:`~fastft.data.store` — the store format: reading, verification, locks;
* :mod:`~fastft.data.views` — views: subsets of a store without copying data (what the loaders read);
* :mod:`~fastft.data.export` — ``fastft export``: a view as new WebDataset shards, or the store shards it reads.
"""
