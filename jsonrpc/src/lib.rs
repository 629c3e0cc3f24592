//! A JSON-RPC 2.0 server speaking SPDK's wire format (skeleton; being written).
