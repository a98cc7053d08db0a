"""Barcode expression (task `barcode-expression`), PRISM's per-channel foreground model.

The channel-agnostic U-Net of `barcode-enhancement` predicts, per channel, whether a
voxel lies in a neuron that expresses the channel; a focal loss counts inside the border
mask. `evaluate.barcode_calls` turns a prediction into one barcode per neuron (the mean
probability per channel, thresholded) and scores it against the true barcodes.
"""
