"""2D neuron segmentation from sparse section labels (task `segmentation-2d`).

A 2D U-Net sees one section with its `context_sections` neighbours above and below as
input channels and predicts the centre section's in-plane affinities (short and long
range) and 2D local shape descriptors. Training samples only sections that carry labels
(0 = unlabelled when `sparse_labels`); prediction runs every section and stacks the
outputs into 3D zarr datasets (`predict.predict_sections`). After Thiyagarajan et al.
(2024), "Dense 3D segmentation from sparse 2D labels", bioRxiv 2024.06.14.599135.
"""
