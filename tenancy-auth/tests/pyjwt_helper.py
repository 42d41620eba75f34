"""Interop helper for tenancy-auth's tests: mints and verifies JWTs with PyJWT.

Reads a JSON list of jobs on stdin and writes a JSON list of results on stdout, one per job:

  {"op": "mint", "alg": "RS256", "key": "<PEM or base64url HMAC secret>", "kid": "k",
   "claims": {...}}                              -> {"token": "..."}
  {"op": "verify", "alg": "RS256", "key": "<public PEM or base64url secret>",
   "token": "...", "issuer": "...", "audience": "..."}
                                                 -> {"claims": {...}} or {"error": "..."}
"""

import base64
import json
import sys

import jwt


def key_for(alg, key):
    if alg.startswith("HS"):
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    return key


def run(job):
    alg = job["alg"]
    key = key_for(alg, job["key"])
    if job["op"] == "mint":
        headers = {"kid": job["kid"]} if job.get("kid") else None
        return {"token": jwt.encode(job["claims"], key, algorithm=alg, headers=headers)}
    try:
        claims = jwt.decode(
            job["token"],
            key,
            algorithms=[alg],
            audience=job["audience"],
            issuer=job["issuer"],
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        return {"claims": claims}
    except jwt.PyJWTError as e:
        return {"error": type(e).__name__ + ": " + str(e)}


def main():
    jobs = json.load(sys.stdin)
    json.dump([run(j) for j in jobs], sys.stdout)


if __name__ == "__main__":
    main()
