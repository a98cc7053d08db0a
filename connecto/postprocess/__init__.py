"""Neuron segmentation: blockwise prediction, fragments, the MongoDB segment graph,
agglomeration, extraction and evaluation (`connecto segment`)."""
