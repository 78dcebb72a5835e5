"""The base, graph side: the layer DAG with Caffe's shape rules and costs (``dag``) and
convolution/pooling geometry in Caffe's conventions (``geometry``)."""
from deeprebirth.graph.dag import (ACTIVATIONS, DATA_TYPES, DEPTHWISE_TYPES, ELEMENTWISE, Graph, Node,  # noqa: F401
                                   kind_of)
