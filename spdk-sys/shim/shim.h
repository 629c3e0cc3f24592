/* Out-of-line wrappers for SPDK's static inline functions, which bindgen cannot link. */
#ifndef SPDK_SYS_SHIM_H
#define SPDK_SYS_SHIM_H

#include <spdk/bdev_module.h>
#include <spdk/thread.h>

void *spdk_sys_io_channel_get_ctx(struct spdk_io_channel *ch);
struct spdk_bdev_io *spdk_sys_bdev_io_from_ctx(void *ctx);
size_t spdk_sys_app_opts_size(void);

#endif
