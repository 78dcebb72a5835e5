"""The base, graph side: the layer DAG (``dag``), Caffe's shape rules (``shapes``), the cost model
(``costs``), the kinds of layer types (``kinds``), convolution/pooling geometry in Caffe's
conventions (``geometry``), a model in memory (``model``) and Caffe's fillers (``fillers``)."""
from deeprebirth.graph.dag import Graph, Node  # noqa: F401
from deeprebirth.graph.kinds import ACTIVATIONS, DATA_TYPES, DEPTHWISE_TYPES, ELEMENTWISE, kind_of  # noqa: F401
