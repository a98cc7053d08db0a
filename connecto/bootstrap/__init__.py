"""Bootstrapping dense 3D segmentation from sparse labels (Thiyagarajan et al. 2024):
pseudo ground truth from a round's segmentation, and the rounds' lineage."""
