"""Which kind a Caffe layer type is: tensor or not (the paper's split), data, element-wise,
parameter-free activation, loss. Plain sets of type names that the DAG (``dag``), the shape rules
(``shapes``) and the rules above all read; this module imports nothing of the package."""

# Depthwise convolution types of the MobileNet forks (yonghenglh6/DepthwiseConvolution,
# farmingyard/caffe-mobilenet) read convolution_param and are convolutions in every respect here.
DEPTHWISE_TYPES = frozenset({"DepthwiseConvolution", "ConvolutionDepthwise"})
TENSOR_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct", "Embed"}) | DEPTHWISE_TYPES
DATA_TYPES = frozenset({"Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data",
                        "WindowData", "AnnotatedData"})
# Element-wise layers that keep the shape and are commonly run in place.
ELEMENTWISE = frozenset({"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "BNLL",
                         "Exp", "Log", "Threshold", "Clip", "Swish", "Dropout", "BatchNorm",
                         "Scale", "Bias", "LRN", "MVN", "Softmax"})
# Element-wise layers without parameters: they work on any number of channels, and applying one to
# a concatenation equals applying it to each part.
ACTIVATIONS = frozenset({"ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "BNLL", "Exp", "Log",
                         "Threshold", "Clip", "Swish", "Dropout"})
LOSS_TYPES = frozenset({"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss",
                        "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss"})


def kind_of(layer_type: str) -> str:
    """'tensor' for layers holding >= 2-D learned weights (the paper's definition), else 'non-tensor'."""
    return "tensor" if layer_type in TENSOR_TYPES else "non-tensor"
