"""Baseline for `ci/bench`: the issuer's work in Python, as a capable team would write it.

Verifies each request's ES256 self-signature with `cryptography`, applies a lifetime, signs the
pass through python-pkcs11 on one reused, logged-in session (CKM_ECDSA over SHA-256), appends a
JSON audit line and fsyncs every 256 passes (the same group commit as hwpass), then prints the
passes. Usage: python3 python_issuer.py MODULE TOKEN LABEL REQUESTS AUDIT  (PIN in HWPASS_PIN)
"""
import base64, hashlib, json, os, sys, time

import pkcs11
from pkcs11 import Mechanism, ObjectClass
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def main():
    module, token_label, label, requests_path, audit_path = sys.argv[1:6]
    requests = [l.strip() for l in open(requests_path) if l.strip()]
    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=token_label)
    out = []
    printed = 0
    start = time.perf_counter()
    with token.open(user_pin=os.environ["HWPASS_PIN"]) as session, open(audit_path, "a") as audit:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        header = b64e(json.dumps({"alg": "ES256", "typ": "hwpass+jwt", "kid": "bench"}).encode())
        for i, req in enumerate(requests, 1):
            h, p, s = req.split(".")
            hdr = json.loads(b64d(h))
            claims = json.loads(b64d(p))
            jwk = hdr["jwk"]
            x = int.from_bytes(b64d(jwk["x"]), "big")
            y = int.from_bytes(b64d(jwk["y"]), "big")
            pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
            raw = b64d(s)
            der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            pub.verify(der, f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
            now = int(time.time())
            pass_claims = {"iss": "bench", "sub": claims["sub"], "aud": "bench", "iat": now, "nbf": now,
                           "exp": now + 86400, "jti": b64e(os.urandom(16)),
                           "cnf": {"jkt": "x"}, "hwb": {"kind": claims["kind"], "att": "none"}}
            payload = b64e(json.dumps(pass_claims, separators=(",", ":")).encode())
            signing_input = f"{header}.{payload}".encode()
            sig = key.sign(hashlib.sha256(signing_input).digest(), mechanism=Mechanism.ECDSA)
            out.append(f"{header}.{payload}.{b64e(sig)}")
            audit.write(json.dumps({"jti": pass_claims["jti"], "sub": claims["sub"]}) + "\n")
            if i % 256 == 0 or i == len(requests):
                audit.flush()
                os.fsync(audit.fileno())
                sys.stdout.write("\n".join(out[printed:]) + "\n")
                printed = len(out)
    elapsed = time.perf_counter() - start
    print(f"{len(requests) / elapsed:.0f}", file=sys.stderr)


main()
