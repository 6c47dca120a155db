"""What a publication checks before it downloads anything: that it can finish.

A disk is hundreds of MiB from a factory that may take minutes to build it; finding out at the
end that the store refuses writes or that the signing key does not load wastes all of that, once
per image. So a publication first writes (and removes) a small object in the store, which a
`HEAD` of the bucket or an `access()` of the directory cannot prove (read-only credentials pass
both), and opens the signer: key mode loads the key, keyless gets the ambient OIDC token, loads
the trust root and gets the run's Fulcio certificate. The variants are checked against the
factory by `core/schematics.py`. Each failure is a configuration error, never retried.
"""

from __future__ import annotations

import uuid

from .errors import ConfigError, StoreError
from .settings import SETTING_BY_NAME, Settings
from .signing import signer_for
from .stores import Store

PROBE_PREFIX = "state/write-probe-"
ENV_STORE = SETTING_BY_NAME["store"].env


def check_store_writable(store: Store) -> None:
    """The store is usable and accepts a write and a delete (of `state/write-probe-<random>`)."""
    store.check_ready()
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        store.put_bytes(key, b"talos-pipeline write probe\n")
        store.delete(key)
    except (StoreError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{ENV_STORE}={store.describe()}: a test write failed ({reason}); nothing was downloaded. "
            "Give this process write and delete access (for S3: PutObject and DeleteObject on the bucket)"
        ) from None


def check_configuration(settings: Settings, store: Store) -> str:
    """Store and signing of a CLI publication, once, before any partition starts; the signer's
    description for the log."""
    check_store_writable(store)
    with signer_for(settings) as signer:  # key mode loads the key here
        signer.open()  # keyless: the identity token, the trust root and a certificate
        return signer.describe()
