"""Learning: weights from images. Image sources and preprocessing (``sources``, ``preprocess``),
batches fed to a Caffe net (``batches``), the least-squares solver (``lstsq``), layer-wise
re-learning (``relearn``), fine-tuning and distillation (``finetune``) and evaluation
(``evaluate``). Reads what transforms wrote; runs Caffe through ``runtime``."""
