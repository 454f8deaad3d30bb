"""Plain-torch algorithms that know no plugin: masks at every granularity, density allocation, schedules,
gradient scores, prune-and-regrow, the weight sparsifier, masks in checkpoints and mask files (``maskio``), IMP's
global pruning, FLOPs and cost models, compact export, ResNet helpers, the intermediate-loss pieces.

Imports only ``core``; the families compose these pieces into plugin policies.
"""
