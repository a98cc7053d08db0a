"""Barcode signal enhancement (task `barcode-enhancement`), PRISM's first model.

One 3D U-Net sees each channel of a barcoded light-microscopy volume alone (channels
folded into the batch) and predicts, per voxel, the mean barcode signal of the neuron the
voxel lies in: the residual to add to raw (or the average itself). Trained with a masked
MSE where the truth is known (`unlabelled` = 1) and the channel augmentations of
`connecto.tasks.channel_augment`; predicted tile by tile into a uint8 `enhanced` dataset.
After E11 Bio's PRISM (bioRxiv 2025.09.26.678648).
"""
