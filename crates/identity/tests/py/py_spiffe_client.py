"""py-spiffe against Warden's Workload API; driven by tests/py_spiffe.rs.

Prints one JSON object per line. After `ready_for_rotation` it waits for a line on stdin,
then reports what its X509Source saw.
"""
import json
import sys
import threading

import grpc

# Python gRPC sends the socket path as the HTTP/2 :authority, which the h2 crate under tonic
# rejects; py-spiffe builds its channel with grpc.insecure_channel, so set the authority there.
_insecure_channel = grpc.insecure_channel


def _channel(target, options=None, compression=None):
    opts = list(options or []) + [("grpc.default_authority", "localhost")]
    return _insecure_channel(target, options=opts, compression=compression)


grpc.insecure_channel = _channel

from spiffe import JwtSvid, TrustDomain, WorkloadApiClient, X509Source  # noqa: E402


def say(**kw):
    print(json.dumps(kw), flush=True)


def main():
    socket = "unix:" + sys.argv[1]
    td = TrustDomain("example.org")
    client = WorkloadApiClient(socket_path=socket, default_timeout=10)

    svid = client.fetch_x509_svid()
    bundles = client.fetch_x509_bundles()
    say(step="x509", spiffe_id=str(svid.spiffe_id),
        authorities=len(bundles.get_bundle_for_trust_domain(td).x509_authorities))

    jwt = client.fetch_jwt_svid(audience={"gateway"})
    jwt_bundles = client.fetch_jwt_bundles()
    local = JwtSvid.parse_and_validate(jwt.token, jwt_bundles.get_bundle_for_trust_domain(td), {"gateway"})
    remote = client.validate_jwt_svid(jwt.token, "gateway")
    try:
        JwtSvid.parse_and_validate(jwt.token, jwt_bundles.get_bundle_for_trust_domain(td), {"other"})
        wrong_audience = "accepted"
    except Exception as e:  # the library's own refusal
        wrong_audience = type(e).__name__
    tampered = jwt.token[:-2] + ("AA" if not jwt.token.endswith("AA") else "BB")
    try:
        client.validate_jwt_svid(tampered, "gateway")
        tampered_result = "accepted"
    except Exception as e:
        tampered_result = type(e).__name__
    say(step="jwt", spiffe_id=str(local.spiffe_id), remote=str(remote.spiffe_id),
        wrong_audience=wrong_audience, tampered=tampered_result)

    source = X509Source(socket_path=socket, timeout_in_seconds=10)
    before = source.svid.leaf.serial_number
    changed = threading.Event()
    source.subscribe_for_updates(changed.set)
    say(step="ready_for_rotation")
    sys.stdin.readline()
    deadline_ok = False
    for _ in range(100):
        if changed.wait(0.1) and source.svid.leaf.serial_number != before:
            deadline_ok = True
            break
        changed.clear()
    after = source.svid
    say(step="rotation", changed=deadline_ok,
        authorities=len(source.get_bundle_for_trust_domain(td).x509_authorities),
        spiffe_id=str(after.spiffe_id))
    source.close()
    client.close()


if __name__ == "__main__":
    main()
