"""Raw JSON-RPC call through SPDK's own Python client: rpc_call.py SOCK METHOD [PARAMS_JSON].
Prints {"result": ...} or {"error": {"code": .., "message": ..}} as one JSON line."""
import json
import sys

from spdk.rpc.client import JSONRPCClient, JSONRPCException

sock, method = sys.argv[1], sys.argv[2]
params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
client = JSONRPCClient(sock, timeout=120.0)
try:
    print(json.dumps({"result": client.call(method, params)}))
except JSONRPCException as e:
    text = e.message if hasattr(e, "message") else str(e)
    start = text.rfind("response:")
    err = json.loads(text[start + len("response:"):]) if start >= 0 else {"code": 0, "message": text}
    print(json.dumps({"error": err}))
