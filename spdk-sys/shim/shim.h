/* Out-of-line wrappers for SPDK's static inline functions, which bindgen cannot link. */
#ifndef SPDK_SYS_SHIM_H
#define SPDK_SYS_SHIM_H

#include <spdk/thread.h>

void *spdk_sys_io_channel_get_ctx(struct spdk_io_channel *ch);

#endif
