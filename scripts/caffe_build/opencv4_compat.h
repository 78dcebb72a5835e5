// deeprebirth: force-included when building Caffe against OpenCV 4, whose C++ headers no
// longer define the CV_* constants of the C API that this Caffe's sources still use.
#ifndef REBIRTH_OPENCV4_COMPAT_H_
#define REBIRTH_OPENCV4_COMPAT_H_
#ifdef __cplusplus
#include <opencv2/core/core.hpp>
#include <opencv2/imgproc/imgproc.hpp>
#include <opencv2/imgproc/types_c.h>
#include <opencv2/imgcodecs/legacy/constants_c.h>
#include <opencv2/videoio/legacy/constants_c.h>
#ifndef CV_FILLED
#define CV_FILLED -1
#endif
#endif
#endif
