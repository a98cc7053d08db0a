"""Uniform pixel embeddings (task `pixel-embedding`), PRISM's fourth model.

A 3D U-Net with a per-voxel MLP head (1x1x1 convolutions) maps the barcoded channels
(raw or enhanced, all C at once) to a D-dimensional embedding per voxel, trained with a
contrastive objective on neuron labels: voxels pulled towards their neuron's mean
embedding, neuron means spread uniformly over the unit sphere, the raw output kept near
unit norm; background and unlabelled voxels carry no loss. Predicted tile by tile into a
float32 unit-norm `embedding` dataset that `connecto segment` reads as fragment features
(`connecto.tasks.pixel_embedding.segment`). After E11 Bio's PRISM
(bioRxiv 2025.09.26.678648).
"""
