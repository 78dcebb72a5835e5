/* Stand-in for HDF5's high-level header in the on-device build (see hdf5.h beside it). */
#ifndef REBIRTH_HDF5_HL_STUB_H
#define REBIRTH_HDF5_HL_STUB_H
#include "hdf5.h"
#endif
