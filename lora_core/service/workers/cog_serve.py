"""``python -m lora_core.service.workers.cog_serve``: Cog's own HTTP server (coglet), as ``python -m cog.server.http``
starts it, but with the upload URL taken from the environment instead of the command line.

Cog's server sends no credentials with the files it uploads, so the URL itself has to carry one (a per-worker
key, ``Signer.upload_key``). On a command line it would be readable by every user of the machine (``ps``); in
the environment only by the process's owner. The service's access log hides it too (``server.RedactSecrets``).

Environment: ``COG_UPLOAD_URL``; or, for a worker the service did not start (a GPU container),
``LORA_STUDIO_SERVICE_URL`` + ``LORA_STUDIO_WORKER_NAME`` + ``WEBHOOK_AUTH_TOKEN``, from which the URL is made.
Everything else as for Cog's server: ``PORT``, ``COG_PREDICT_TYPE_STUB`` or ``COG_TRAIN_TYPE_STUB``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from lora_core.net import cog_uploads
from lora_core.service.auth.signing import upload_url


def upload_url_from(env: Mapping[str, str]) -> str | None:
    """The upload URL this environment gives (None: outputs come back inside the webhook, as data: URIs)."""
    if env.get(cog_uploads.ENV):
        return env[cog_uploads.ENV]
    needed = ("LORA_STUDIO_SERVICE_URL", "LORA_STUDIO_WORKER_NAME", "WEBHOOK_AUTH_TOKEN")
    given = [k for k in needed[:2] if env.get(k)]
    if not given:
        return None
    missing = [k for k in needed if not env.get(k)]
    if missing:
        raise ValueError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} {' and '.join(missing)} too")
    return upload_url(env["LORA_STUDIO_SERVICE_URL"], env["LORA_STUDIO_WORKER_NAME"], env["WEBHOOK_AUTH_TOKEN"])


def main(argv: list[str] | None = None) -> int:
    import coglet

    parser = argparse.ArgumentParser(prog="python -m lora_core.service.workers.cog_serve")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--x-mode", dest="mode", choices=["predict", "train"], default="predict")
    args = parser.parse_args(argv)
    env = os.environ
    try:
        url = upload_url_from(env)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stub = "COG_TRAIN_TYPE_STUB" if args.mode == "train" else "COG_PREDICT_TYPE_STUB"
    if not env.get(stub):
        print(f"error: {stub} is not set (e.g. {stub}=predict_generate.py:Predictor)", file=sys.stderr)
        return 2
    if url:  # the predictor's process inherits it: an object output's files are uploaded by the predictor
        os.environ[cog_uploads.ENV] = url  # (lora_core.net.cog_uploads)
    coglet.server.serve(
        predictor_ref=env[stub],
        host=args.host,
        port=int(env.get("PORT", "5000")),
        await_explicit_shutdown=False,
        is_train=args.mode == "train",
        upload_url=url,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
