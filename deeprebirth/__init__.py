"""DeepRebirth: accelerate Caffe models by slimming non-tensor layers into tensor layers."""
__version__ = "0.1.0"
