// The helpers of caffe/util/hdf5.hpp for the on-device build without HDF5 (util/hdf5.cpp is left
// out of it). They are reached only after an HDF5 file was opened, which the stub header refuses.
#include <string>

#include "caffe/util/hdf5.hpp"

namespace caffe {

namespace {
[[noreturn]] void NoHdf5() { LOG(FATAL) << "this build of rebirth-time has no HDF5"; throw 0; }
}  // namespace

template <typename Dtype>
void hdf5_load_nd_dataset(hid_t, const char*, int, int, Blob<Dtype>*) { NoHdf5(); }
template <typename Dtype>
void hdf5_save_nd_dataset(const hid_t, const string&, const Blob<Dtype>&, bool) { NoHdf5(); }
template void hdf5_load_nd_dataset<float>(hid_t, const char*, int, int, Blob<float>*);
template void hdf5_load_nd_dataset<double>(hid_t, const char*, int, int, Blob<double>*);
template void hdf5_save_nd_dataset<float>(const hid_t, const string&, const Blob<float>&, bool);
template void hdf5_save_nd_dataset<double>(const hid_t, const string&, const Blob<double>&, bool);

int hdf5_load_int(hid_t, const string&) { NoHdf5(); }
void hdf5_save_int(hid_t, const string&, int) { NoHdf5(); }
string hdf5_load_string(hid_t, const string&) { NoHdf5(); }
void hdf5_save_string(hid_t, const string&, const string&) { NoHdf5(); }
int hdf5_get_num_links(hid_t) { NoHdf5(); }
string hdf5_get_name_by_idx(hid_t, int) { NoHdf5(); }

}  // namespace caffe
