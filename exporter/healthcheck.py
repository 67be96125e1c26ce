"""Container HEALTHCHECK: GET /-/healthy on loopback, over HTTP or, with TLS on, HTTPS.

Needs nothing beyond Python (slim images have no curl or wget). The certificate is not
verified: the probe talks to its own process on 127.0.0.1, whose name the certificate may
not carry. Exit 0 when healthy, 1 otherwise, as Docker expects.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "9877"


def probe(port: str, timeout: float = 3.0) -> bool:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # a loopback self-probe: see the docstring
    for scheme, context in (("http", None), ("https", insecure)):
        url = f"{scheme}://127.0.0.1:{port}/-/healthy"
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # alive, but probes are protected (--web.protect-probes)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            continue
    return False


def main() -> int:
    return 0 if probe(os.environ.get("KOODRIVE_HEALTHCHECK_PORT", DEFAULT_PORT)) else 1


if __name__ == "__main__":
    sys.exit(main())
