"""Neural networks: synister's VGG for synapse classification."""

from connecto.models.vgg3d import Vgg3D, build_vgg3d, load_model_from_checkpoint

__all__ = ["Vgg3D", "build_vgg3d", "load_model_from_checkpoint"]
