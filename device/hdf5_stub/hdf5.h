/* Stand-in for HDF5's header in the on-device build of rebirth-time, which has no HDF5.
 * Caffe's net.cpp includes HDF5 unconditionally (for .h5 weight files); these declarations let it
 * compile, and opening or creating an HDF5 file stops the program with a clear message.
 * Only what net.cpp uses is declared. */
#ifndef REBIRTH_HDF5_STUB_H
#define REBIRTH_HDF5_STUB_H

#include <stdio.h>
#include <stdlib.h>

typedef long long hid_t;
typedef int herr_t;
typedef int htri_t;

#define H5P_DEFAULT 0
#define H5F_ACC_RDONLY 0u
#define H5F_ACC_TRUNC 2u

static inline hid_t rebirth_no_hdf5(const char* name) {
  fprintf(stderr, "rebirth-time: error: %s: this build has no HDF5; give weights as a .caffemodel\n", name);
  exit(2);
  return -1;
}
static inline hid_t H5Fopen(const char* name, unsigned flags, hid_t plist) {
  (void)flags; (void)plist; return rebirth_no_hdf5(name);
}
static inline hid_t H5Fcreate(const char* name, unsigned flags, hid_t a, hid_t b) {
  (void)flags; (void)a; (void)b; return rebirth_no_hdf5(name);
}
static inline herr_t H5Fclose(hid_t id) { (void)id; return -1; }
static inline hid_t H5Gopen2(hid_t loc, const char* name, hid_t plist) { (void)loc; (void)plist; return rebirth_no_hdf5(name); }
static inline hid_t H5Gcreate2(hid_t loc, const char* name, hid_t a, hid_t b, hid_t c) {
  (void)loc; (void)a; (void)b; (void)c; return rebirth_no_hdf5(name);
}
static inline herr_t H5Gclose(hid_t id) { (void)id; return -1; }
static inline htri_t H5Lexists(hid_t loc, const char* name, hid_t plist) { (void)loc; (void)name; (void)plist; return 0; }

#endif
