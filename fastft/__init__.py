"""fastft: pretrain → fine-tune studies on ImageNet subsets chosen through WordNet, at the speed of the GPU.

The flow, one module each: taxonomy → subsets → store (shards, views) → pipelines → model → trainer → sweep → report
(+ analysis). Data modules never import the trainer; the trainer never imports DALI (it receives a loader).
"""
__version__ = "0.1.0"
