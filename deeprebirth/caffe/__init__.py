"""The base, Caffe side: the schema (``proto``), reading and writing nets and weights (``netio``),
a model in memory and the built-in models (``model``, ``builtin``), output folders (``folders``).
Everything above (graph, transforms, learning, runtime, cli) stands on this; it imports none of them
but the graph, which ``model`` uses to check weights against shapes."""
