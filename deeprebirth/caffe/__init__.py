"""The base, Caffe side: the schema (``proto``), reading and writing nets and weights (``netio``),
legacy nets upgraded (``upgrade``), the layers a phase keeps (``phase``), the built-in models
(``builtin``) and our output folders read back (``folders``). Everything above (graph, transforms,
learning, runtime, cli) stands on this; it imports none of them."""
