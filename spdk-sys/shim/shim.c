#include "shim.h"
#include <spdk/event.h>

void *
spdk_sys_io_channel_get_ctx(struct spdk_io_channel *ch)
{
	return spdk_io_channel_get_ctx(ch);
}

struct spdk_bdev_io *
spdk_sys_bdev_io_from_ctx(void *ctx)
{
	return spdk_bdev_io_from_ctx(ctx);
}

size_t
spdk_sys_app_opts_size(void)
{
	return sizeof(struct spdk_app_opts);
}
