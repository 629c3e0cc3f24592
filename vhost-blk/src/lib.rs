//! A vhost-user-blk device backend (skeleton; being written).
