"""spdk-rpc plugin for the replication bdev module.

    PYTHONPATH=tests/rpc_plugin spdk-rpc -s SOCK --plugin rpc_replication bdev_replication_get_status
"""
import json


def _print(result):
    print(json.dumps(result, indent=2))


def _opt(params, **kw):
    for k, v in kw.items():
        if v is not None:
            params[k] = v
    return params


def spdk_rpc_plugin_initialize(subparsers):
    def create(args):
        p = _opt({"name": args.name, "mode": args.mode},
                 local_bdev=args.local_bdev, remote_bdev=args.remote_bdev,
                 remote_timeout_ms=args.remote_timeout_ms, base_bdev=args.base_bdev,
                 hidden_bdev=args.hidden_bdev, active_bdev=args.active_bdev,
                 ingress_name=args.ingress_name, cow_granularity=args.cow_granularity)
        _print(args.client.call("bdev_replication_create", p))

    p = subparsers.add_parser("bdev_replication_create", help="Create a replication bdev")
    p.add_argument("-b", "--name", required=True)
    p.add_argument("-m", "--mode", required=True, choices=["primary", "secondary"])
    p.add_argument("--local-bdev")
    p.add_argument("--remote-bdev")
    p.add_argument("--remote-timeout-ms", type=int)
    p.add_argument("--base-bdev")
    p.add_argument("--hidden-bdev")
    p.add_argument("--active-bdev")
    p.add_argument("--ingress-name")
    p.add_argument("--cow-granularity", type=int)
    p.set_defaults(func=create)

    def delete(args):
        params = {"name": args.name}
        if args.force:
            params["force"] = True
        _print(args.client.call("bdev_replication_delete", params))

    p = subparsers.add_parser("bdev_replication_delete", help="Delete a replication bdev")
    p.add_argument("-b", "--name", required=True)
    p.add_argument("-f", "--force", action="store_true",
                   help="delete even in failover_failed (drops unmerged SVM data)")
    p.set_defaults(func=delete)

    def start(args):
        _print(args.client.call("bdev_replication_start", _opt({}, name=args.name, mode=args.mode)))

    p = subparsers.add_parser("bdev_replication_start", help="Start replication")
    p.add_argument("-b", "--name")
    p.add_argument("-m", "--mode", choices=["primary", "secondary"])
    p.set_defaults(func=start)

    def checkpoint(args):
        _print(args.client.call("bdev_replication_checkpoint", _opt({}, name=args.name)))

    p = subparsers.add_parser("bdev_replication_checkpoint", help="Checkpoint")
    p.add_argument("-b", "--name")
    p.set_defaults(func=checkpoint)

    def stop(args):
        _print(args.client.call("bdev_replication_stop",
                                _opt({"failover": args.failover}, name=args.name)))

    p = subparsers.add_parser("bdev_replication_stop", help="Stop replication")
    p.add_argument("-b", "--name")
    p.add_argument("-f", "--failover", action="store_true")
    p.set_defaults(func=stop)

    for method, help_text in (("bdev_replication_get_error", "Sticky errors"),
                              ("bdev_replication_get_status", "Status")):
        def show(args, method=method):
            _print(args.client.call(method, _opt({}, name=args.name)))

        p = subparsers.add_parser(method, help=help_text)
        p.add_argument("-b", "--name")
        p.set_defaults(func=show)

    # The protection lifecycle (docs/protection.md).
    def resync(args):
        _print(args.client.call("bdev_replication_resync",
                                {"name": args.name, "full": args.full}))

    p = subparsers.add_parser("bdev_replication_resync",
                              help="Re-arm a broken link and copy the dirty regions")
    p.add_argument("-b", "--name", required=True)
    p.add_argument("--full", action="store_true", help="copy every region")
    p.set_defaults(func=resync)

    def name_only(args):
        _print(args.client.call(args.method, {"name": args.name}))

    for method, help_text in (("bdev_replication_verify", "Compare both legs online"),
                              ("bdev_replication_get_dirty_map",
                               "A primary's dirty regions as [offset, length] extents")):
        p = subparsers.add_parser(method, help=help_text)
        p.add_argument("-b", "--name", required=True)
        p.set_defaults(func=name_only, method=method)
