"""Synapse detection from pre/post marker channels (task `synapse-detection`).

A 3D U-Net reads the two synapse marker channels (synapsin-like, PSD-95-like) and predicts
a synapse mask and its contour, trained with a class-balanced weighted BCE on targets
rendered from ground-truth synapse positions (PRISM's synapse model, e11bio). Prediction
writes probabilities to zarr; detections are the mask's connected components, stored in
MongoDB in the synapse schema, assigned to neuron pairs and scored (`evaluate`).
"""
