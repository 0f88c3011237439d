//! vxnet benchmark support.
