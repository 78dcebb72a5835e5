"""Transforms: nets and weights in, nets and weights out, no engine needed. The rewrite rules
(``rules/``, one file each), the runner that applies them (``runner``), and what is built on them:
``slim``, ``fold`` (BatchNorm folding), ``tucker``, the re-learning plan (``relearn_plan``) and the
training files a slim net needs (``trainfiles``). Imports only the base (caffe, graph)."""
